"""Run configurations: YAML files with profiles and `--set key=value` overrides.

A run config names the base model and holds one section per pipeline step:

    name: smollm2-135m
    model: smollm2-135m            # preset, model directory or hub id
    linearize: {...}               # LinearizeConfig fields
    data: {...}                    # DataConfig fields
    stage1: {batch_size, micro_batch, tokens | max_steps, lr, compile, ...}     # attention transfer
    stage2: {<as stage1>, gradient_checkpointing, lora: {...}}                   # LoRA adjustment
    eval: {...}                    # EvalConfig fields
    service: {task_timeout_s, train_timeout_s}   # how the Prefect flow bounds its tasks
    distributed: {gpus, nodes, stage2}             # torchrun processes of the training stages
    profiles: {cpu-smoke: {<overrides>}, gpu: {...}}

`extends: base.yaml` at the top of a file merges it over another config (ablations).
Every setting is checked against its field's type before any model loads: numeric text
(`lr: 1e-3`, which PyYAML reads as a string, or `--set stage1.lr=1e-3`) becomes the field's
number, and a wrong type or an unknown key at any depth is a `ConfigError` naming its dotted path.
"""

import copy
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_type_hints

import yaml
from pydantic import TypeAdapter, ValidationError

from .config import LinearizeConfig
from .data import DataConfig
from .errors import ConfigError
from .evaluation import EvalConfig
from .gate import gate_rules
from .lora import LoraSettings
from .presets import PRESETS
from .training import TrainConfig

