"""Where the parts of a Hugging Face causal LM are: the model under a peft wrapper, its
decoder layers. A leaf module (imports nothing of lolcats_core), so that every other module
can use it."""

import torch.nn as nn


def base_model(model: nn.Module) -> nn.Module:
    """The causal LM itself: `model`, or the one a peft wrapper holds."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM (through a peft wrapper if any)."""
    return base_model(model).model.layers
