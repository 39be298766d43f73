"""Linearized checkpoints: config.json + safetensors, loadable with `AutoModelForCausalLM`.

Layout of a checkpoint directory:

    config.json         model_type "lolcats": base model (id, revision, fingerprint, config),
                        linearization settings, LoRA settings, weight file name and sha256
    model.safetensors   "adapter": feature maps, gates and LoRA weights only (the base model
                        is loaded from its id); "full": every weight, LoRA merged
    tokenizer files     when a tokenizer was given

Loading refuses pickle files, a weight file whose sha256 differs from the recorded one, and a
base model whose config or weight fingerprint differs from the recorded one.
"""

import copy
import hashlib
from pathlib import Path

import torch
import torch.nn as nn
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.initialization import no_init_weights

from .config import LinearizeConfig
from .convert import base_model, linearize
from .errors import CheckpointError
from .lora import LoraSettings
from .presets import load_base_model, weight_fingerprint

WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Fields of the base config that must match for adapter weights to apply.
SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size")


class LolcatsConfig(PretrainedConfig):
    """config.json of a linearized checkpoint (model_type "lolcats")."""

    model_type = "lolcats"

    def __init__(self, base_model=None, base_config=None, linearization=None, lora=None,
                 weights=None, **kwargs):
        self.base_model = base_model or {}
        self.base_config = base_config or {}
        self.linearization = linearization or {}
        self.lora = lora
        self.weights = weights or {}
        super().__init__(**kwargs)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _attention_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Feature-map and gate tensors, keyed by their names in the unwrapped model."""
    keys = ("feature_map_q.", "feature_map_k.", "window_gate", "sink_logit", "state_gate.")
    return {k: v for k, v in base_model(model).state_dict().items() if any(s in k for s in keys)}


def _full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor once, LoRA merged into its projection without modifying the model.

    Tied (shared-storage) duplicates are dropped and re-tied on load.
    """
    inner = base_model(model)
    deltas = {f"{name}.weight": m.get_delta_weight(m.active_adapters[0])
              for name, m in inner.named_modules() if isinstance(m, LoraLayer)}
    seen, state = set(), {}
    for k, v in inner.state_dict().items():
        if ".lora_" in k or v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        k = k.replace(".base_layer.", ".")
        state[k] = (v + deltas[k].to(v.dtype)) if k in deltas else v
    return state


def save_linearized(model: nn.Module, save_directory, tokenizer=None, merge_lora: bool = False,
                    **_ignored) -> Path:
    """Save a linearized model (optionally wrapped by peft) as a lolcats checkpoint.

    Args:
        model: linearized model, or a `PeftModel` around one (stage 2).
        save_directory: target directory (created).
        tokenizer: saved beside the weights when given.
        merge_lora: "full" checkpoint with every weight and LoRA merged into the projections
            (the model itself is left unchanged); otherwise "adapter".
    """
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    inner = base_model(model)
    base = getattr(inner.config, "lolcats_base", None)
    if not getattr(inner.config, "lolcats", None) or not base:
        raise CheckpointError("save_linearized needs a model from load_base_model() + linearize()")
    lora = getattr(inner.config, "lolcats_lora", None) if isinstance(model, PeftModel) else None
    if merge_lora:
        state, contents, lora = _full_state(model), "full", None
    else:
        state, contents = _attention_state(model), "adapter"
        if lora is not None:
            state.update({f"lora::{k}": v for k, v in get_peft_model_state_dict(model).items()})
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(state, out / WEIGHTS_NAME, metadata={"format": "pt", "contents": contents})
    base_config = {k: v for k, v in inner.config.to_dict().items()
                   if k not in ("lolcats", "lolcats_base", "lolcats_lora")}
    cfg = LolcatsConfig(
        base_model=base, base_config=base_config, linearization=inner.config.lolcats, lora=lora,
        weights={"file": WEIGHTS_NAME, "contents": contents, "sha256": _sha256(out / WEIGHTS_NAME)},
        architectures=["LolcatsForCausalLM"],
    )
    cfg.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _check_directory(path: Path) -> None:
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{path} contains pickle files {pickles}: lolcats loads safetensors only "
            "(pickle can execute code). Remove them or re-save the model with lolcats."
        )
    if not (path / WEIGHTS_NAME).exists():
        raise CheckpointError(f"{path} has no {WEIGHTS_NAME}: not a lolcats checkpoint")


