"""The final summary of a linearization run: quality table, budget and wall time."""

from .evaluation import compare_reports
from .run_config import RunConfig


def _stage_row(name: str, stage: dict) -> str:
    rate = f"{stage['tokens'] / stage['seconds']:,.0f}" if stage["seconds"] and stage["tokens"] else "-"
    return f"| {name} | {stage['tokens']:,} | {stage['trainable_parameters']:,} | {stage['seconds']} | {rate} |"


def _softmax_line(cfg: RunConfig, stage1: dict) -> list[str]:
    """The layers kept as softmax, and the setting that chose them; none when all are linearized."""
    kept = stage1.get("softmax_layers") or []
    if not kept:
        return []
    return [f"layers kept as softmax: {', '.join(map(str, kept))} (softmax_layers: {cfg.linearize.softmax_layers})", ""]


def _ood_line(teacher: dict) -> list[str]:
    """Where the out-of-distribution perplexity comes from; none when it was not measured."""
    ood = teacher.get("ood_perplexity")
    if not ood:
        return []
    return [f"out-of-distribution text: {ood['source']}, {ood['rows']} rows, {ood['tokens']:,} tokens", ""]


def format_summary(cfg: RunConfig, data, stage1: dict, stage2: dict, teacher: dict, student: dict) -> str:
    """Markdown summary: teacher vs linearized metrics, tokens, trainable parameters, time."""
    lines = [
        f"## {cfg.name}: {cfg.model} linearized ({cfg.linearize.attention}, window {cfg.linearize.window}, "
        f"{cfg.linearize.feature_map})",
        "",
        *_softmax_line(cfg, stage1),
        compare_reports(teacher, student, names=("teacher", "linearized")),
        "",
        *_ood_line(teacher),
        "| stage | tokens | trainable parameters | wall time (s) | tokens/s |",
        "|---|---|---|---|---|",
        _stage_row("attention transfer", stage1),
        _stage_row("LoRA adjustment", stage2),
        "",
        f"device: {cfg.resolved_device()}, data fingerprint {data.fingerprint[:16]}, "
        f"checkpoint: {stage2['model']}",
    ]
    return "\n".join(lines)
