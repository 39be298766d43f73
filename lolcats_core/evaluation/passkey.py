"""Passkey retrieval over a grid of context lengths x needle depths (greedy decoding).

The prompts use `EVAL_TEMPLATE`, wording that no training sample uses (training data has
`lolcats_core.data.passkey.TRAIN_TEMPLATE`), so the score measures retrieval rather than a
learnt format; they are framed by the tokenizer's chat template where it has one.
"""

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from ..data import PasskeyGenerator, PasskeyTemplate, check_fits
from .plots import plot_passkey_heatmap
from .runtime import evaluating, model_device

_NUMBER = re.compile(r"\d+")
EVAL_TEMPLATE = PasskeyTemplate(
    intro="Below is a long document. Somewhere inside it a secret number is written down; read the "
    "document, then answer the question at its end.\n\n",
    needle="\n\nA note for the reader: the secret number is {key}. Please keep the number {key} in mind.\n\n",
    question="\n\nWhich secret number is written down in the document above?",
    reply="The secret number is",
)


@dataclass
class PasskeyResult:
    """Outcome of `passkey_retrieval`.

    Attributes:
        lengths, depths: the grid axes.
        correct: [len(depths), len(lengths)] number of exact retrievals per cell.
        trials: prompts per cell.
        predictions: per cell, the generated continuations (for inspection).
        keys: per cell, the keys asked for, in the order of `predictions`.
        chat: the prompts were framed by the tokenizer's chat template.
    """

    lengths: list[int]
    depths: list[float]
    correct: np.ndarray
    trials: int
    predictions: dict[tuple[int, float], list[str]]
    keys: dict[tuple[int, float], list[str]]
    chat: bool = False

    @property
    def accuracy(self) -> np.ndarray:
        """[len(depths), len(lengths)] fraction retrieved."""
        return self.correct / self.trials

    def table(self) -> list[dict]:
        """One row per cell: length, depth, correct, trials, accuracy."""
        return [
            {"length": n, "depth": d, "correct": int(self.correct[i, j]), "trials": self.trials,
             "accuracy": float(self.accuracy[i, j])}
            for j, n in enumerate(self.lengths)
            for i, d in enumerate(self.depths)
        ]  # fmt: skip

    def by_length(self) -> dict[int, float]:
        """Accuracy per context length, averaged over depths."""
        return {n: float(self.accuracy[:, j].mean()) for j, n in enumerate(self.lengths)}

    def to_dict(self) -> dict:
        return {
            "lengths": self.lengths,
            "depths": self.depths,
            "trials": self.trials,
            "chat_template": self.chat,
            "by_length": {str(n): acc for n, acc in self.by_length().items()},
            "overall": float(self.accuracy.mean()),
            "table": self.table(),
            "predictions": {f"{n}@{d}": texts for (n, d), texts in self.predictions.items()},
            "keys": {f"{n}@{d}": keys for (n, d), keys in self.keys.items()},
        }

    def heatmap(self, path: str | Path, title: str = "Passkey retrieval accuracy") -> Path:
        return plot_passkey_heatmap(self.accuracy, self.lengths, self.depths, path, title=title)


def passkey_retrieval(
    model: torch.nn.Module,
    tokenizer,
    lengths: Sequence[int] = (1024, 2048, 4096, 8192),
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    *,
    trials: int = 4,
    seed: int = 0,
    haystack_path: str | Path | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> PasskeyResult:
    """Greedy-decode the answer to passkey prompts; a trial counts if the first number
    generated equals the key exactly.

    The prompts (`EVAL_TEMPLATE`, in the tokenizer's chat template where it has one) depend
    only on (tokenizer, haystack, seed, length, depth, trial), so teacher and student see
    identical prompts. Each cell's `trials` prompts share one length and run
    in batches of up to `batch_size` rows without padding.

    Raises:
        DataError: a length exceeds the model's `max_position_embeddings` or is too short
            to hold the needle and question.
    """
    max_positions = getattr(model.config, "max_position_embeddings", None)
    for n in lengths:
        check_fits(n, max_positions, field="passkey_lengths")
    generator = PasskeyGenerator(tokenizer, haystack_path, template=EVAL_TEMPLATE, chat=True)
    device = model_device(model)
    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    correct = np.zeros((len(depths), len(lengths)), dtype=np.int64)
    predictions, keys = {}, {}
    cells = [(i, j) for j in range(len(lengths)) for i in range(len(depths))]
    with evaluating(model):
        for i, j in tqdm(cells, desc="passkey", disable=not progress, leave=False):
            rng = random.Random(f"passkey-{seed}-{lengths[j]}-{depths[i]}")
            samples = [generator.sample(lengths[j], depths[i], rng) for _ in range(trials)]
            texts = []
            for start in range(0, trials, batch_size):
                batch = samples[start : start + batch_size]
                input_ids = torch.tensor([s.input_ids for s in batch], device=device)
                config = GenerationConfig(
                    max_new_tokens=max(len(s.answer_ids) for s in batch) + 2,
                    do_sample=False, eos_token_id=eos, pad_token_id=pad,
                )  # fmt: skip
                out = model.generate(
                    input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
                )
                texts += tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
            found = [_NUMBER.search(t) for t in texts]
            correct[i, j] = sum(m is not None and m.group() == s.key for m, s in zip(found, samples))
            predictions[(lengths[j], depths[i])] = texts
            keys[(lengths[j], depths[i])] = [s.key for s in samples]
    return PasskeyResult(list(lengths), list(depths), correct, trials, predictions, keys, generator.chat)
