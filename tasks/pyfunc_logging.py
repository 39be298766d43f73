"""Log a lolcats checkpoint as an MLflow pyfunc model (see tasks/pyfunc_model.py)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CODE = Path(__file__).with_name("pyfunc_model.py")
REQUIREMENTS = ("torch", "transformers", "safetensors", "peft", "tokenizers", "mlflow")


def pip_requirements() -> list[str]:
    """Pinned requirements of the current environment. Given explicitly, so MLflow does not
    infer them by importing the model (that pulls torchvision, see PITFALLS.md)."""
    reqs = []
    for name in REQUIREMENTS:
        try:
            reqs.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


def log_pyfunc_model(run_id: str, checkpoint_dir: str | Path, name: str = "model"):
    """Log `checkpoint_dir` as the pyfunc model `name` of run `run_id`; returns MLflow's
    ModelInfo (`model_uri` = `models:/m-<id>`, `model_id`)."""
    import mlflow
    from mlflow.models import infer_signature

    from tasks.health import check_mlflow

    mlflow.set_tracking_uri(check_mlflow())
    signature = infer_signature(["a prompt"], ["generated text"],
                                params={"max_new_tokens": 32, "temperature": 0.0, "chat": False})
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(CODE), artifacts={"checkpoint": str(checkpoint_dir)},
            pip_requirements=pip_requirements(), signature=signature)


def checkpoint_in(model_dir: str | Path) -> Path:
    """The lolcats checkpoint folder inside a downloaded pyfunc model (from its MLmodel)."""
    import yaml

    model_dir = Path(model_dir)
    spec = yaml.safe_load((model_dir / "MLmodel").read_text())
    rel = spec["flavors"]["python_function"]["artifacts"]["checkpoint"]["path"]
    return model_dir / rel
