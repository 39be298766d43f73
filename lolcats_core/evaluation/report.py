"""`evaluate_model`: one JSON-able report per model; markdown tables comparing reports."""

import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import Dataset

from ..errors import ConfigError
from .code import code_pass_at_1
from .config import ZERO_SHOT_TASKS, EvalConfig
from .passkey import passkey_retrieval
from .perplexity import perplexity


def evaluate_model(
    model: torch.nn.Module,
    tokenizer,
    config: EvalConfig,
    *,
    heldout: Dataset | None = None,
    name: str = "model",
    progress: bool = True,
) -> dict:
    """Run the evaluations `config` selects and return a JSON-able report.

    Args:
        heldout: prepared rows (`input_ids`, `labels`) for perplexity, e.g. the validation
            split of `prepare_dataset`; required when `config.perplexity`.
        name: label used in figure titles and file names.

    Returns:
        {"name", "config", "parameters", "perplexity": {...}, "passkey": {...},
         "lm_eval": {task: {...}}, "zero_shot_average", "code": {task: {...}}, "figures": {...},
         "seconds": {...}}
        with the sections of the evaluations that ran.
    """
    if config.perplexity and heldout is None:
        raise ConfigError("perplexity is on but no held-out dataset was given (pass heldout=...)")
    report = {
        "name": name,
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "figures": {},
        "seconds": {},
    }
    out_dir = Path(config.output_dir) if config.output_dir else None
    if config.perplexity:
        start = time.perf_counter()
        report["perplexity"] = perplexity(
            model, heldout, batch_size=config.batch_size, max_rows=config.ppl_max_rows, progress=progress
        )
        report["seconds"]["perplexity"] = round(time.perf_counter() - start, 2)
    if config.passkey:
        start = time.perf_counter()
        result = passkey_retrieval(
            model, tokenizer, config.passkey_lengths, config.passkey_depths, trials=config.passkey_trials,
            seed=config.seed, haystack_path=config.haystack_path, progress=progress,
        )  # fmt: skip
        report["passkey"] = result.to_dict()
        if out_dir is not None:
            path = result.heatmap(out_dir / f"{name}_passkey.png", title=f"Passkey retrieval: {name}")
            report["figures"]["passkey_heatmap"] = str(path)
        report["seconds"]["passkey"] = round(time.perf_counter() - start, 2)
    if config.tasks:
        from .harness import run_lm_eval  # needs the `eval` extra (lm-eval)

        start = time.perf_counter()
        report["lm_eval"] = run_lm_eval(
            model, tokenizer, config.tasks, limit=config.limit, batch_size=config.batch_size,
            seed=config.seed, progress=progress,
        )  # fmt: skip
        zero_shot = [report["lm_eval"][t]["primary"] for t in ZERO_SHOT_TASKS if t in report["lm_eval"]]
        if len(zero_shot) == len(ZERO_SHOT_TASKS):
            report["zero_shot_average"] = sum(zero_shot) / len(zero_shot)
        report["seconds"]["lm_eval"] = round(time.perf_counter() - start, 2)
    if config.code_tasks:
        start = time.perf_counter()
        report["code"] = {
            task: code_pass_at_1(
                model, tokenizer, task, limit=config.code_limit, batch_size=config.batch_size,
                max_new_tokens=config.code_max_new_tokens, progress=progress,
            )  # fmt: skip
            for task in config.code_tasks
        }
        report["seconds"]["code"] = round(time.perf_counter() - start, 2)
    return report


def summary_metrics(report: Mapping) -> dict[str, float]:
    """Flat {metric label: value} of a report, in table order; accuracies in percent."""
    row = {}
    tasks = report.get("lm_eval", {})
    for task, entry in tasks.items():
        shots = f", {entry['num_fewshot']}-shot" if entry["num_fewshot"] else ""
        row[f"{task} ({entry['primary_metric']}{shots})"] = 100 * entry["primary"]
    if "zero_shot_average" in report:
        row["0-shot average"] = 100 * report["zero_shot_average"]
    for task, entry in report.get("code", {}).items():
        row[f"{task} (pass@1)"] = 100 * entry["pass@1"]
    if "lambada" in tasks:
        row["lambada perplexity"] = tasks["lambada"]["metrics"]["perplexity"]
    if "perplexity" in report:
        row["held-out perplexity"] = report["perplexity"]["perplexity"]
    for length, accuracy in report.get("passkey", {}).get("by_length", {}).items():
        row[f"passkey {length}"] = 100 * accuracy
    return row


def comparison_table(reports: Mapping[str, Mapping]) -> str:
    """Markdown table, one column per report (e.g. teacher and each linearized row)."""
    rows = {name: summary_metrics(r) for name, r in reports.items()}
    metrics = list(dict.fromkeys(m for row in rows.values() for m in row))
    lines = ["| metric | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for metric in metrics:
        cells = [_cell(row.get(metric)) for row in rows.values()]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_reports(teacher: Mapping, student: Mapping, names: tuple[str, str] = ("teacher", "student")) -> str:
    """Markdown teacher-vs-student table with the student's difference from the teacher."""
    a, b = summary_metrics(teacher), summary_metrics(student)
    lines = [f"| metric | {names[0]} | {names[1]} | delta |", "|---|---|---|---|"]
    for metric in dict.fromkeys([*a, *b]):
        delta = b[metric] - a[metric] if metric in a and metric in b else None
        sign = "" if delta is None or delta < 0 else "+"
        lines.append(f"| {metric} | {_cell(a.get(metric))} | {_cell(b.get(metric))} | {sign}{_cell(delta)} |")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
