"""Token-weighted perplexity on held-out packed rows."""

import math

import torch
import torch.nn.functional as F
from datasets import Dataset
from tqdm.auto import tqdm

from ..data import IGNORE_INDEX, DataError, make_dataloader
from .runtime import evaluating, model_device


def perplexity(
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    max_rows: int | None = None,
    progress: bool = True,
) -> dict:
    """exp(mean next-token NLL) over every labelled target of `dataset`'s rows.

    Rows are the prepared `input_ids`/`labels` ([T] each, labels -100 where masked); the
    target of position t is `labels[t + 1]`, and every target token weighs the same
    (token-weighted, not a mean of per-row perplexities).

    Returns:
        {"perplexity": float, "nll": mean NLL in nats, "tokens": targets scored, "rows": rows}
    """
    rows = len(dataset) if max_rows is None else min(max_rows, len(dataset))
    if rows == 0:
        raise DataError("perplexity: the held-out dataset is empty")
    loader = make_dataloader(dataset.select(range(rows)), batch_size, shuffle=False, drop_last=False)
    device = model_device(model)
    total_nll, total_tokens = 0.0, 0
    with evaluating(model):
        for input_ids, labels in tqdm(loader, desc="perplexity", disable=not progress, leave=False):
            logits = model(input_ids=input_ids.to(device), use_cache=False).logits  # [B, T, V]
            targets = labels[:, 1:].to(device)
            for b in range(logits.shape[0]):  # one row at a time keeps the fp32 copy small
                total_nll += F.cross_entropy(
                    logits[b, :-1].float(), targets[b], ignore_index=IGNORE_INDEX, reduction="sum"
                ).item()
            total_tokens += int((targets != IGNORE_INDEX).sum())
    if total_tokens == 0:
        raise DataError("perplexity: the held-out rows have no labelled target token")
    nll = total_nll / total_tokens
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": total_tokens, "rows": rows}
