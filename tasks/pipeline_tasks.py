"""Prefect tasks over the library's pipeline steps (`lolcats_core.pipeline`).

Each task is a thin wrapper: it finds the step's fingerprinted directory, skips the work when
the step finished before (local `done.json`, else the complete artifact in S3, downloaded),
otherwise runs the step, publishes the finished directory to S3 (without trainer state) and
logs to MLflow. Training stages resume from `trainer/last`, restored from S3 when the local
disk lacks it; after every held-out evaluation the trainer folder is shipped to S3 again.

A step whose fingerprinted output was made before is not even started: Prefect's cache
(`tasks.step_cache`, key = the output's fingerprinted name, result in S3) returns its record and
the task run shows as Cached, on any worker. With `refresh_cache` (the flow's `refresh`) every
step is recomputed from scratch.

Only transient failures are retried, with jittered backoff (`tasks.retry`); each task's
`timeout_seconds` comes from the run config's `service:` section (set by the flow).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from prefect import get_run_logger, task

from tasks import step_artifacts, step_cache, tracking
from tasks.retry import BACKOFF, RETRIES, TASK_OPTIONS  # noqa: F401 - re-exported


def _stage_hook(cfg, run_id: str | None, stage: str, step_dir: Path):
    """on_eval(step, metrics[, trainer_dir]) for a training stage: metrics to MLflow
    (best-effort), the trainer checkpoint (written just before; `trainer_dir`: a snapshot of it)
    to S3 (failures only warn: the final output upload is retried by the task; the checkpoint
    only shortens a resume)."""
    logger = get_run_logger()
    key = step_artifacts.checkpoint_key(cfg.name, step_dir)

    def on_eval(step: int, metrics: dict, trainer_dir: Path | None = None) -> None:
        tracking.log_metrics(run_id, metrics, step=step, prefix=f"{stage}.", strict=False)
        try:
            step_artifacts.ship_checkpoint(trainer_dir or step_dir / "trainer", key)
            logger.info("%s: step %d checkpoint shipped to %s", stage, step, key)
        except Exception as e:  # noqa: BLE001
            logger.warning("%s: could not ship the step-%d checkpoint to S3 (%s); training "
                           "goes on", stage, step, e)
    return on_eval


def _train(cfg, stage: int, step_dir: Path, on_eval, in_process) -> dict:
    """A training stage: `in_process(on_eval=...)`, or under torchrun on this machine when the
    config asks for several processes (`distributed.gpus`), their output in this task's log."""
    if cfg.distributed.world_size == 1:
        return in_process(on_eval=on_eval)
    from lolcats_core.launch import torchrun_stage

    logger = get_run_logger()
    logger.info("stage %d: torchrun with %d processes", stage, cfg.distributed.gpus)
    return torchrun_stage(cfg, stage, step_dir, on_line=logger.info, on_eval=on_eval)


def _resume_note(stage: str, step_dir: Path, cfg) -> None:
    step, where = step_artifacts.restore_checkpoint(step_dir, step_artifacts.checkpoint_key(cfg.name, step_dir))
    logger = get_run_logger()
    if step is None:
        logger.info("%s: starting from scratch in %s", stage, step_dir)
    else:
        logger.info("%s: resuming from the step-%d checkpoint (%s) in %s", stage, step,
                    "downloaded from S3" if where == "s3" else "found locally", step_dir)


def _finish(cfg, run_id, stage: str, rec: dict, step_dir: Path, fresh: bool) -> dict:
    """Publish a finished step, log its summary metrics and figures to MLflow."""
    from lolcats_core.pipeline import DONE

    step_artifacts.publish(step_dir, step_artifacts.step_key(cfg.name, step_dir),
                       metadata={"step": stage, "run": cfg.name})
    summary = {k: rec[k] for k in ("steps", "tokens", "seconds", "trainable_parameters") if k in rec}
    tracking.log_metrics(run_id, summary, prefix=f"{stage}.")
    mse = {f"final_mse/layer_{k}": v for k, v in rec.get("layer_mse", {}).items()}
    tracking.log_metrics(run_id, mse, prefix=f"{stage}.")
    if not fresh:  # the per-evaluation history was not logged live this time
        for h in rec.get("history", []):
            tracking.log_metrics(run_id, {k: v for k, v in h.items() if k != "step"},
                                 step=h["step"], prefix=f"{stage}.")
    for png in step_dir.glob("*.png"):
        tracking.log_artifact(run_id, png, f"plots/{stage}")
    tracking.log_artifact(run_id, step_dir / DONE, f"steps/{stage}")
    return rec


