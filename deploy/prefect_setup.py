"""Prefect set-up of the local stack, once its server is healthy: the work pools that
deploy/prefect.yaml names, and the automation that crashes zombie flow runs (runs whose
heartbeats stopped, which would otherwise hold their deployment's concurrency slot)."""

from __future__ import annotations

import json
import subprocess

from stack_config import Config, StackError, http_ok, http_write, venv_bin


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


def zombie_automation(cfg: Config) -> dict:
    """The automation that marks a deployment's flow run Crashed when its heartbeats stop
    (https://docs.prefect.io/v3/advanced/detect-zombie-flows): after each heartbeat of a flow
    run, expect another heartbeat or a terminal state event within `zombie_seconds`. Only runs
    of deployments are watched (`match_related`): a flow called in-process keeps Prefect's
    default heartbeat period (180 s) and is not supervised by a worker anyway."""
    return {
        "name": ZOMBIE_AUTOMATION,
        "description": (f"A deployment's flow run that sent no heartbeat for {cfg.zombie_seconds} s "
                        "(its process died) is set Crashed; that releases its concurrency slot. "
                        "Created by deploy/stack.py."),
        "enabled": True,
        "tags": [],
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "match_related": {"prefect.resource.role": "deployment"},
            "after": ["prefect.flow-run.heartbeat"],
            "expect": ["prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                       "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                       "prefect.flow-run.Crashed"],
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": float(cfg.zombie_seconds),
        },
        "actions": [{"type": "change-flow-run-state", "state": "CRASHED",
                     "message": f"no heartbeat for {cfg.zombie_seconds} s: the flow run's "
                                "process died (killed worker or machine); marked Crashed by "
                                f"automation {ZOMBIE_AUTOMATION}"}],
        "actions_on_trigger": [],
        "actions_on_resolve": [],
    }


def ensure_zombie_automation(cfg: Config) -> str:
    """Create the zombie automation, or update it when its settings changed (idempotent)."""
    if cfg.zombie_seconds <= cfg.heartbeat_seconds:
        raise StackError(f"LOLCATS_ZOMBIE_SECONDS ({cfg.zombie_seconds}) must exceed "
                         f"LOLCATS_HEARTBEAT_SECONDS ({cfg.heartbeat_seconds})")
    want = zombie_automation(cfg)
    body = json.dumps({"automations": {"name": {"any_": [ZOMBIE_AUTOMATION]}}}).encode()
    found = http_write(f"{cfg.prefect_api}/automations/filter", "POST", body)
    if found is None:
        raise StackError(f"prefect: could not list automations at {cfg.prefect_api}")
    have = [a for a in json.loads(found) if a.get("name") == ZOMBIE_AUTOMATION]
    for extra in have[1:]:  # a duplicate (e.g. two concurrent `up`s): keep one
        http_write(f"{cfg.prefect_api}/automations/{extra['id']}", "DELETE")
    if have:
        cur = have[0]
        same = (cur.get("enabled") and cur.get("actions") and
                cur["actions"][0].get("message") == want["actions"][0]["message"] and
                all(cur["trigger"].get(k) == v for k, v in want["trigger"].items()
                    if k not in ("after", "expect", "for_each"))
                and all(sorted(cur["trigger"].get(k) or []) == sorted(want["trigger"][k])
                        for k in ("after", "expect", "for_each")))
        if same:
            return f"{'prefect':8s} zombie automation present ({cfg.zombie_seconds} s)"
        if http_write(f"{cfg.prefect_api}/automations/{cur['id']}", "PUT",
                    json.dumps(want).encode()) is None:
            raise StackError(f"prefect: could not update automation {ZOMBIE_AUTOMATION!r}")
        return f"{'prefect':8s} zombie automation updated ({cfg.zombie_seconds} s)"
    # created once, not retried: a slow answer may still have created it (a duplicate would be
    # removed by the next `up`, but the first one is enough)
    if http_ok(f"{cfg.prefect_api}/automations/", "POST", json.dumps(want).encode(), timeout=15) is None:
        raise StackError(f"prefect: could not create automation {ZOMBIE_AUTOMATION!r}")
    return (f"{'prefect':8s} created zombie automation (heartbeat {cfg.heartbeat_seconds} s, "
            f"crash after {cfg.zombie_seconds} s without)")