SECTIONS = ("linearize", "data", "stage1", "stage2", "eval", "service", "distributed")
MAX_TIMEOUT_S = 7 * 24 * 3600.0
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass
class StageConfig:
    """A training stage: batch size, token budget (or steps) and optimisation settings.

    An optimizer step takes `batch_size` x `train.grad_accum` rows. They go through the model
    `batch_size` at a time unless `micro_batch` says otherwise: a number of rows (a divisor of
    the step's rows; `grad_accum` follows), or "auto", the largest that fits the GPU's memory
    (`lolcats_core.memory`, printed by `lolcats plan --config`; on the CPU, `batch_size`).
    """

    enabled: bool = True
    batch_size: int = 8
    micro_batch: int | Literal["auto"] | None = None
    tokens: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSettings | None = None

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        if self.tokens is not None and self.tokens <= 0:
            raise ConfigError(f"tokens must be positive or None (train.max_steps steps), got {self.tokens}")
        rows = self.batch_size * self.train.grad_accum
        if isinstance(self.micro_batch, int) and (self.micro_batch <= 0 or rows % self.micro_batch):
            raise ConfigError(f"micro_batch must divide the {rows} rows of a step (batch_size x grad_accum), "
                              f"got {self.micro_batch}")

    def artifact_settings(self) -> dict:
        """The settings that name the stage's artifacts: all but how it runs (compiled,
        checkpointed), so that configs without these settings keep their fingerprints. The
        micro-batch counts as written: an "auto" stage is the same run on any GPU."""
        out = asdict(self)
        for key in ("compile", "gradient_checkpointing"):
            del out["train"][key]
        if self.micro_batch is None:
            del out["micro_batch"]
        return out

    def steps_for(self, seq_len: int, data_parallel: int = 1) -> int:
        """Optimizer steps: from the token budget when given, else train.max_steps.

        data_parallel: ranks that each take `batch_size` x `grad_accum` rows per step (stage 2).
        """
        if self.tokens is None:
            return self.train.max_steps
        per_step = self.batch_size * self.train.grad_accum * data_parallel * seq_len
        return max(1, self.tokens // per_step)


@dataclass
class ServiceConfig:
    """How the service (the Prefect `linearize` flow) runs the steps; no effect on outputs.

    Attributes:
        task_timeout_s: wall-clock limit in seconds of each non-training task (data
            preparation, each evaluation, registration); a task past it fails as TimedOut,
            frees its deployment's concurrency slot and is not retried. 1 s to 7 days.
        train_timeout_s: the same limit for each training stage (attention transfer, LoRA
            adjustment), which run longest. 1 s to 7 days.
    """

    task_timeout_s: float = 6 * 3600.0
    train_timeout_s: float = 48 * 3600.0

    def __post_init__(self) -> None:
        for name in ("task_timeout_s", "train_timeout_s"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_TIMEOUT_S:
                raise ConfigError(f"service.{name} must lie between 1 and {MAX_TIMEOUT_S:.0f} s, got {value}")


@dataclass
class DistributedConfig:
    """How many processes run the training stages (torchrun) and how stage 2 spreads over them.

    Stage 1's outputs do not depend on these; stage 2's global batch is
    `stage2.batch_size` x `world_size` x `grad_accum`, and its directory names the rank count.

    Attributes:
        gpus: processes per node, one per GPU (or CPU processes with `device: cpu`). The
            service's training tasks run `torchrun --nproc-per-node gpus` when the run has more
            than one process, and the stage in their own process when it has one.
        nodes: machines; more than one trains through the Kubernetes job of
            deploy/k8s_train.py (deploy/CLUSTER.md), whose results the flow then picks up.
        stage2: "ddp" (every weight on every GPU), "fsdp" (FSDP2: frozen weights sharded over
            the ranks) or "auto": FSDP2 on GPUs when `lolcats plan` says the weights and LoRA
            state exceed half of one GPU's memory (`lolcats_core.plan.stage2_parallel`).
    """

    gpus: int = 1
    nodes: int = 1
    stage2: Literal["auto", "ddp", "fsdp"] = "auto"

    def __post_init__(self) -> None:
        for name in ("gpus", "nodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"distributed.{name} must be at least 1, got {getattr(self, name)}")

    @property
    def world_size(self) -> int:
        """Processes over all nodes."""
        return self.gpus * self.nodes


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
    service: ServiceConfig = field(default_factory=ServiceConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
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


def _type_name(tp) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _path(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _typed(path: str, tp, value):
    """`value` checked against the type `tp`; numeric text becomes the number a number field needs."""
    adapter = TypeAdapter(tp)
    try:
        adapter.validate_python(value, strict=True)
        return value  # as given: an int in a float field stays an int, so artifact fingerprints do not change
    except ValidationError:
        pass
    try:
        return adapter.validate_python(value)
    except ValidationError:
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}") from None


def _checked(data, section: str, valid: set[str]) -> dict:
    """The settings of a section ("": the top level; None: no settings), after rejecting keys
    outside `valid`."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{section or 'the config'}: expected a mapping of settings, got {data!r}")
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(f"unknown setting(s) {[_path(section, k) for k in unknown]}; "
                          f"valid keys of {section or 'the config'}: {sorted(valid)}")
    return data


def _build(cls, data: dict | None, section: str, /, **nested):
    """A `cls` from a section's settings, each typed by its field; `nested` are built already."""
    hints = get_type_hints(cls)
    data = _checked(data, section, set(hints) - set(nested))
    return cls(**{k: _typed(_path(section, k), hints[k], v) for k, v in data.items()}, **nested)


def _stage(data: dict | None, section: str, lora: bool) -> StageConfig:
    """A stage section holds its TrainConfig settings flat (`stage1.lr`) and, in stage 2, `lora`."""
    train_keys = set(get_type_hints(TrainConfig))
    stage_keys = set(get_type_hints(StageConfig)) - {"train", "lora"}
    if not lora and isinstance(data, dict) and "lora" in data:
        raise ConfigError(f"{section}: lora settings belong to stage2")
    data = _checked(data, section, train_keys | stage_keys | ({"lora"} if lora else set()))
    train = _build(TrainConfig, {k: v for k, v in data.items() if k in train_keys}, section)
    if not lora and train.gradient_checkpointing is True:
        raise ConfigError(f"{section}.gradient_checkpointing: stage 1 keeps one layer's graph at a time and "
                          "never checkpoints; it applies to stage 2")
    lora_cfg = _build(LoraSettings, data.get("lora"), f"{section}.lora") if lora else None
    return _build(StageConfig, {k: v for k, v in data.items() if k in stage_keys}, section,
                  train=train, lora=lora_cfg)


def _check_model(model: str) -> None:
    """Reject a model that is no preset, existing directory, existing .gguf file or hub id."""
    path = Path(model)
    gguf = path.suffix.lower() == ".gguf"
    if model in PRESETS or path.is_dir() or (path.is_file() if gguf else _HUB_ID.fullmatch(model)):
        return
    raise ConfigError(f"model: {model!r} is not a preset ({', '.join(PRESETS)}), an existing model "
                      "directory, an existing .gguf file or a hub id of the form owner/name")


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
    profiles = tree.get("profiles", {}) or {}
    if profile is not None:
        if profile not in profiles:
            raise ConfigError(f"unknown profile {profile!r}; this config has {sorted(profiles)}")
        tree = _merge(tree, profiles[profile])
    tree = copy.deepcopy(tree)
    for assignment in overrides:
        set_override(tree, assignment)
    _checked(tree, "", set(get_type_hints(RunConfig)) - {"source"} | {"profiles"})
    for required in ("name", "model"):
        if not tree.get(required):
            raise ConfigError(f"the config needs a {required!r} setting")
    resolved = {k: v for k, v in tree.items() if k != "profiles"}
    cfg = _build(
        RunConfig, {k: v for k, v in resolved.items() if k not in SECTIONS}, "",
        linearize=_build(LinearizeConfig, tree.get("linearize"), "linearize"),
        data=_build(DataConfig, tree.get("data"), "data"),
        stage1=_stage(tree.get("stage1"), "stage1", lora=False),
        stage2=_stage(tree.get("stage2"), "stage2", lora=True),
        eval=_build(EvalConfig, tree.get("eval"), "eval"),
        service=_build(ServiceConfig, tree.get("service"), "service"),
        distributed=_build(DistributedConfig, tree.get("distributed"), "distributed"),
        source=json.loads(json.dumps(resolved, default=str)),
    )
    _check_model(cfg.model)
    gate_rules(cfg.gate)  # an unknown gate setting fails now, not after training
    return cfg
