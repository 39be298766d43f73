"""Writing a lolcats checkpoint (layout: `lolcats_core.checkpoint`): its config class, the
weights it keeps, `save_linearized`."""

from pathlib import Path

import torch
import torch.nn as nn
from peft import PeftModel, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from transformers import PretrainedConfig

from .errors import CheckpointError
from .hashing import safetensors_sha256
from .model_parts import base_model

WEIGHTS_NAME = "model.safetensors"


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


def attention_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Feature-map and gate tensors (what an "adapter" checkpoint saves besides LoRA), keyed by
    their names in the unwrapped model."""
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
        state, contents = attention_state(model), "adapter"
        if lora is not None:
            state.update({f"lora::{k}": v for k, v in get_peft_model_state_dict(model).items()})
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(state, out / WEIGHTS_NAME, metadata={"format": "pt", "contents": contents})
    file_sha, tensors_sha = safetensors_sha256(out / WEIGHTS_NAME)
    base_config = {k: v for k, v in inner.config.to_dict().items()
                   if k not in ("lolcats", "lolcats_base", "lolcats_lora")}
    cfg = LolcatsConfig(
        base_model=base, base_config=base_config, linearization=inner.config.lolcats, lora=lora,
        weights={"file": WEIGHTS_NAME, "contents": contents, "sha256": file_sha, "tensors_sha256": tensors_sha},
        architectures=["LolcatsForCausalLM"],
    )
    cfg.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
