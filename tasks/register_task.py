"""Prefect task `register_model`: the final checkpoint as a version of `lolcats-<name>`.

The version is an MLflow pyfunc model (text in, generated text out) whose artifact is the
lolcats checkpoint, tagged with the base model id + revision, the data fingerprint and the
code commit, the data sources, package versions, profile and overrides; aliased `candidate`,
and made `champion` only if the config's `gate:` passes against the teacher and it is not
worse than the current champion (`mlflow_registry.judge`). Idempotent: the stage-2 directory
name (a fingerprint of every input) is the version's fingerprint, so the same inputs never
register twice; a re-run of them records a changed evaluation on the existing version and
re-runs the (possibly changed) gate on it, which may demote it. With the same version, both
evaluations, gate, profile and overrides as before, the task shows as Cached
(`registration_key`) and touches nothing.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from tasks import mlflow_registry, step_cache
from tasks.metrics import flat_metrics


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def evaluation_markdown(teacher: dict, student: dict) -> str:
    from lolcats_core.evaluation import compare_reports

    return compare_reports(teacher, student, names=("teacher", "linearized"))


PACKAGES = ("lolcats", "torch", "transformers", "peft", "lm_eval", "datasets", "mlflow", "prefect")


def package_versions() -> dict[str, str]:
    """Versions of the packages a model version was made with (absent ones left out)."""
    out = {"python": sys.version.split()[0]}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def provenance_tags(cfg, profile: str | None, overrides: list[str] | None) -> dict[str, str]:
    """Tags naming what a version was made from beyond the fingerprints: data sources,
    package versions, the profile and the overrides of the run."""
    data = cfg.source.get("data") or {}
    sources = {k: v for k, v in data.items()
               if k in ("mix", "sharegpt_path", "text_paths", "haystack_path")} or {"mix": cfg.data.mix}
    return {"lolcats.data_sources": json.dumps(sources, sort_keys=True, default=str)[:5000],
            "lolcats.packages": json.dumps(package_versions(), sort_keys=True),
            "lolcats.profile": profile or "", "lolcats.overrides": " ".join(overrides or [])[:5000]}


def registration_key(ctx, p: dict) -> str:
    """Cache key of `register_model`: the version's fingerprint (the stage-2 directory name),
    both evaluations, the gate, profile and overrides."""
    from lolcats_core.pipeline import fingerprint

    cfg = p["cfg"]
    fp = fingerprint(Path(p["stage2"]["dir"]).name, p["teacher"], p["student"], cfg.gate, p["profile"], p["overrides"])
    return step_cache.cache_key(cfg, f"register-{fp}")


@task(name="register_model", **step_cache.options(registration_key))
def register_model(cfg, run_id: str, stage1: dict, stage2: dict, teacher: dict, student: dict,
                   data_fingerprint: str, profile: str | None = None,
                   overrides: list[str] | None = None) -> dict:
    """Register (or find) the model version; record its evaluation, gate it, decide the
    champion; Prefect artifacts."""
    from tasks.pyfunc_logging import log_pyfunc_model

    logger = get_run_logger()
    name = mlflow_registry.model_name(cfg.name)
    base = stage1["base"]
    info = mlflow_registry.VersionInfo(
        fingerprint=Path(stage2["dir"]).name, base_model=base["id"],
        base_revision=base["revision"], data_fingerprint=data_fingerprint,
        extra_tags={"lolcats.base_fingerprint": base["fingerprint"], "lolcats.config": cfg.name}
        | provenance_tags(cfg, profile, overrides))
    metrics, teacher_metrics = flat_metrics(student, teacher), flat_metrics(teacher)

    def log_model(rid: str, src: Path):
        mi = log_pyfunc_model(rid, src)
        return mi.model_uri, mi.model_id

    reg = mlflow_registry.register_version(name, stage2["model"], info, metrics=metrics,
                                    teacher_metrics=teacher_metrics, run_id=run_id,
                                    log_model=log_model)
    url = mlflow_registry.version_url(name, reg.version)
    if reg.created:
        verdict = mlflow_registry.judge(name, reg.version, cfg.gate)
        logger.info("registered %s (%s); gate %s", reg.uri, url, verdict.summary())
        gate_line = verdict.summary()
    else:
        logger.info("%s version %s already holds these inputs (fingerprint %s): nothing registered",
                    name, reg.version, info.fingerprint)
        changed = mlflow_registry.record_evaluation(name, reg.version, metrics, teacher_metrics, run_id)
        verdict = mlflow_registry.judge(name, reg.version, cfg.gate)
        gate_line = (f"unchanged inputs: existing version reused ({'new evaluation recorded' if changed else 'same evaluation'}); "
                     f"gate re-run: {verdict.summary()}")
        logger.info("%s version %s: %s", name, reg.version, gate_line)
    promoted = verdict.promoted
    table = evaluation_markdown(teacher, student)
    create_markdown_artifact(
        key=artifact_key("evaluation", cfg.name), description=f"{name} v{reg.version}",
        markdown=f"## {name} version {reg.version}\n\n{table}\n\nquality gate: {gate_line}\n\n"
                 f"[MLflow model version]({url})")
    create_link_artifact(key=artifact_key("model-version", cfg.name), link=url,
                         link_text=f"{name} v{reg.version}")
    return {"name": name, "version": reg.version, "uri": reg.uri, "created": reg.created,
            "url": url, "promoted": promoted, "champion": verdict.champion, "gate": gate_line,
            "run_id": run_id}
