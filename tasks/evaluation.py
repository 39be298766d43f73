"""Prefect evaluation tasks: passkey retrieval, and lm-eval tasks with held-out perplexity.

Both wrap `lolcats_core.pipeline.evaluate_step` with the config's `eval:` section split in two
(`dataclasses.replace`), so each part has its own fingerprinted directory: its name is the
task's cache key (`tasks.step_cache`: a done evaluation shows as Cached and returns its report
from S3), and a run that does start reuses the directory when it is here or in S3. The report
JSON and figures go to the flow's MLflow run, the directory to S3.
"""

from __future__ import annotations

import dataclasses

from prefect import get_run_logger, task

from tasks import step_artifacts, step_cache, tracking
from tasks.metrics import flat_metrics


def passkey_config(cfg):
    """The run config of `evaluate_passkey`: passkey retrieval only."""
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, perplexity=False, ood_perplexity=False,
                                                             tasks=[]))


def lm_eval_config(cfg):
    """The run config of `evaluate_lm_eval`: everything but passkey retrieval."""
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, passkey=False))


def _cache_key(part_config):
    def key(ctx, p: dict) -> str:
        """The evaluation's directory name."""
        from lolcats_core import pipeline

        cfg = part_config(p["cfg"])
        return step_cache.cache_key(cfg, pipeline.eval_dir(cfg, p["data"], p["model_path"], p["name"]).name)
    return key


def _evaluate(cfg, data, model_path: str | None, name: str, part: str, run_id: str | None) -> dict:
    from lolcats_core import pipeline

    logger = get_run_logger()
    step_dir = pipeline.eval_dir(cfg, data, model_path, name)
    key = step_artifacts.step_key(cfg.name, step_dir)
    rec, where = step_artifacts.restore(step_dir, key)
    if rec is None:
        rec = pipeline.evaluate_step(cfg, data, model_path, name)
    else:
        logger.info("%s %s: done before (%s), not evaluated again: %s", name, part, where, step_dir)
    step_artifacts.publish(step_dir, key, metadata={"step": f"evaluate-{part}", "model": name})
    report = rec["report"]
    metrics = flat_metrics(report)
    logger.info("%s %s: %s", name, part, ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    tracking.log_metrics(run_id, metrics, prefix=f"{name}.")
    tracking.log_artifact(run_id, step_dir / "report.json", f"eval/{name}-{part}")
    for png in step_dir.glob("*.png"):
        tracking.log_artifact(run_id, png, f"plots/eval-{name}")
    return report


@task(name="evaluate_passkey", **step_cache.options(_cache_key(passkey_config)), log_prints=False)
def evaluate_passkey(cfg, data, model_path: str | None, name: str, run_id: str | None = None) -> dict:
    """Passkey retrieval of a checkpoint (None: the teacher); {} when the config disables it."""
    if not cfg.eval.passkey:
        return {}
    return _evaluate(passkey_config(cfg), data, model_path, name, "passkey", run_id)


@task(name="evaluate_lm_eval", **step_cache.options(_cache_key(lm_eval_config)), log_prints=False)
def evaluate_lm_eval(cfg, data, model_path: str | None, name: str, run_id: str | None = None) -> dict:
    """Held-out and out-of-distribution perplexity and the config's lm-eval tasks (None: the teacher)."""
    if not (cfg.eval.perplexity or cfg.eval.ood_perplexity or cfg.eval.tasks):
        return {}
    return _evaluate(lm_eval_config(cfg), data, model_path, name, "lm-eval", run_id)
