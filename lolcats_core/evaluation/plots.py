"""Figures: per-layer attention MSE bars and the passkey heat map (Agg canvas, no pyplot state)."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_attention_mse(
    mse: Mapping[int, float], path: str | Path, *, title: str = "Attention transfer: held-out MSE per layer",
    log_scale: bool = True,
) -> Path:
    """Bar plot of `{layer index: MSE}` (student vs teacher attention output), saved as PNG.

    Layers missing from `mse` (kept as softmax) are simply absent. Returns the path.
    """
    layers = sorted(mse)
    values = [float(mse[i]) for i in layers]
    fig = Figure(figsize=(max(4.0, 0.3 * len(layers) + 2), 3.2))
    ax = fig.add_subplot()
    ax.bar([str(i) for i in layers], values, color="#4C72B0")
    ax.set_xlabel("layer")
    ax.set_ylabel("MSE")
    if log_scale and values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=7)
    return _save(fig, path)


def plot_passkey_heatmap(
    accuracy: np.ndarray, lengths: Sequence[int], depths: Sequence[float], path: str | Path,
    *, title: str = "Passkey retrieval accuracy",
) -> Path:
    """Heat map of accuracy [len(depths), len(lengths)] in [0, 1] (depth down, length across)."""
    fig = Figure(figsize=(1.1 * len(lengths) + 2, 0.5 * len(depths) + 1.6))
    ax = fig.add_subplot()
    image = ax.imshow(accuracy, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for (i, j), value in np.ndenumerate(accuracy):
        ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(title)
    return _save(fig, path)


def plot_retrieval_scores(
    scores: np.ndarray, baseline: float, path: str | Path, *, title: str = "Attention mass on the passkey needle",
) -> Path:
    """Heat map of scores [layers, heads] (mass in [0, 1]) above a bar plot of each layer's best
    head, with the uniform-attention `baseline` as a dashed line."""
    layers, heads = scores.shape
    fig = Figure(figsize=(max(5.0, 0.3 * layers + 2), 0.25 * heads + 4.2))
    top, bottom = fig.subplots(2, 1, height_ratios=[heads, 8], sharex=True)
    image = top.imshow(scores.T, vmin=0.0, vmax=max(float(scores.max()), 1e-6), cmap="viridis", aspect="auto")
    top.set_ylabel("head")
    top.set_title(title)
    fig.colorbar(image, ax=[top, bottom], label="attention mass", shrink=0.6)
    bottom.bar(range(layers), scores.max(axis=1), color="#4C72B0")
    bottom.axhline(baseline, color="gray", linestyle="--", label=f"uniform attention ({baseline:.3f})")
    bottom.set_xlabel("layer")
    bottom.set_ylabel("best head")
    bottom.set_xticks(range(layers), [str(i) for i in range(layers)], fontsize=7)
    bottom.legend(fontsize=8)
    return _save(fig, path)
