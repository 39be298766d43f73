"""Stage 2 on several ranks with FSDP2 (`fully_shard`): for models whose weights do not fit one GPU.

The frozen weights are sharded over the ranks: every decoder layer is one FSDP unit and the
rest (embeddings, final norm, output head, tied or not) is the root unit around
`NextTokenLoss`, so a rank keeps 1/N of the weights and gathers one layer at a time (the
next one prefetched) for the forward and again for the backward. Only rank 0 loads the
weights (on the host); the other ranks build the model on the meta device and receive their
shards from rank 0 (`shard`), so their host memory never holds the model. The LoRA
parameters stay outside FSDP (`ignored_params`): they are small (r x (in + out) per
projection: 0.05% of Llama 3 70B's weights at r = 8, 0.5 GiB of fp32 training state), every
rank holds them all as in DDP (rank 0's initialisation, broadcast with the weights), and one
all-reduce per optimizer step averages their gradients. So the training loop, its checkpoints
(plain tensors written by rank 0) and exact resume are those of the single-process run,
unchanged.

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
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from ..distributed import Ranks
from ..model_parts import decoder_layers, reset_rotary
from .data_parallel import NextTokenLoss, train_on_ranks
from .loop import BatchSource, TrainConfig, TrainResult


def shard(model: nn.Module, ranks: Ranks, device) -> NextTokenLoss:
    """Shard the frozen weights of a `PeftModel` over the ranks onto `device`, the LoRA
    parameters whole on every rank; returns the loss module to call.

    model: on the host on rank 0; on any device, the meta device included, elsewhere. Every
    rank allocates its shards empty and rank 0 broadcasts its weights into them one tensor at
    a time (`set_model_state_dict`), so no other rank ever holds the whole model.
    """
    lora = {p for p in model.parameters() if p.requires_grad}
    loss = NextTokenLoss(model, device)
    full = loss.state_dict() if ranks.is_main else {}
    mesh = init_device_mesh(torch.device(device).type, (ranks.world_size,))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, ignored_params=lora)
    fully_shard(loss, mesh=mesh, ignored_params=lora)
    loss.to_empty(device=device)
    reset_rotary(model, device)
    set_model_state_dict(loss, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
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

    model: loaded on the host on rank 0, built on the meta device elsewhere (`shard` fills it
    from rank 0's weights on `device`).

    train_batches: the single-process stream of micro-batches; each rank takes its share.
    """
    loss_module = shard(model, ranks, device)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
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