@task(name="prepare_data", **step_cache.options(step_cache.data_key))
def prepare_data(cfg, run_id: str | None = None) -> dict:
    """Tokenized, packed training data (by content fingerprint: reused locally, else restored
    from S3's `data/<fingerprint[:16]>`, else prepared and published there) and the base model's
    identity: {"fingerprint", "base"} (`step_artifacts.load_data` gives the data)."""
    from lolcats_core import pipeline
    from lolcats_core.presets import base_model_ref
    from tasks import artifacts

    logger = get_run_logger()
    where = step_artifacts.restore_data(pipeline.data_dir(cfg))
    data = pipeline.prepare_data(cfg, rebuild=step_cache.refreshing())
    logger.info("data %s: %d train / %d validation rows (%s)", data.fingerprint[:16], len(data.train),
                len(data.validation), {"local": "cache hit", "s3": "restored from S3"}.get(where, "prepared"))
    artifacts.upload_dir(data.path, step_artifacts.data_key(data.path), metadata={"fingerprint": data.fingerprint})
    ref = base_model_ref(cfg.model)
    tracking.log_params(run_id, {"data_fingerprint": data.fingerprint, "base.id": ref.id,
                                 "base.revision": ref.revision, "base.fingerprint": ref.fingerprint})
    return {"fingerprint": data.fingerprint, "base": ref.to_dict()}


@task(name="attention_transfer", **step_cache.options(step_cache.stage1_key))
def attention_transfer(cfg, data, base: dict, run_id: str | None = None) -> dict:
    """Stage 1 (skipped when done; resumed from the last checkpoint when interrupted)."""
    from lolcats_core import pipeline

    logger = get_run_logger()
    step_dir = pipeline.stage1_dir(cfg, base["fingerprint"], data.fingerprint)
    rec, where = step_artifacts.restore(step_dir, step_artifacts.step_key(cfg.name, step_dir))
    if rec is not None:
        logger.info("attention_transfer: done before (%s), skipping: %s", where, step_dir)
        return _finish(cfg, run_id, "stage1", rec, step_dir, fresh=False)
    _resume_note("attention_transfer", step_dir, cfg)
    rec = _train(cfg, 1, step_dir, _stage_hook(cfg, run_id, "stage1", step_dir),
                 partial(pipeline.attention_transfer_step, cfg, data))
    logger.info("attention_transfer: %d steps, %s tokens in %.0f s", rec["steps"], rec["tokens"], rec["seconds"])
    return _finish(cfg, run_id, "stage1", rec, step_dir, fresh=True)


@task(name="lora_adjust", **step_cache.options(step_cache.stage2_key))
def lora_adjust(cfg, data, stage1: dict, run_id: str | None = None) -> dict:
    """Stage 2 from the stage-1 checkpoint (skipped when done; resumed when interrupted)."""
    from lolcats_core import pipeline

    logger = get_run_logger()
    step_dir = pipeline.stage2_dir(cfg, stage1)
    rec, where = step_artifacts.restore(step_dir, step_artifacts.step_key(cfg.name, step_dir))
    if rec is not None:
        logger.info("lora_adjust: done before (%s), skipping: %s", where, step_dir)
        return _finish(cfg, run_id, "stage2", rec, step_dir, fresh=False)
    _resume_note("lora_adjust", step_dir, cfg)
    rec = _train(cfg, 2, step_dir, _stage_hook(cfg, run_id, "stage2", step_dir),
                 partial(pipeline.lora_step, cfg, data, stage1))
    logger.info("lora_adjust: %d steps, %s tokens in %.0f s", rec["steps"], rec["tokens"], rec["seconds"])
    return _finish(cfg, run_id, "stage2", rec, step_dir, fresh=True)


def model_record(path: str) -> dict:
    """The stage record of an existing checkpoint directory (for evaluation-only runs)."""
    return {"model": str(path), "config": json.loads((Path(path) / "config.json").read_text())}
