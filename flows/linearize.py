"""The `linearize` flow: prepare data -> attention transfer -> LoRA -> evaluate -> register.

    prefect deployment run linearize/smollm2-135m          (deploy/prefect.yaml)
    linearize(preset="smollm2-135m", profile="cpu-smoke")   (in-process)
    linearize(config="path/run.yaml", overrides=["stage1.lr=0.005"])
    linearize(preset="smollm2-135m", refresh=True)          (recompute every step)

One MLflow run per flow run (experiment `lolcats-<name>`) holds params, step metrics, plots
and evaluation JSON; the final checkpoint becomes a version of `lolcats-<name>` (alias
`candidate`, `champion` if it passes the config's gate and is no worse than the current
champion; a re-run re-gates the existing version and records a changed evaluation). Only
transient errors are retried; each task is bounded by the config's `service:` timeouts.
A step whose fingerprinted output exists is Cached (`tasks.step_cache`: its result is read from
S3, on any worker) and its files are restored from S3 where a later step needs them, so a
re-run with unchanged inputs costs seconds and registers nothing; `refresh=True` recomputes
every step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `tasks` is a folder of the checkout
    sys.path.insert(0, str(REPO))

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.context import get_run_context  # noqa: E402

from flows import config as flow_config  # noqa: E402
from tasks import health, tracking  # noqa: E402


def retry_delays(default):
    """Task retry delays: `LOLCATS_TASK_RETRY_DELAYS` ("2,5,10") or the tasks' backoff."""
    raw = os.environ.get("LOLCATS_TASK_RETRY_DELAYS")
    return [float(x) for x in raw.split(",")] if raw else default


def step_options(cfg, training: bool = False, refresh: bool = False) -> dict:
    """`with_options` of a step task: retry delays, the config's `service:` time limit, the S3
    store of cached step results and, with `refresh`, recomputation instead of the cache."""
    from tasks import step_cache
    from tasks.retry import BACKOFF

    limit = cfg.service.train_timeout_s if training else cfg.service.task_timeout_s
    return {"retry_delay_seconds": retry_delays(BACKOFF), "timeout_seconds": limit,
            "result_storage": step_cache.result_storage(), "refresh_cache": refresh or None}


def registration(state) -> dict:
    """register_model's result from its final state; a Cached one (same version, evaluations
    and gate as a run before) created and promoted nothing this time."""
    reg = state.result()
    return reg | {"created": False, "promoted": False} if state.name == "Cached" else reg


def start_tracking(cfg, preset: str | None, profile: str | None, overrides: list[str] | None) -> str:
    """The MLflow run of this flow run, with the resolved config as params."""
    from tasks.mlflow_registry import git_commit, model_name

    ctx = get_run_context()
    fr = ctx.flow_run
    run_id = tracking.start_run(model_name(cfg.name), run_name=fr.name, tags={
        "prefect.flow_run_id": str(fr.id), "prefect.flow_run_name": fr.name,
        "lolcats.preset": preset or "", "lolcats.profile": profile or "",
        "lolcats.code_commit": git_commit(), "mlflow.source.name": "flows/linearize.py"})
    tracking.log_params(run_id, tracking.flatten(cfg.source) | {
        "profile": profile or "", "overrides": " ".join(overrides or [])})
    return run_id


