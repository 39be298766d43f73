"""Passkey retrieval scoring, table and heat map."""

import re

import numpy as np
import pytest
import torch

from lolcats_core.data import DataError
from lolcats_core.evaluation import passkey_retrieval


class Oracle(torch.nn.Module):
    """Answers every passkey prompt correctly by reading the key from the prompt."""

    def __init__(self, model, tokenizer):
        super().__init__()
        self.inner, self.tokenizer = model, tokenizer
        self.config, self.generation_config = model.config, model.generation_config

    def generate(self, input_ids, **kwargs):
        answers = []
        for row in input_ids:
            key = re.search(r"secret number is (\d+)", self.tokenizer.decode(row)).group(1)
            answers.append(self.tokenizer(f" {key}.")["input_ids"])
        width = max(map(len, answers))
        tail = torch.tensor([a + [a[-1]] * (width - len(a)) for a in answers])
        return torch.cat([input_ids, tail], dim=1)


def test_random_model_fails_and_oracle_succeeds(tiny_lm, tokenizer, tmp_path):
    grid = dict(lengths=[160, 320], depths=[0.0, 0.5, 1.0], trials=2, progress=False)
    random_result = passkey_retrieval(tiny_lm, tokenizer, **grid)
    assert random_result.correct.shape == (3, 2) and random_result.correct.sum() == 0
    oracle = passkey_retrieval(Oracle(tiny_lm, tokenizer), tokenizer, **grid)
    assert np.all(oracle.accuracy == 1.0)
    assert oracle.by_length() == {160: 1.0, 320: 1.0}
    table = oracle.to_dict()["table"]
    assert len(table) == 6 and {(r["length"], r["depth"]) for r in table} == {
        (n, d) for n in (160, 320) for d in (0.0, 0.5, 1.0)
    }
    # the generated answers are kept for inspection beside the keys asked for
    predictions, keys = oracle.to_dict()["predictions"], oracle.to_dict()["keys"]
    assert len(predictions) == 6 and all(len(texts) == 2 for texts in predictions.values())
    assert keys.keys() == predictions.keys()
    assert all(t.startswith(f" {k}.") for cell in keys for t, k in zip(predictions[cell], keys[cell], strict=True))
    assert random_result.to_dict()["keys"] == keys  # the same prompts for every model
    png = oracle.heatmap(tmp_path / "passkey.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_prompts_for_every_model(tiny_lm, tokenizer):
    """Teacher and student see identical prompts: the keys depend only on the seed and cell."""
    a = passkey_retrieval(Oracle(tiny_lm, tokenizer), tokenizer, [200], [0.5], trials=3, progress=False)
    b = passkey_retrieval(Oracle(tiny_lm, tokenizer), tokenizer, [200], [0.5], trials=3, progress=False)
    assert a.predictions == b.predictions


def test_lengths_beyond_the_model_are_an_error(tiny_lm, tokenizer):
    with pytest.raises(DataError, match="passkey_lengths=4096 exceeds the model's max_position_embeddings=2048"):
        passkey_retrieval(tiny_lm, tokenizer, [1024, 4096], [0.5], progress=False)
