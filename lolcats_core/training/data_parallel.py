"""Stage 2 on several ranks: data parallel (DistributedDataParallel) over the LoRA parameters.

Every rank holds the whole linearized model; only the LoRA parameters train, and DDP averages
their gradients once per optimizer step (`no_sync` for the other micro-batches). The global
batch is per-rank micro-batch x ranks x grad_accum: rank r takes micro-batches r, r+N, r+2N,
... of the single-process stream, so one step consumes the same N x grad_accum micro-batches,
and yields the same update, as a single process with N x grad_accum accumulation steps. An
epoch's last (count mod N) micro-batches are dropped so that every rank sees as many.
Rank 0 writes the checkpoints; every rank resumes from them.
"""

import math
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..distributed import Ranks
from .finetune import held_out_sums, next_token_loss
from .loop import BatchSource, TrainConfig, TrainResult, restore_best, train_loop


def rank_share(source: BatchSource, ranks: Ranks) -> BatchSource:
    """Rank r's micro-batches of each epoch: r, r+N, ... of `source`, whole groups of N only."""

    def share(epoch: int) -> Iterator[dict]:
        group: list[dict] = []
        for batch in source(epoch):
            group.append(batch)
            if len(group) == ranks.world_size:
                yield group[ranks.rank]
                group = []

    return share


class NextTokenLoss(nn.Module):
    """`next_token_loss` as a module, the form DistributedDataParallel wraps.

    forward(input_ids (B, T), labels (B, T)) -> (mean loss over labelled tokens, their count).
    """

    def __init__(self, model: nn.Module, device):
        super().__init__()
        self.model, self.device = model, device

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        return next_token_loss(self.model, {"input_ids": input_ids, "labels": labels}, self.device)


def held_out_loss_shared(model: nn.Module, batches: list[dict], ranks: Ranks, device) -> float:
    """Token-weighted mean next-token loss over `batches`, each rank scoring every N-th one."""
    total = torch.tensor(held_out_sums(model, batches[ranks.rank::ranks.world_size], device),
                         dtype=torch.float64, device=device)  # (sum of loss x tokens, tokens)
    dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()


def broadcast_from_rank0(params: dict[str, nn.Parameter]) -> None:
    """One LoRA initialisation for all ranks: rank 0's."""
    with torch.no_grad():
        for p in params.values():
            dist.broadcast(p, 0)


def train_on_ranks(params: dict[str, nn.Parameter], step, evaluate, train_batches: BatchSource, ranks: Ranks,
                   cfg: TrainConfig, out_dir: Path, on_eval=None) -> TrainResult:
    """`train_loop` of stage 2 on every rank (each its share of the micro-batches; rank 0 writes
    the checkpoints and reports), then every rank loads the best LoRA parameters."""
    result = train_loop("LoRA adjustment", params, step, evaluate, rank_share(train_batches, ranks), cfg,
                        out_dir, on_eval if ranks.is_main else None, writes=ranks.is_main)
    dist.barrier()  # rank 0 has written the last best.safetensors
    restore_best(params, out_dir)
    return result


def data_parallel_lora_adjust(
    model: nn.Module,
    ranks: Ranks,
    train_batches: BatchSource,
    eval_batches: Iterable[dict],
    cfg: TrainConfig,
    out_dir: Path,
    on_eval=None,
) -> TrainResult:
    """Stage 2 of a `PeftModel` on every rank (resuming from `out_dir/last`), then the best LoRA.

    train_batches: the single-process stream of micro-batches; each rank takes its share.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    device = next(iter(params.values())).device
    broadcast_from_rank0(params)
    ddp = DistributedDataParallel(NextTokenLoss(model, device), device_ids=None if device.type == "cpu" else [device],
                                  broadcast_buffers=False, init_sync=False)
    eval_batches = list(eval_batches)
    micro_batches = 0

    def step(batch: dict, scale: float) -> dict:
        nonlocal micro_batches
        micro_batches += 1
        model.train()
        last_of_step = micro_batches % cfg.grad_accum == 0  # the loop resumes at step boundaries
        with nullcontext() if last_of_step else ddp.no_sync():
            loss, _ = ddp(batch["input_ids"], batch["labels"])
            (loss * scale).backward()
        return {"loss": loss.item()}  # this rank's micro-batch

    def evaluate() -> tuple[float, dict]:
        loss = held_out_loss_shared(model, eval_batches, ranks, device)
        return loss, {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}

    return train_on_ranks(params, step, evaluate, train_batches, ranks, cfg, out_dir, on_eval)
