"""Prefect evaluation tasks: passkey retrieval, and lm-eval tasks with held-out perplexity.

Both wrap `lolcats_core.pipeline.evaluate_step` with the config's `eval:` section split in two
(`dataclasses.replace`), so each part has its own fingerprinted, skippable directory. The
report JSON and figures go to the flow's MLflow run, the directory to S3.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import get_run_logger, task

from tasks import step_artifacts, tracking
from tasks.metrics import flat_metrics
from tasks.retry import TASK_OPTIONS


def _evaluate(cfg, data, model_path: str | None, name: str, part: str, run_id: str | None) -> dict:
    from lolcats_core import pipeline

    logger = get_run_logger()
    rec = pipeline.evaluate_step(cfg, data, model_path, name)
    step_dir = Path(rec["dir"])
    step_artifacts.publish(step_dir, step_artifacts.step_key(cfg.name, step_dir),
                       metadata={"step": f"evaluate-{part}", "model": name})
    report = rec["report"]
    metrics = flat_metrics(report)
    logger.info("%s %s: %s", name, part, ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    tracking.log_metrics(run_id, metrics, prefix=f"{name}.")
    tracking.log_artifact(run_id, step_dir / "report.json", f"eval/{name}-{part}")
    for png in step_dir.glob("*.png"):
        tracking.log_artifact(run_id, png, f"plots/eval-{name}")
    return report


@task(name="evaluate_passkey", **TASK_OPTIONS,
      log_prints=False)
def evaluate_passkey(cfg, data, model_path: str | None, name: str, run_id: str | None = None) -> dict:
    """Passkey retrieval of a checkpoint (None: the teacher); {} when the config disables it."""
    if not cfg.eval.passkey:
        return {}
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, perplexity=False, ood_perplexity=False,
                                                            tasks=[]))
    return _evaluate(cfg, data, model_path, name, "passkey", run_id)


@task(name="evaluate_lm_eval", **TASK_OPTIONS,
      log_prints=False)
def evaluate_lm_eval(cfg, data, model_path: str | None, name: str, run_id: str | None = None) -> dict:
    """Held-out and out-of-distribution perplexity and the config's lm-eval tasks (None: the teacher)."""
    if not (cfg.eval.perplexity or cfg.eval.ood_perplexity or cfg.eval.tasks):
        return {}
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, passkey=False))
    return _evaluate(cfg, data, model_path, name, "lm-eval", run_id)
