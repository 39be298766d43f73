"""How a stage runs its model: compiled decoder layers (`train.compile`) and, in stage 2,
recomputed ones (`train.gradient_checkpointing`). Neither changes what is computed.

Compiling: most of a large model's non-matmul GPU time goes to elementwise and
dtype-conversion kernels (RMSNorm's fp32 round trip, rotary embeddings, the gated MLP's SiLU
and product, the feature maps' fp32 softmaxes, peft's fp32 casts around each LoRA adapter,
residual adds); compiled, each run of them between two matmuls becomes one fused kernel.
Every decoder layer is compiled in place (`nn.Module.compile`: parameter names and
checkpoints are unchanged); the hybrid-attention kernel and the stage-1 hook stay eager
between a layer's graphs (`lolcats_core.attention`). The layers share their graphs: the first
step compiles once per layer kind (softmax or linearized) and grad mode; leaving the stage
drops the compiled code (`torch.compiler.reset`), so the next stage starts under torch's
recompile limit again.

Checkpointing: transformers' gradient checkpointing (non-reentrant) keeps only each decoder
layer's input and recomputes the layer in the backward.
"""

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..model_parts import base_model, decoder_layers
from .loop import TrainConfig

BACKEND = "inductor"  # torch.compile's backend (the CPU tests take "aot_eager": no C++ build)


def compiled(fn: Callable, enabled: bool) -> Callable:
    """`fn` through torch.compile when `enabled`, else `fn` itself."""
    return torch.compile(fn, backend=BACKEND) if enabled else fn


@contextmanager
def compiled_layers(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Compile every decoder layer of `model` while inside (nothing when not `enabled`); the
    layers run eagerly again afterwards."""
    layers = decoder_layers(model) if enabled else []
    for layer in layers:
        layer.compile(backend=BACKEND)
    try:
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None  # what nn.Module.compile set
        if layers:
            torch.compiler.reset()


@contextmanager
def checkpointed_layers(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Recompute every decoder layer of `model` in the backward while inside (training mode
    only; nothing when not `enabled`)."""
    if not enabled:
        yield
        return
    base = base_model(model)
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        base.gradient_checkpointing_disable()


def stage2_execution(model: nn.Module, cfg: TrainConfig) -> ExitStack:
    """The context in which stage 2 trains `model`: compiled and/or checkpointed layers.

    Raises:
        ConfigError: `cfg.gradient_checkpointing` is still "auto" (`lolcats_core.memory`
            decides it from the GPU's memory before the stage runs).
    """
    if cfg.gradient_checkpointing == "auto":
        raise ConfigError("stage2.gradient_checkpointing 'auto' is decided by lolcats_core.memory (fit_run_config, "
                          "stage_as_run) before the stage runs; pass true or false to a stage called directly")
    stack = ExitStack()
    stack.enter_context(checkpointed_layers(model, cfg.gradient_checkpointing))
    stack.enter_context(compiled_layers(model, cfg.compile))
    return stack
