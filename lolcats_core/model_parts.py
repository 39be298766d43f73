"""Where the parts of a Hugging Face causal LM are: the model under a peft wrapper, its
decoder layers, its rotary tables. A leaf module (imports nothing of lolcats_core), so that
every other module can use it."""

import torch
import torch.nn as nn


def base_model(model: nn.Module) -> nn.Module:
    """The causal LM itself: `model`, or the one a peft wrapper holds."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM (through a peft wrapper if any)."""
    return base_model(model).model.layers


def reset_rotary(model: nn.Module, device) -> None:
    """Compute the decoder's rotary tables (inv_freq, (head_dim / 2,): its only buffers) anew on
    `device`, from the config: for a model built on the meta device or emptied by `to_empty`."""
    inner = base_model(model).model
    with torch.device(device):
        inner.rotary_emb = type(inner.rotary_emb)(inner.rotary_emb.config)