@flow(name="linearize", log_prints=True)
def linearize(preset: flow_config.Preset = "smollm2-135m", profile: flow_config.Profile | None = None,
              overrides: list[str] | None = None, config: str | None = None, refresh: bool = False) -> dict:
    """Linearize the model of `configs/<preset>.yaml` (or of `config`, a YAML path) with
    `profile` and `overrides` ("key=value") applied, evaluate it against the teacher and
    register it. Returns {"registered": models:/..., "version", "created", "promoted", ...}.
    Steps done before (same fingerprinted inputs, on any worker) show as Cached and are not run.

    Args:
        preset: a shipped config, configs/<preset>.yaml.
        profile: a named set of settings of that config (e.g. cpu-smoke, gpu); none: the
            config's own settings.
        overrides: settings as "key=value" with dotted keys, e.g. "stage1.lr=0.005".
        config: path of a run config YAML to use instead of the preset's (its profiles must
            carry one of the shipped profile names).
        refresh: recompute every step (data, both stages, evaluations, registration) instead
            of reusing cached results and stored outputs.
    """
    from lolcats_core.summary import format_summary
    from tasks import evaluation, pipeline_tasks, register_task, step_artifacts

    logger = get_run_logger()
    cfg = flow_config.load(preset, profile, overrides, config)  # fails fast on bad input
    health.check_prefect()  # not a throw-away ephemeral server: runs must be visible
    health.check_mlflow()
    health.check_s3()
    logger.info("linearizing %s (%s) on %s; outputs under %s/%s", cfg.model, cfg.name,
                cfg.resolved_device(), cfg.output_dir, cfg.name)
    opts, train_opts = step_options(cfg, refresh=refresh), step_options(cfg, training=True, refresh=refresh)
    run_id = start_tracking(cfg, preset, profile, overrides)
    status = "FAILED"
    try:
        # a cached result may come from another worker: its files are brought here from S3
        prepared = pipeline_tasks.prepare_data.with_options(**opts)(cfg, run_id)
        data = step_artifacts.load_data(cfg, prepared)
        stage1 = step_artifacts.local_step(cfg, pipeline_tasks.attention_transfer.with_options(**train_opts)(
            cfg, data, prepared["base"], run_id))
        stage2 = step_artifacts.local_step(cfg, pipeline_tasks.lora_adjust.with_options(**train_opts)(
            cfg, data, stage1, run_id))
        reports = {}
        for name, path in (("teacher", None), ("linearized", stage2["model"])):
            from tasks.metrics import merge_reports

            passkey = evaluation.evaluate_passkey.with_options(**opts)(cfg, data, path, name, run_id)
            lm = evaluation.evaluate_lm_eval.with_options(**opts)(cfg, data, path, name, run_id)
            reports[name] = merge_reports(lm, passkey)
        reg = registration(register_task.register_model.with_options(**opts)(
            cfg, run_id, stage1, stage2, reports["teacher"], reports["linearized"], data.fingerprint,
            profile=profile, overrides=overrides, return_state=True))
        # a re-run with unchanged inputs registers nothing: filter such runs out of the
        # experiment with `tags.lolcats.outcome != "reused"`
        tracking.client().set_tag(run_id, "lolcats.outcome", "registered" if reg["created"] else "reused")
        status = "FINISHED"
    finally:
        try:
            tracking.end_run(run_id, status)
        except Exception as e:  # noqa: BLE001 - do not hide the flow's own error
            logger.warning("could not close MLflow run %s: %s", run_id, e)
    summary = format_summary(cfg, data, stage1, stage2, reports["teacher"], reports["linearized"])
    lines = [summary, "", f"quality gate: {reg['gate']}",
             f"registered: {reg['uri']}" + ("" if reg["created"] else " (already registered; nothing new)"),
             f"model version page: {reg['url']}"]
    text = "\n".join(lines)
    create_markdown_artifact(key=register_task.artifact_key("linearize-summary", cfg.name), markdown=text,
                             description=f"linearize {cfg.name}")
    print(text)
    return {"registered": reg["uri"], "version": reg["version"], "created": reg["created"],
            "promoted": reg["promoted"], "champion": reg["champion"], "url": reg["url"], "mlflow_run_id": run_id,
            "stage1_dir": stage1["dir"], "stage2_dir": stage2["dir"],
            "stage1_steps": stage1["steps"], "stage2_steps": stage2["steps"]}


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="run the linearize flow in this process")
    p.add_argument("--preset", default="smollm2-135m")
    p.add_argument("--profile")
    p.add_argument("--config")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--refresh", action="store_true", help="recompute every step")
    a = p.parse_args()
    linearize(preset=a.preset, profile=a.profile, overrides=a.set, config=a.config, refresh=a.refresh)
