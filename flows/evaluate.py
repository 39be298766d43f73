"""The `evaluate` flow: evaluate an already registered model version against its teacher.

    evaluate(preset="smollm2-135m", version="champion")      # alias or version number
    evaluate(config="run.yaml", version="3", profile=...)

The version's checkpoint is downloaded from the registry (its pyfunc artifact `checkpoint`),
evaluated with the config's `eval:` settings (passkey, lm-eval tasks, perplexity) next to
the teacher, logged to a new MLflow run, and the metrics are written onto the version as
`eval.<metric>` tags. Evaluations are cached by fingerprint like the linearize flow's.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from flows import config as flow_config  # noqa: E402
from flows.linearize import step_options  # noqa: E402
from tasks import health, mlflow_registry, tracking  # noqa: E402


def resolve_version(name: str, version: str):
    """The ModelVersion of `name` by number or alias, with a clear error if missing."""
    c = tracking.client()
    try:
        return (c.get_model_version(name, version) if str(version).isdigit()
                else c.get_model_version_by_alias(name, version))
    except Exception as e:  # noqa: BLE001 - MlflowException: not found
        raise LookupError(f"{name} has no version or alias {version!r} in the registry at "
                          f"{c.tracking_uri} ({e}); see the registry UI or run the linearize "
                          "flow first") from None


def download_checkpoint(name: str, mv, root: Path) -> Path:
    """The version's lolcats checkpoint under `root/<name>-v<n>` (downloaded once)."""
    import mlflow

    from tasks.pyfunc_logging import checkpoint_in

    target = root / f"{name}-v{mv.version}"
    if not (target / "MLmodel").is_file():
        mlflow.set_tracking_uri(health.check_mlflow())
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}",
                                            dst_path=str(target))
    try:
        ckpt = checkpoint_in(target)
    except (OSError, KeyError, TypeError):
        ckpt = None
    if ckpt is None or not (ckpt / "config.json").is_file():
        raise FileNotFoundError(f"{name} v{mv.version} is not a lolcats pyfunc model (no "
                                f"`checkpoint` artifact in {target}/MLmodel)")
    return ckpt


@flow(name="evaluate", log_prints=True)
def evaluate(preset: flow_config.Preset = "smollm2-135m", version: str = "champion",
             profile: flow_config.Profile | None = None, overrides: list[str] | None = None,
             config: str | None = None, refresh: bool = False) -> dict:
    """Evaluate version/alias `version` of `lolcats-<name>`; returns its flat metrics.
    Evaluations done before (same weights, settings and data) show as Cached and are not run.

    Args:
        preset: a shipped config, configs/<preset>.yaml (its `eval:` settings and teacher).
        version: a version number or an alias (champion, candidate) of the registered model.
        profile: a named set of settings of that config; none: the config's own settings.
        overrides: settings as "key=value" with dotted keys, e.g. "eval.passkey_trials=10".
        config: path of a run config YAML to use instead of the preset's.
        refresh: evaluate again instead of reusing cached results and stored reports.
    """
    from tasks import evaluation, pipeline_tasks, step_artifacts
    from tasks.metrics import flat_metrics, merge_reports
    from tasks.register_task import artifact_key, evaluation_markdown

    logger = get_run_logger()
    cfg = flow_config.load(preset, profile, overrides, config)
    health.check_prefect()
    health.check_mlflow()
    health.check_s3()
    name = mlflow_registry.model_name(cfg.name)
    mv = resolve_version(name, version)
    ckpt = download_checkpoint(name, mv, Path(cfg.output_dir) / cfg.name / "registry")
    logger.info("evaluating %s v%s (%s) from %s", name, mv.version, version, ckpt)
    run_id = tracking.start_run(name, run_name=f"evaluate-v{mv.version}",
                                tags={"lolcats.evaluated_version": str(mv.version)})
    opts = step_options(cfg, refresh=refresh)
    status = "FAILED"
    try:
        data = step_artifacts.load_data(cfg, pipeline_tasks.prepare_data.with_options(**opts)(cfg, run_id))
        reports = {}
        for who, path in (("teacher", None), ("linearized", str(ckpt))):
            reports[who] = merge_reports(
                evaluation.evaluate_lm_eval.with_options(**opts)(cfg, data, path, who, run_id),
                evaluation.evaluate_passkey.with_options(**opts)(cfg, data, path, who, run_id))
        status = "FINISHED"
    finally:
        tracking.end_run(run_id, status)
    metrics = flat_metrics(reports["linearized"], reports["teacher"])
    c = tracking.client()
    for k, v in metrics.items():
        c.set_model_version_tag(name, str(mv.version), f"eval.{k}", f"{v:.6g}")
    table = evaluation_markdown(reports["teacher"], reports["linearized"])
    create_markdown_artifact(key=artifact_key("evaluation-only", cfg.name),
                             markdown=f"## {name} version {mv.version}\n\n{table}")
    print(table)
    return {"name": name, "version": int(mv.version), "metrics": metrics, "mlflow_run_id": run_id}
