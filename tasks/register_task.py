"""Prefect task `register_model`: the final checkpoint as a version of `lolcats-<name>`.

The version is an MLflow pyfunc model (text in, generated text out) whose artifact is the
lolcats checkpoint, tagged with the base model id + revision, the data fingerprint and the
code commit, aliased `candidate`, and promoted to `champion` only if the config's `gate:`
passes against the teacher. Idempotent: the stage-2 directory name (a fingerprint of every
input) is the version's fingerprint, so the same inputs never register twice.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks import mlflow_registry
from tasks.metrics import flat_metrics
from tasks.pipeline_tasks import BACKOFF, RETRIES


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def evaluation_markdown(teacher: dict, student: dict) -> str:
    from lolcats_core.evaluation import compare_reports

    return compare_reports(teacher, student, names=("teacher", "linearized"))


@task(name="register_model", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def register_model(cfg, run_id: str, stage1: dict, stage2: dict, teacher: dict, student: dict,
                   data_fingerprint: str) -> dict:
    """Register (or find) the model version; gate and promote a new one; Prefect artifacts."""
    from lolcats_core.gate import gate_rules, quality_gate
    from tasks.pyfunc_logging import log_pyfunc_model

    logger = get_run_logger()
    name = mlflow_registry.model_name(cfg.name)
    base = stage1["base"]
    info = mlflow_registry.VersionInfo(
        fingerprint=Path(stage2["dir"]).name, base_model=base["id"],
        base_revision=base["revision"], data_fingerprint=data_fingerprint,
        extra_tags={"lolcats.base_fingerprint": base["fingerprint"], "lolcats.config": cfg.name})
    metrics, teacher_metrics = flat_metrics(student, teacher), flat_metrics(teacher)

    def log_model(rid: str, src: Path):
        mi = log_pyfunc_model(rid, src)
        return mi.model_uri, mi.model_id

    reg = mlflow_registry.register_version(name, stage2["model"], info, metrics=metrics,
                                    teacher_metrics=teacher_metrics, run_id=run_id,
                                    log_model=log_model)
    url = mlflow_registry.version_url(name, reg.version)
    promoted = None
    if reg.created:
        gate = quality_gate(metrics, teacher_metrics, gate_rules(cfg.gate))
        promoted = mlflow_registry.promote(name, reg.version, gate)
        logger.info("registered %s (%s); gate %s", reg.uri, url, gate.summary())
        gate_line = gate.summary()
    else:
        logger.info("%s version %s already holds these inputs (fingerprint %s): nothing registered",
                    name, reg.version, info.fingerprint)
        gate_line = "unchanged inputs: existing version reused, gate not re-run"
    table = evaluation_markdown(teacher, student)
    create_markdown_artifact(
        key=artifact_key("evaluation", cfg.name), description=f"{name} v{reg.version}",
        markdown=f"## {name} version {reg.version}\n\n{table}\n\nquality gate: {gate_line}\n\n"
                 f"[MLflow model version]({url})")
    create_link_artifact(key=artifact_key("model-version", cfg.name), link=url,
                         link_text=f"{name} v{reg.version}")
    return {"name": name, "version": reg.version, "uri": reg.uri, "created": reg.created,
            "url": url, "promoted": promoted, "gate": gate_line, "run_id": run_id}
