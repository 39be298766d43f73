"""Which softmax layers retrieve: attention mass on the passkey needle, per layer and head.

Passkey retrieval from beyond the sliding window needs attention that puts most of a query's
mass on a handful of distant tokens, which the linear term cannot do among thousands of keys.
Keeping the layers that do this in the teacher as softmax (`linearize.softmax_layers`) is the
cheap way to keep retrieval. This module measures it on the teacher: for passkey prompts, the
share of the last prompt position's attention (the position that predicts the first digit of the
answer) that lands on the needle's tokens, per layer and head.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..attention import LolcatsAttention
from ..config import LinearizeConfig
from ..data import PasskeyGenerator, check_fits
from ..errors import LolcatsError
from ..model_parts import decoder_layers
from .plots import plot_retrieval_scores
from .runtime import evaluating, model_device


@dataclass
class RetrievalScores:
    """Outcome of `retrieval_scores`.

    Attributes:
        scores: [layers, heads] mean attention mass on the needle from the last prompt position.
        baseline: mean needle share of the prompt (needle tokens / prompt tokens): the mass a
            head that attends uniformly would put there.
        lengths, depths, trials: the prompts averaged over.
    """

    scores: np.ndarray
    baseline: float
    lengths: list[int]
    depths: list[float]
    trials: int

    def layer_scores(self) -> np.ndarray:
        """[layers] score of each layer's best head (one retrieval head is enough)."""
        return self.scores.max(axis=1)

    def top_layers(self, k: int) -> list[int]:
        """The k layers with the highest `layer_scores`, best first."""
        return [int(i) for i in np.argsort(-self.layer_scores(), kind="stable")[:k]]

    def to_dict(self) -> dict:
        return {
            "lengths": self.lengths,
            "depths": self.depths,
            "trials": self.trials,
            "baseline": self.baseline,
            "layer_scores": [float(x) for x in self.layer_scores()],
            "head_scores": self.scores.round(5).tolist(),
        }

    def plot(self, path: str | Path, title: str = "Attention mass on the passkey needle") -> Path:
        return plot_retrieval_scores(self.scores, self.baseline, path, title=title)


def _needle_mass_hooks(model: torch.nn.Module, spans: list[tuple[int, int]], sums: torch.Tensor) -> list:
    """Forward hooks adding each layer's last-position attention mass on `spans` (one
    (start, end) per batch row) into `sums` [layers, heads]."""
    layers = model.model.layers
    handles = []
    for i, layer in enumerate(layers):
        def hook(module, args, output, i=i):
            weights = output[1]  # (B, H, T, T), returned by the eager attention
            if weights is None:
                raise LolcatsError("the attention returned no weights: retrieval scores need eager attention")
            for b, (start, end) in enumerate(spans):
                sums[i] += weights[b, :, -1, start:end].float().sum(-1).cpu()
        handles.append(layer.self_attn.register_forward_hook(hook))
    return handles


def retrieval_scores(
    model: torch.nn.Module,
    tokenizer,
    lengths: Sequence[int] = (1024, 2048),
    depths: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    *,
    trials: int = 2,
    seed: int = 0,
    haystack_path: str | Path | None = None,
    progress: bool = True,
) -> RetrievalScores:
    """Attention mass on the needle per (layer, head) of a softmax model (a Llama-style
    `model.model.layers[i].self_attn`), averaged over `trials` passkey prompts per
    (length, depth); the prompts are those `passkey_retrieval` builds for the same seed.

    Runs the model with eager attention (restored afterwards), one prompt at a time, so the
    memory is one layer's (heads, T, T) weights.

    Raises:
        DataError: a length exceeds the model's `max_position_embeddings`.
        LolcatsError: the model has no per-layer `self_attn` (e.g. already linearized).
    """
    max_positions = getattr(model.config, "max_position_embeddings", None)
    for n in lengths:
        check_fits(n, max_positions, field="lengths")
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise LolcatsError(f"{type(model).__name__} has no model.layers[i].self_attn to measure")
    linearized = [i for i, layer in enumerate(layers) if isinstance(layer.self_attn, LolcatsAttention)]
    if linearized:
        raise LolcatsError(f"layers {linearized} are linearized: retrieval scores are measured on the "
                           "softmax teacher (pass the base model)")
    generator = PasskeyGenerator(tokenizer, haystack_path)
    device = model_device(model)
    sums = torch.zeros(len(layers), model.config.num_attention_heads)
    shares, count = [], 0
    previous = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        with evaluating(model):
            cells = [(n, d) for n in lengths for d in depths]
            for n, d in tqdm(cells, desc="retrieval scores", disable=not progress, leave=False):
                rng = random.Random(f"passkey-{seed}-{n}-{d}")
                for _ in range(trials):
                    sample = generator.sample(n, d, rng)
                    span = (sample.needle_start, sample.needle_end)
                    handles = _needle_mass_hooks(model, [span], sums)
                    try:
                        model(torch.tensor([sample.input_ids], device=device), use_cache=False)
                    finally:
                        for h in handles:
                            h.remove()
                    shares.append((span[1] - span[0]) / len(sample.input_ids))
                    count += 1
    finally:
        model.config._attn_implementation = previous
    return RetrievalScores((sums / count).numpy(), float(np.mean(shares)), list(lengths), list(depths), trials)


def resolve_softmax_layers(
    lin: LinearizeConfig, model: torch.nn.Module, tokenizer, lengths: Sequence[int], *, progress: bool = True,
) -> tuple[LinearizeConfig, RetrievalScores | None]:
    """`lin` with softmax_layers = "retrieval:K" replaced by the K best layers of `retrieval_scores`
    on the (softmax) `model`, over prompts of `lengths` that fit the model; other configs are
    returned as they are, with None."""
    k = lin.retrieval_layers()
    if k is None:
        return lin, None
    layers = len(decoder_layers(model))
    if k >= layers:
        raise LolcatsError(f"softmax_layers 'retrieval:{k}' keeps every layer of a {layers}-layer model")
    limit = getattr(model.config, "max_position_embeddings", None) or max(lengths)
    fitting = [n for n in lengths if n <= limit]
    if not fitting:
        raise LolcatsError(f"no passkey length in {list(lengths)} fits the model's {limit} positions")
    scores = retrieval_scores(model, tokenizer, fitting, progress=progress)
    return replace(lin, softmax_layers=sorted(scores.top_layers(k))), scores
