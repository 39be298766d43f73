"""Stage 1, attention transfer: train feature maps and gates to mimic softmax attention.

Every linearized layer compares its student output with the teacher's (SDPA) output by MSE on
the per-head outputs, and passes the teacher's output on (teacher forcing), so layers learn
independently and one forward pass trains all of them. Each layer runs its backward as soon
as its forward is done: only one layer's graph is alive at a time.
"""

import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from ..convert import freeze_for_attention_transfer, linearized_attentions
from ..model_parts import base_model
from .execution import compiled, compiled_layers
from .loop import BatchSource, NonFiniteLossError, TrainConfig, TrainResult, restore_best, train_loop


def attention_state_names(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable stage-1 parameters by their name in the model, kept in fp32 for the optimizer."""
    wanted = {id(p) for p in freeze_for_attention_transfer(model)}
    params = {n: p for n, p in model.named_parameters() if id(p) in wanted}
    for p in params.values():
        p.data = p.data.float()
    return params


class LayerLosses:
    """Per-layer MSE of the forwards run in `transfer_mode`, kept on the device.

    Losses stay tensors until `totals()` so that a step costs one host sync, not one per layer.
    """

    def __init__(self) -> None:
        self.losses: dict[int, list[torch.Tensor]] = {}

    def add(self, layer: int, loss: torch.Tensor) -> None:
        self.losses.setdefault(layer, []).append(loss.detach())

    def totals(self) -> dict[int, tuple[float, int]]:
        """{layer: (sum of MSE, count)}; raises NonFiniteLossError naming the first bad layer."""
        layers = sorted(self.losses)
        if not layers:
            return {}
        sums = torch.stack([torch.stack(self.losses[k]).sum() for k in layers]).tolist()
        for layer, value in zip(layers, sums):
            if not math.isfinite(value):
                raise NonFiniteLossError(f"attention-transfer loss of layer {layer} is {value}")
        return {k: (s, len(self.losses[k])) for k, s in zip(layers, sums)}


def transfer_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error in fp32 of a layer's student and teacher outputs, both (B, H, T, D)."""
    return (student.float() - teacher.float()).square().mean()


@contextmanager
def transfer_mode(model: nn.Module, train: bool, scale: float = 1.0, mse=transfer_mse):
    """Install hooks that record per-layer MSE (and backpropagate it when `train`).

    mse: `transfer_mse`, or the same compiled. Yields a `LayerLosses` filled during forwards.
    """
    record = LayerLosses()

    def hook(module, student: torch.Tensor, teacher: torch.Tensor) -> None:
        loss = mse(student, teacher)
        if train:
            (loss * scale).backward()
        record.add(module.layer_idx, loss)

    attns = linearized_attentions(model)
    for a in attns:
        a.transfer_hook = hook
    try:
        yield record
    finally:
        for a in attns:
            a.transfer_hook = None


def layer_mse(model: nn.Module, batches: Iterable[dict], device) -> dict[int, float]:
    """Mean held-out attention MSE per linearized layer."""
    model.eval()
    with torch.no_grad(), transfer_mode(model, train=False) as record:
        for batch in batches:
            base_model(model).model(input_ids=batch["input_ids"].to(device), use_cache=False)
    return {layer: s / n for layer, (s, n) in record.totals().items()}


def transfer_step(model: nn.Module, forward: Callable[[torch.Tensor], object], compile: bool) -> Callable:
    """The stage-1 training step for `train_loop`: `forward(input_ids)` runs the decoder (or a
    rank's block of it) in transfer mode, each layer's MSE (through torch.compile when `compile`)
    backpropagated inside the layer; the step's loss is the mean MSE over the layers that ran.

    input_ids: (B, T). Returns step(batch, scale) -> {"loss": float}.
    """
    loss_fn = compiled(transfer_mse, compile)

    def step(batch: dict, scale: float) -> dict:
        model.train()
        with torch.no_grad(), transfer_mode(model, train=True, scale=scale, mse=loss_fn) as record:
            forward(batch["input_ids"])
        per_layer = [s / n for s, n in record.totals().values()]
        return {"loss": sum(per_layer) / len(per_layer)}

    return step


def attention_transfer(
    model: nn.Module,
    train_batches: BatchSource,
    eval_batches: Iterable[dict],
    cfg: TrainConfig,
    out_dir: Path,
    on_eval=None,
) -> tuple[TrainResult, dict[int, float]]:
    """Run stage 1 (resuming from `out_dir/last` if present), then load the best parameters.

    Returns the training result and the held-out MSE per layer of the best parameters.
    """
    params = attention_state_names(model)
    device = next(iter(params.values())).device
    eval_batches = list(eval_batches)
    step = transfer_step(model, lambda ids: base_model(model).model(input_ids=ids.to(device), use_cache=False),
                         cfg.compile)

    def evaluate() -> tuple[float, dict]:
        mse = layer_mse(model, eval_batches, device)
        return sum(mse.values()) / len(mse), {f"mse/layer_{k}": v for k, v in mse.items()}

    with compiled_layers(model, cfg.compile):
        result = train_loop("attention transfer", params, step, evaluate, train_batches, cfg, out_dir, on_eval)
    restore_best(params, out_dir)
    return result, layer_mse(model, eval_batches, device)