def _check_base(cfg: LolcatsConfig, base: nn.Module) -> None:
    have = base.config.to_dict()
    diffs = [f"{k}: checkpoint {cfg.base_config.get(k)!r} vs base {have.get(k)!r}"
             for k in SHAPE_FIELDS if cfg.base_config.get(k) != have.get(k)]
    if diffs:
        raise CheckpointError(
            f"base model {cfg.base_model.get('id')!r} does not match the checkpoint: " + "; ".join(diffs))
    want, got = cfg.base_model.get("fingerprint"), weight_fingerprint(base)
    if want and want != got:
        raise CheckpointError(
            f"base model weights differ from those the checkpoint was trained on "
            f"(fingerprint {got} != {want}, id {cfg.base_model.get('id')!r}, "
            f"revision {cfg.base_model.get('revision')!r}); load the matching base model")


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], allow_missing: set[str]) -> None:
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state) - allow_missing)
    if unexpected or shapes or missing:
        raise CheckpointError(
            "checkpoint weights do not fit the model: "
            + "; ".join(filter(None, [
                f"unexpected {unexpected[:5]}" if unexpected else "",
                f"shape mismatch {shapes[:5]}" if shapes else "",
                f"missing {missing[:5]}" if missing else ""])))
    model.load_state_dict(state, strict=False)


def load_linearized(path, base_model: str | None = None, dtype: torch.dtype = torch.float32,
                    device="cpu", merge_lora: bool = True) -> nn.Module:
    """Load a lolcats checkpoint directory.

    Args:
        base_model: where to load the base model of an "adapter" checkpoint from (preset,
            directory or hub id); default: the id recorded in the checkpoint.
        merge_lora: merge LoRA into the projections (inference); else return the PeftModel.
    """
    path = Path(path)
    _check_directory(path)
    cfg = LolcatsConfig.from_pretrained(path)
    if _sha256(path / WEIGHTS_NAME) != cfg.weights.get("sha256"):
        raise CheckpointError(
            f"{path / WEIGHTS_NAME} was modified after saving (sha256 differs from config.json); "
            "refusing to load a tampered checkpoint")
    state = load_file(path / WEIGHTS_NAME)
    lin = LinearizeConfig.from_dict(cfg.linearization)
    if cfg.weights.get("contents") == "full":
        base_cfg = AutoConfig.for_model(**copy.deepcopy(cfg.base_config))
        with no_init_weights():  # every weight comes from the file: skip the random init
            model = AutoModelForCausalLM.from_config(base_cfg, dtype=dtype)
        model.config.lolcats_base = dict(cfg.base_model)
        linearize(model, lin)
        tied = {k for k in model.state_dict() if k not in state} if base_cfg.tie_word_embeddings else set()
        _load_into(model, state, allow_missing=tied)
        model.tie_weights()
        return model.to(device).eval()
    model, _, _ = load_base_model(base_model or cfg.base_model["id"], dtype=dtype, device="cpu")
    _check_base(cfg, model)
    model.config.lolcats_base = dict(cfg.base_model)
    linearize(model, lin)
    lora_state = {k.removeprefix("lora::"): v for k, v in state.items() if k.startswith("lora::")}
    attn_state = {k: v for k, v in state.items() if not k.startswith("lora::")}
    _load_into(model, attn_state, allow_missing=set(model.state_dict()) - set(_attention_state(model)))
    if cfg.lora:
        from .lora import add_lora

        model = add_lora(model, LoraSettings(**cfg.lora))
        result = set_peft_model_state_dict(model, lora_state)
        if result.unexpected_keys:
            raise CheckpointError(f"LoRA weights do not fit the model: unexpected {result.unexpected_keys[:5]}")
        if merge_lora:
            model = model.merge_and_unload()
    return model.to(device=device, dtype=dtype).eval()


class LolcatsForCausalLM:
    """Entry point of `AutoModelForCausalLM.from_pretrained(dir)` for lolcats checkpoints.

    Returns the linearized model itself (a `Lolcats<Base>ForCausalLM`), not an instance of
    this class.
    """

    config_class = LolcatsConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, dtype=None,
                        device_map=None, base_model_path=None, **kwargs):
        """Load a lolcats checkpoint; `base_model_path` overrides where its base model comes from."""
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        device = device_map if isinstance(device_map, (str, torch.device)) and device_map != "auto" else "cpu"
        return load_linearized(pretrained_model_name_or_path, base_model=base_model_path,
                               dtype=dtype or torch.float32, device=device)


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` recognise lolcats checkpoints."""
    AutoConfig.register("lolcats", LolcatsConfig, exist_ok=True)
    AutoModelForCausalLM.register(LolcatsConfig, LolcatsForCausalLM, exist_ok=True)
