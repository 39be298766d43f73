"""Stage 2, low-rank adjustment: LoRA on the attention projections, next-token loss."""

import math
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn

from ..model_parts import base_model
from .chunked_loss import chunked_cross_entropy
from .execution import stage2_execution
from .loop import BatchSource, TrainConfig, TrainResult, restore_best, train_loop


def next_token_loss(model: nn.Module, batch: dict, device) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over labelled tokens (labels -100 are ignored) and their count.

    batch: input_ids and labels, (B, T) int64. The output head runs only on the positions that
    have a label (ShareGPT rows mask the prompts, often half the tokens), a chunk of them at a
    time (`chunked_cross_entropy`): the (count, vocab) logits never exist whole.
    """
    base = base_model(model)
    labels = batch["labels"].to(device)
    hidden = base.model(input_ids=batch["input_ids"].to(device), use_cache=False).last_hidden_state  # (B, T, hidden)
    target = labels[:, 1:]
    keep = target != -100
    count = int(keep.sum())
    if count == 0:
        return hidden.sum() * 0.0, 0
    loss = chunked_cross_entropy(hidden[:, :-1][keep], base.get_output_embeddings(), target[keep])
    return loss, count


def held_out_sums(model: nn.Module, batches: Iterable[dict], device) -> tuple[float, int]:
    """(sum of next-token loss x tokens, tokens) over `batches`, in eval mode without gradients."""
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            loss, n = next_token_loss(model, batch, device)
            total, tokens = total + loss.item() * n, tokens + n
    return total, tokens


def held_out_loss(model: nn.Module, batches: Iterable[dict], device) -> float:
    """Token-weighted mean next-token loss over `batches`."""
    total, tokens = held_out_sums(model, batches, device)
    return total / max(tokens, 1)


def lora_adjust(
    model: nn.Module,
    train_batches: BatchSource,
    eval_batches: Iterable[dict],
    cfg: TrainConfig,
    out_dir: Path,
    on_eval=None,
) -> TrainResult:
    """Run stage 2 on a `PeftModel` (see `lolcats_core.lora.add_lora`), then load the best LoRA."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    device = next(iter(params.values())).device
    eval_batches = list(eval_batches)

    def step(batch: dict, scale: float) -> dict:
        model.train()
        loss, _ = next_token_loss(model, batch, device)
        (loss * scale).backward()
        return {"loss": loss.item()}

    def evaluate() -> tuple[float, dict]:
        loss = held_out_loss(model, eval_batches, device)
        return loss, {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}

    with stage2_execution(model, cfg):
        result = train_loop("LoRA adjustment", params, step, evaluate, train_batches, cfg, out_dir, on_eval)
    restore_best(params, out_dir)
    return result
