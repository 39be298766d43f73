"""`evaluate_model`: one JSON-able report per model; markdown tables comparing reports."""

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import Dataset

from ..errors import ConfigError
from .code import code_pass_at_1
from .config import ZERO_SHOT_TASKS, EvalConfig
from .ood import SOURCE as OOD_SOURCE
from .ood import ood_rows
from .passkey import passkey_retrieval
from .perplexity import perplexity

logger = logging.getLogger(__name__)
LEGEND = ("above 1 is better for accuracies, below 1 for perplexities; ± one standard error; tie: the "
          "difference is at most two standard errors, 2 * sqrt(se_a^2 + se_b^2), or for code tasks "
          "solved on the same problems two standard errors of the per-problem (paired) differences")


def evaluate_model(
    model: torch.nn.Module,
    tokenizer,
    config: EvalConfig,
    *,
    heldout: Dataset | None = None,
    name: str = "model",
    seq_len: int | None = None,
    progress: bool = True,
) -> dict:
    """Run the evaluations `config` selects and return a JSON-able report.

    Args:
        heldout: prepared rows (`input_ids`, `labels`) for perplexity, e.g. the validation
            split of `prepare_dataset`; required when `config.perplexity`.
        name: label used in figure titles and file names.
        seq_len: tokens per out-of-distribution row (default: the held-out rows' length; with
            neither, `config.ood_perplexity` is skipped with a warning).

    Returns:
        {"name", "config", "parameters", "device", "dtype", "perplexity": {...}, "passkey": {...},
         "lm_eval": {task: {...}}, "zero_shot_average", "code": {task: {...}}, "figures": {...},
         "seconds": {...}}
        with the sections of the evaluations that ran; "ood_perplexity" is like "perplexity"
        with the text's "source", "mmlu_letters" counts MMLU's predicted answer letters.
    """
    if config.perplexity and heldout is None:
        raise ConfigError("perplexity is on but no held-out dataset was given (pass heldout=...)")
    if heldout is not None and len(heldout):
        seq_len = seq_len or len(heldout[0]["input_ids"])
    if config.ood_perplexity and not seq_len:
        logger.warning("no out-of-distribution perplexity: the row length is unknown (pass seq_len=... or heldout=...)")
    report = {
        "name": name,
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": _device_name(model),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
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
    if config.ood_perplexity and seq_len:
        start = time.perf_counter()
        # as many rows as the held-out perplexity reads (all of Shakespeare is ~6k rows of 1024)
        held = len(heldout) if heldout is not None and len(heldout) else None
        bound = min(x for x in (config.ppl_max_rows, held) if x) if (config.ppl_max_rows or held) else None
        rows = ood_rows(tokenizer, seq_len, bound)
        scores = perplexity(model, rows, batch_size=config.batch_size, progress=progress)
        report["ood_perplexity"] = {**scores, "source": OOD_SOURCE}
        report["seconds"]["ood_perplexity"] = round(time.perf_counter() - start, 2)
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
        if "mmlu" in report["lm_eval"]:
            report["mmlu_letters"] = report["lm_eval"]["mmlu"].pop("letters")
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


def _device_name(model: torch.nn.Module) -> str:
    """Where the model's weights are: "cpu", or "cuda:0 (NVIDIA H200)"."""
    device = next(model.parameters()).device
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def summary_metrics(report: Mapping, teacher: Mapping | None = None) -> dict[str, float]:
    """Flat {metric label: value} of a report, in table order; accuracies in percent, MMLU's
    predicted letters as counts (ints, "mmlu answers A", ...).

    With `teacher`, every metric (not count) of both reports also gets "<label> student/teacher",
    the student's value over the teacher's: above 1 is better for accuracies, below 1 for
    perplexities.
    """
    row = {}
    tasks = report.get("lm_eval", {})
    for task, entry in tasks.items():
        row[_task_label(task, entry)] = 100 * entry["primary"]
    if "zero_shot_average" in report:
        row["0-shot average"] = 100 * report["zero_shot_average"]
    for task, entry in report.get("code", {}).items():
        row[f"{task} (pass@1)"] = 100 * entry["pass@1"]
    if "lambada" in tasks:
        row["lambada perplexity"] = tasks["lambada"]["metrics"]["perplexity"]
    if "perplexity" in report:
        row["held-out perplexity"] = report["perplexity"]["perplexity"]
    if "ood_perplexity" in report:
        row["out-of-distribution perplexity"] = report["ood_perplexity"]["perplexity"]
    for length, accuracy in report.get("passkey", {}).get("by_length", {}).items():
        row[f"passkey {length}"] = 100 * accuracy
    for letter, count in report.get("mmlu_letters", {}).items():
        row[f"mmlu answers {letter}"] = count
    if teacher is not None:
        row |= {f"{label} student/teacher": ratio for label, ratio in recovery(teacher, report).items()}
    return row


def summary_stderrs(report: Mapping) -> dict[str, float]:
    """Standard errors of the `summary_metrics` entries that have one, in the same units:
    lm-eval's primary metrics, the 0-shot average (of independent tasks), code pass@1 and
    passkey accuracy per length (over its trials x depths)."""
    errors = {}
    tasks = report.get("lm_eval", {})
    for task, entry in tasks.items():
        if (se := entry["metrics"].get(f"{entry['primary_metric']}_stderr")) is not None:
            errors[_task_label(task, entry)] = 100 * se
    zero_shot = [errors.get(_task_label(t, tasks[t])) for t in ZERO_SHOT_TASKS if t in tasks]
    if "zero_shot_average" in report and None not in zero_shot:
        errors["0-shot average"] = math.sqrt(sum(se * se for se in zero_shot)) / len(zero_shot)
    for task, entry in report.get("code", {}).items():
        if "stderr" in entry:
            errors[f"{task} (pass@1)"] = 100 * entry["stderr"]
    passkey = report.get("passkey", {})
    n = passkey.get("trials", 0) * len(passkey.get("depths", []))
    if n > 1:
        for length, p in passkey.get("by_length", {}).items():
            errors[f"passkey {length}"] = 100 * math.sqrt(p * (1 - p) / (n - 1))  # lm-eval's mean_stderr
    return errors


def recovery(teacher: Mapping, student: Mapping) -> dict[str, float]:
    """{label: student value / teacher value} for the metrics (not counts) both reports have."""
    a, b = summary_metrics(teacher), summary_metrics(student)
    return {m: b[m] / a[m] for m in a if m in b and not isinstance(a[m], int) and a[m]}


def _task_label(task: str, entry: Mapping) -> str:
    shots = f", {entry['num_fewshot']}-shot" if entry["num_fewshot"] else ""
    return f"{task} ({entry['primary_metric']}{shots})"


def paired_stderrs(a: Mapping, b: Mapping) -> dict[str, float]:
    """Standard errors (percentage points) of b - a for the code tasks both reports ran on the
    same problems: the spread of the per-problem differences (passed in b minus passed in a)
    over sqrt(problems). Two models failing and passing mostly the same problems differ
    with far less noise than their two independent standard errors suggest."""
    errors = {}
    for task, entry in b.get("code", {}).items():
        other = a.get("code", {}).get(task, {})
        mine = {p["task_id"]: p["status"] == "passed" for p in entry.get("problems", [])}
        theirs = {p["task_id"]: p["status"] == "passed" for p in other.get("problems", [])}
        if len(mine) < 2 or mine.keys() != theirs.keys():
            continue
        diffs = [int(mine[k]) - int(theirs[k]) for k in mine]
        mean = sum(diffs) / len(diffs)
        var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
        errors[f"{task} (pass@1)"] = 100 * math.sqrt(var / len(diffs))
    return errors


def comparison_table(reports: Mapping[str, Mapping]) -> str:
    """Markdown table, one column per report (e.g. teacher and each linearized row), values
    ± their standard error; every column after the first also shows its ratio to the first
    column's value and "tie" where the two differ by at most two standard errors (paired for
    code tasks on the same problems, `paired_stderrs`)."""
    rows = {name: summary_metrics(r) for name, r in reports.items()}
    errors = {name: summary_stderrs(r) for name, r in reports.items()}
    first = next(iter(reports))
    ratios = {name: recovery(reports[first], r) for name, r in reports.items()}
    paired = {name: paired_stderrs(reports[first], r) for name, r in reports.items()}
    metrics = list(dict.fromkeys(m for row in rows.values() for m in row))
    lines = ["| metric | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for metric in metrics:
        cells = []
        for name, row in rows.items():
            cell = _cell(row.get(metric), errors[name].get(metric))
            if name != first and metric in ratios[name]:
                tie = ", tie" if _tie(metric, rows[first], row, errors[first], errors[name], paired[name]) else ""
                cell += f" ({ratios[name][metric]:.3f}x{tie})"
            cells.append(cell)
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", f"(r x): the value over {first}'s; {LEGEND}"])


def compare_reports(teacher: Mapping, student: Mapping, names: tuple[str, str] = ("teacher", "student")) -> str:
    """Markdown teacher-vs-student table: values ± their standard error, the student's
    difference from the teacher ("tie" when within two standard errors) and the ratio
    student/teacher."""
    a, b = summary_metrics(teacher), summary_metrics(student)
    se_a, se_b = summary_stderrs(teacher), summary_stderrs(student)
    paired = paired_stderrs(teacher, student)
    ratios = recovery(teacher, student)
    lines = [f"| metric | {names[0]} | {names[1]} | delta | {names[1]}/{names[0]} |", "|---|---|---|---|---|"]
    for metric in dict.fromkeys([*a, *b]):
        delta = b[metric] - a[metric] if metric in a and metric in b else None
        sign = "" if delta is None or delta < 0 else "+"
        tie = " (tie)" if _tie(metric, a, b, se_a, se_b, paired) else ""
        ratio = "-" if metric not in ratios else f"{ratios[metric]:.3f}"
        values = f"{_cell(a.get(metric), se_a.get(metric))} | {_cell(b.get(metric), se_b.get(metric))}"
        lines.append(f"| {metric} | {values} | {sign}{_cell(delta)}{tie} | {ratio} |")
    return "\n".join([*lines, "", f"{names[1]}/{names[0]}: ratio of the values; {LEGEND}"])


def _tie(metric: str, a: Mapping, b: Mapping, se_a: Mapping, se_b: Mapping, paired: Mapping) -> bool:
    """The values differ by at most two standard errors of their difference: the paired one
    where there is one, else both values' combined."""
    if metric in paired:
        return abs(b[metric] - a[metric]) <= 2 * paired[metric]
    if metric not in se_a or metric not in se_b:
        return False
    return abs(b[metric] - a[metric]) <= 2 * math.hypot(se_a[metric], se_b[metric])


def _cell(value: float | None, stderr: float | None = None) -> str:
    if value is None or isinstance(value, int):
        return "-" if value is None else str(value)
    return f"{value:.2f}" + ("" if stderr is None else f" ± {stderr:.2f}")
