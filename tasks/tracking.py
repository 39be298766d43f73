"""MLflow tracking for flow runs: one run per flow run, params, metrics, artifacts.

Everything goes through `MlflowClient` with an explicit run id (tasks may run in worker
threads, so no fluent "active run" state). Metric logging from training hooks is
best-effort: a tracking hiccup is logged as a warning and never stops training.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from tasks.health import check_mlflow

log = logging.getLogger("lolcats.tracking")
_BAD = re.compile(r"[^\w\-. :/]")


def client() -> MlflowClient:
    uri = check_mlflow()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def start_run(experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """Create a run in `experiment` (created if missing); return its id."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(experiment)
    return c.create_run(exp_id, run_name=run_name, tags=tags).info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status)


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"a.b.c": "value"} of a nested dict (lists as their JSON-ish str)."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def metric_key(name: str) -> str:
    """A valid MLflow metric name (alphanumerics, _ - . space : /)."""
    return _BAD.sub("_", name)


def log_params(run_id: str, params: dict[str, object]) -> None:
    c = client()
    items = [Param(metric_key(k)[:250], str(v)[:6000]) for k, v in params.items()]
    existing = c.get_run(run_id).data.params
    items = [p for p in items if p.key not in existing]  # params are immutable once logged
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])


def log_metrics(run_id: str | None, metrics: dict[str, float], step: int = 0,
                prefix: str = "", strict: bool = True) -> None:
    """Log finite numeric metrics; with `strict=False` a failure is only a warning."""
    if not run_id:
        return
    now = int(time.time() * 1000)
    items = [Metric(metric_key(prefix + k), float(v), now, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and math.isfinite(float(v))]
    try:
        c = client()
        for i in range(0, len(items), 500):
            c.log_batch(run_id, metrics=items[i:i + 500])
    except Exception as e:  # noqa: BLE001 - tracking must not stop a training run
        if strict:
            raise
        log.warning("could not log %d metrics to MLflow run %s: %s", len(items), run_id, e)


def log_artifact(run_id: str | None, path: str | Path, artifact_path: str | None = None) -> None:
    """Upload a file (or directory) as an artifact of the run (stored in S3 by the server)."""
    if not run_id:
        return
    p = Path(path)
    if p.is_dir():
        client().log_artifacts(run_id, str(p), artifact_path)
    elif p.is_file():
        client().log_artifact(run_id, str(p), artifact_path)
