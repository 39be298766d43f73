"""Run configurations: YAML files with profiles and `--set key=value` overrides.

A run config names the base model and holds one section per pipeline step:

    name: smollm2-135m
    model: smollm2-135m            # preset, model directory or hub id
    linearize: {...}               # LinearizeConfig fields
    data: {...}                    # DataConfig fields
    stage1: {batch_size, tokens | max_steps, lr, ...}     # attention transfer
    stage2: {batch_size, tokens | max_steps, lr, lora: {...}, ...}  # LoRA adjustment
    eval: {...}                    # EvalConfig fields
    profiles: {cpu-smoke: {<overrides>}, gpu: {...}}

`extends: base.yaml` at the top of a file merges it over another config (ablations).
"""

import copy
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .config import LinearizeConfig
from .data import DataConfig
from .errors import ConfigError
from .evaluation import EvalConfig
from .lora import LoraSettings
from .training import TrainConfig

TOP_LEVEL = {"name", "model", "dtype", "device", "output_dir", "linearize", "data", "stage1", "stage2",
             "eval", "profiles", "gate"}


@dataclass
class StageConfig:
    """A training stage: batch size, token budget (or steps) and optimisation settings."""

    enabled: bool = True
    batch_size: int = 8
    tokens: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSettings | None = None

    def steps_for(self, seq_len: int) -> int:
        """Optimizer steps: from the token budget when given, else train.max_steps."""
        if self.tokens is None:
            return self.train.max_steps
        per_step = self.batch_size * self.train.grad_accum * seq_len
        return max(1, self.tokens // per_step)


@dataclass
class RunConfig:
    """Everything a linearization run needs; `fingerprint()` keys its artifacts."""

    name: str
    model: str
    linearize: LinearizeConfig
    data: DataConfig
    stage1: StageConfig
    stage2: StageConfig
    eval: EvalConfig
    dtype: str = "auto"
    device: str = "auto"
    output_dir: str = "runs"
    gate: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)  # the resolved YAML, for logging and registry

    def resolved_device(self) -> str:
        """The device to run on ("auto": CUDA when visible, else the CPU).

        Raises:
            ConfigError: the config asks for CUDA on a machine without a visible GPU (before
                any data is prepared or weights are loaded).
        """
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"{self.name}: device {self.device!r} is set (a GPU profile?) but no CUDA GPU is visible; "
                "run it on a GPU machine, or choose a CPU profile (cpu-smoke) or --set device=cpu"
            )
        return self.device

    def torch_dtype(self):
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().startswith("cuda") else torch.float32
        return getattr(torch, self.dtype)


def _build(cls, data: dict | None, section: str):
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{section}: unknown setting(s) {unknown}; known: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as e:
        raise ConfigError(f"{section}: {e}") from None


def _stage(data: dict | None, section: str, lora: bool) -> StageConfig:
    data = dict(data or {})
    train_keys = {f.name for f in fields(TrainConfig)}
    train = _build(TrainConfig, {k: data.pop(k) for k in list(data) if k in train_keys}, section)
    lora_cfg = _build(LoraSettings, data.pop("lora", None), f"{section}.lora") if lora else None
    if not lora and "lora" in data:
        raise ConfigError(f"{section}: lora settings belong to stage2")
    stage = _build(StageConfig, {**data, "train": train, "lora": lora_cfg}, section)
    return stage


def set_override(tree: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a config file; `extends: other.yaml` (relative to it) is merged underneath."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} extends itself (cycle through {[str(p) for p in seen]})")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(tree).__name__}")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    return _merge(read_yaml(path.parent / parent, seen + (path.resolve(),)), tree)


def read_overlay(path: Path, base: Path) -> dict:
    """Read an overlay config (e.g. an ablation row) onto `base` instead of the file it extends;
    the name becomes "<base name>-<overlay name>"."""
    tree = read_yaml(path)
    over = yaml.safe_load(Path(path).read_text()) or {}
    over.pop("extends", None)
    merged = _merge(read_yaml(Path(base)), over)
    merged["name"] = f"{read_yaml(Path(base))['name']}-{tree['name']}"
    return merged


def load_run_config(path: str | Path | None = None, profile: str | None = None,
                    overrides: list[str] = (), tree: dict | None = None) -> RunConfig:
    """Read a YAML run config, apply a profile and overrides, validate every section."""
    if tree is None:
        tree = read_yaml(Path(path))
    unknown = sorted(set(tree) - TOP_LEVEL)
    if unknown:
        raise ConfigError(f"unknown top-level setting(s) {unknown}; known: {sorted(TOP_LEVEL)}")
    profiles = tree.get("profiles", {}) or {}
    if profile is not None:
        if profile not in profiles:
            raise ConfigError(f"unknown profile {profile!r}; this config has {sorted(profiles)}")
        tree = _merge(tree, profiles[profile])
    tree = copy.deepcopy(tree)
    for assignment in overrides:
        set_override(tree, assignment)
    for required in ("name", "model"):
        if not tree.get(required):
            raise ConfigError(f"the config needs a {required!r} setting")
    resolved = {k: v for k, v in tree.items() if k != "profiles"}
    return RunConfig(
        name=str(tree["name"]), model=str(tree["model"]),
        linearize=_build(LinearizeConfig, tree.get("linearize"), "linearize"),
        data=_build(DataConfig, tree.get("data"), "data"),
        stage1=_stage(tree.get("stage1"), "stage1", lora=False),
        stage2=_stage(tree.get("stage2"), "stage2", lora=True),
        eval=_build(EvalConfig, tree.get("eval"), "eval"),
        dtype=str(tree.get("dtype", "auto")), device=str(tree.get("device", "auto")),
        output_dir=str(tree.get("output_dir", "runs")), gate=dict(tree.get("gate") or {}),
        source=json.loads(json.dumps(resolved, default=str)),
    )
