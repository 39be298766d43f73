"""Perplexity is exp of the token-weighted mean next-token NLL."""

import math

import pytest
import torch
from datasets import Dataset

from lolcats_core.data import DataError
from lolcats_core.evaluation import perplexity


@pytest.fixture
def heldout():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 5000, (5, 24), generator=g)
    labels = ids.clone()
    labels[0, :10] = -100  # a masked prompt
    labels[3, 5:] = -100  # a row with few targets
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()}), ids, labels


def test_perplexity_matches_a_hand_computed_token_mean(tiny_lm, heldout):
    data, ids, labels = heldout
    with torch.no_grad():
        logprobs = torch.log_softmax(tiny_lm(input_ids=ids).logits[:, :-1].double(), dim=-1)
    targets = labels[:, 1:]
    scored = targets != -100
    token_nll = -logprobs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    nll = token_nll[scored]
    result = perplexity(tiny_lm, data, batch_size=2, progress=False)
    assert result["tokens"] == int(scored.sum()) == 5 * 23 - 9 - 19
    assert result["nll"] == pytest.approx(nll.mean().item(), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)
    # token-weighted: not the mean of per-row perplexities
    rows = [math.exp(row[keep].mean()) for row, keep in zip(token_nll, scored)]
    assert result["perplexity"] != pytest.approx(sum(rows) / len(rows), rel=1e-6)


def test_max_rows_and_mode_restored(tiny_lm, heldout):
    data, _, _ = heldout
    tiny_lm.train()
    assert perplexity(tiny_lm, data, max_rows=2, progress=False)["rows"] == 2
    assert tiny_lm.training


def test_empty_heldout_set_is_an_error(tiny_lm):
    empty = Dataset.from_dict({"input_ids": [], "labels": []})
    with pytest.raises(DataError, match="held-out dataset is empty"):
        perplexity(tiny_lm, empty, progress=False)
