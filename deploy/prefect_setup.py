"""Prefect set-up of the local stack, once its server is healthy: the work pools that
deploy/prefect.yaml names, and the automation that crashes zombie flow runs (runs whose
heartbeats stopped, which would otherwise hold their deployment's concurrency slot), created
and updated through Prefect's SDK (`prefect.automations.Automation`, the client's automation
calls)."""

from __future__ import annotations

import subprocess

from stack_config import Config, StackError, http_ok, venv_bin


def ensure_work_pools(cfg: Config, env: dict[str, str]) -> None:
    """Create the work pools deploy/prefect.yaml names (`local`, `gpu`) as process pools if
    missing: `prefect deploy` refuses a deployment whose pool does not exist. Locally `gpu` has
    no worker (its runs wait); on a cluster it is a Kubernetes pool (deploy/CLUSTER.md)."""
    missing = [p for p in dict.fromkeys([cfg.work_pool, "gpu"])
               if http_ok(f"{cfg.prefect_api}/work_pools/{p}") is None]
    procs = {p: subprocess.Popen([venv_bin("prefect"), "work-pool", "create", p, "--type", "process"],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for p in missing}
    for pool, proc in procs.items():
        out = proc.communicate(timeout=120)[0]
        if proc.returncode != 0 and http_ok(f"{cfg.prefect_api}/work_pools/{pool}") is None:
            raise StackError(f"prefect: could not create work pool {pool!r}: {out[-500:]}")
        print(f"{'prefect':8s} created work pool {pool!r} (type process)", flush=True)


ZOMBIE_AUTOMATION = "lolcats-crash-zombie-flow-runs"


def zombie_automation(cfg: Config):
    """The automation (Prefect SDK object) that marks a deployment's flow run Crashed when its
    heartbeats stop (https://docs.prefect.io/v3/advanced/detect-zombie-flows): after each
    heartbeat of a flow run, expect another heartbeat or a terminal state event within
    `zombie_seconds`. Only runs of deployments are watched (`match_related`): a flow called
    in-process keeps Prefect's default heartbeat period (180 s) and is not supervised by a
    worker anyway."""
    from datetime import timedelta

    from prefect.automations import Automation, EventTrigger
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import Posture

    return Automation(
        name=ZOMBIE_AUTOMATION,
        description=(f"A deployment's flow run that sent no heartbeat for {cfg.zombie_seconds} s "
                     "(its process died) is set Crashed; that releases its concurrency slot. "
                     "Created by deploy/stack.py."),
        enabled=True,
        trigger=EventTrigger(
            posture=Posture.Proactive,
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            match_related={"prefect.resource.role": "deployment"},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed"},
            for_each={"prefect.resource.id"},
            threshold=1,
            within=timedelta(seconds=cfg.zombie_seconds),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {cfg.zombie_seconds} s: the flow run's process died "
                    f"(killed worker or machine); marked Crashed by automation {ZOMBIE_AUTOMATION}")],
    )


def _same(cur, want) -> bool:
    """Whether an existing automation already does what `want` does."""
    keep = ("type", "posture", "match", "match_related", "after", "expect", "for_each",
            "threshold", "within")
    dump = lambda t: t.model_dump(include=set(keep))  # noqa: E731 - sets stay sets
    return bool(cur.enabled and cur.actions and
                cur.actions[0].model_dump(mode="json") == want.actions[0].model_dump(mode="json")
                and dump(cur.trigger) == dump(want.trigger))


def ensure_zombie_automation(cfg: Config) -> str:
    """Create the zombie automation, or update it when its settings changed (idempotent),
    through Prefect's SDK."""
    if cfg.zombie_seconds <= cfg.heartbeat_seconds:
        raise StackError(f"LOLCATS_ZOMBIE_SECONDS ({cfg.zombie_seconds}) must exceed "
                         f"LOLCATS_HEARTBEAT_SECONDS ({cfg.heartbeat_seconds})")
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    want = zombie_automation(cfg)
    try:
        with temporary_settings(updates={PREFECT_API_URL: cfg.prefect_api}), \
                get_client(sync_client=True) as client:
            have = client.read_automations_by_name(ZOMBIE_AUTOMATION)
            for extra in have[1:]:  # a duplicate (e.g. two concurrent `up`s): keep one
                client.delete_automation(extra.id)
            if have and _same(have[0], want):
                return f"{'prefect':8s} zombie automation present ({cfg.zombie_seconds} s)"
            if have:
                want.id = have[0].id
                want.update()
                return f"{'prefect':8s} zombie automation updated ({cfg.zombie_seconds} s)"
            # created once, not retried: a slow answer may still have created it (a duplicate
            # would be removed by the next `up`)
            want.create()
    except StackError:
        raise
    except Exception as e:  # noqa: BLE001 - any client error: say which automation and where
        raise StackError(f"prefect: could not create or update automation {ZOMBIE_AUTOMATION!r} "
                         f"at {cfg.prefect_api}: {type(e).__name__}: {e}") from e
    return (f"{'prefect':8s} created zombie automation (heartbeat {cfg.heartbeat_seconds} s, "
            f"crash after {cfg.zombie_seconds} s without)")
