"""Stage 2 on several ranks with FSDP2 (`fully_shard`): for models whose weights do not fit one GPU.

The frozen weights are sharded over the ranks: every decoder layer is one FSDP unit and the
rest (embeddings, final norm, output head, tied or not) is the root unit around
`NextTokenLoss`, so a rank keeps 1/N of the weights and gathers one layer at a time (the
next one prefetched) for the forward and again for the backward. The LoRA parameters stay
outside FSDP (`ignored_params`): they are small (r x (in + out) per projection: 0.05% of
Llama 3 70B's weights at r = 8, 0.5 GiB of fp32 training state), every rank holds them all
as in DDP, and one all-reduce per optimizer step averages their gradients. So the training
loop, its checkpoints (plain tensors written by rank 0) and exact resume are those of the
single-process run, unchanged.

Data are split as in DDP (`rank_share`): rank r takes micro-batches r, r+N, ...; the global
batch is micro-batch x N x grad_accum. Every forward gathers weights from all ranks, so every
rank scores every held-out batch (a few rows), in the single-process order.
"""

import math
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from ..distributed import Ranks
from ..model_parts import decoder_layers
from .data_parallel import NextTokenLoss, broadcast_from_rank0, train_on_ranks
from .loop import BatchSource, TrainConfig, TrainResult


def shard(model: nn.Module, ranks: Ranks, device) -> NextTokenLoss:
    """Shard the frozen weights of a `PeftModel` (loaded on the host) over the ranks onto
    `device`, with the LoRA parameters copied whole to it; returns the loss module to call."""
    lora = {p for p in model.parameters() if p.requires_grad}
    with torch.no_grad():
        for p in lora:
            p.data = p.data.to(device)
    mesh = init_device_mesh(torch.device(device).type, (ranks.world_size,))
    loss = NextTokenLoss(model, device)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, ignored_params=lora)
    fully_shard(loss, mesh=mesh, ignored_params=lora)
    return loss


def average_gradients(params: dict[str, nn.Parameter], ranks: Ranks) -> None:
    """Replace every gradient by its mean over the ranks (one all-reduce of them all, flattened)."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ranks.world_size
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def sharded_lora_adjust(
    model: nn.Module,
    ranks: Ranks,
    train_batches: BatchSource,
    eval_batches: Iterable[dict],
    cfg: TrainConfig,
    out_dir: Path,
    device,
    on_eval=None,
) -> TrainResult:
    """Stage 2 of a `PeftModel` with its weights sharded over the ranks (resuming from
    `out_dir/last`), then the best LoRA. The model stays sharded (its frozen weights are
    DTensors); the best LoRA parameters are also in `out_dir/best.safetensors`.

    model: loaded on the host; `shard` moves it to `device`.

    train_batches: the single-process stream of micro-batches; each rank takes its share.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    broadcast_from_rank0(params)
    loss_module = shard(model, ranks, device)
    eval_batches = list(eval_batches)
    micro_batches = 0

    def step(batch: dict, scale: float) -> dict:
        nonlocal micro_batches
        micro_batches += 1
        model.train()
        loss, _ = loss_module(batch["input_ids"], batch["labels"])
        (loss * scale).backward()
        if micro_batches % cfg.grad_accum == 0:  # the loop resumes at step boundaries
            average_gradients(params, ranks)
        return {"loss": loss.item()}  # this rank's micro-batch

    def evaluate() -> tuple[float, dict]:
        model.eval()
        total, tokens = 0.0, 0
        with torch.no_grad():
            for batch in eval_batches:
                loss, n = loss_module(batch["input_ids"], batch["labels"])
                total, tokens = total + loss.item() * n, tokens + n
        loss = total / max(tokens, 1)
        return loss, {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}

    return train_on_ranks(params, step, evaluate, train_batches, ranks, cfg, out_dir, on_eval)
