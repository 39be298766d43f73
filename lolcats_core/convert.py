"""Model surgery: swap the softmax attentions of a HF causal LM for `LolcatsAttention`."""

import torch.nn as nn

from .attention import LolcatsAttention
from .checkpoint_save import save_linearized
from .config import LinearizeConfig
from .errors import UnsupportedModelError
from .model_parts import base_model, decoder_layers  # noqa: F401 - base_model: re-export for training/blockwise.py

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")


class LinearizedModelMixin:
    """Mixed into the class of a linearized model: saving writes a lolcats checkpoint."""

    def save_pretrained(self, save_directory, **kwargs):
        """Save as a lolcats checkpoint (see `lolcats_core.checkpoint_save.save_linearized`)."""
        return save_linearized(self, save_directory, **kwargs)


_LINEARIZED_CLASSES: dict[type, type] = {}


def linearized_class(base_cls: type) -> type:
    """`Lolcats<Base>` subclass of a HF model class, created once per base class."""
    if issubclass(base_cls, LinearizedModelMixin):
        return base_cls
    if base_cls not in _LINEARIZED_CLASSES:
        cls = type(f"Lolcats{base_cls.__name__}", (LinearizedModelMixin, base_cls), {})
        cls.__module__ = __name__
        globals()[cls.__name__] = cls  # importable by name, hence picklable
        _LINEARIZED_CLASSES[base_cls] = cls
    return _LINEARIZED_CLASSES[base_cls]


def check_supported(model_config, class_name: str | None = None) -> None:
    """Raise `UnsupportedModelError` unless the architecture can be linearized."""
    model_type = getattr(model_config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        arch = class_name or (getattr(model_config, "architectures", None) or ["?"])[0]
        raise UnsupportedModelError(
            f"cannot linearize model_type {model_type!r} ({arch}); "
            f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


def linearize(model: nn.Module, lin: LinearizeConfig) -> nn.Module:
    """Replace the softmax attentions of `model` in place and return it.

    Layers listed by `lin.softmax_layers` keep softmax attention. The model's class becomes a
    `Lolcats<Base>` subclass and `model.config.lolcats` records `lin`.
    """
    check_supported(model.config, type(model).__name__)
    if getattr(model.config, "lolcats", None) is not None:
        raise UnsupportedModelError("the model is already linearized")
    layers = decoder_layers(model)
    keep = set(lin.softmax_layer_indices(len(layers)))
    for idx, layer in enumerate(layers):
        if idx not in keep:
            layer.self_attn = LolcatsAttention(layer.self_attn, model.config, lin, idx)
    model.config.lolcats = lin.to_dict()
    model.__class__ = linearized_class(type(model))
    return model


def linearized_attentions(model: nn.Module) -> list[LolcatsAttention]:
    """The `LolcatsAttention` modules of a model, in layer order."""
    return [m for m in model.modules() if isinstance(m, LolcatsAttention)]


def attention_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters trained by attention transfer: feature maps, window weights, sink logits and
    state gates of every linearized layer."""
    return [p for attn in linearized_attentions(model) for p in attn.transfer_parameters()]


def freeze_for_attention_transfer(model: nn.Module) -> list[nn.Parameter]:
    """Stage 1: only the attention-transfer parameters train. Returns them."""
    model.requires_grad_(False)
    params = attention_parameters(model)
    for p in params:
        p.requires_grad_(True)
    return params
