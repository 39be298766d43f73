"""Flat metric names (valid MLflow metric keys) from the library's evaluation reports."""

from __future__ import annotations

import math


def flat_metrics(report: dict, teacher: dict | None = None) -> dict[str, float]:
    """{name: value} of an `evaluate_model` report: `perplexity`, `ood_perplexity`,
    `passkey_<len>`, `passkey_accuracy`, `<task>_<metric>` for every lm-eval metric (with
    `_stderr`), `lambada_ppl`, `zero_shot_average`, `mmlu_letter_<A-D>` (counts). Accuracies
    stay fractions in [0, 1]. With the `teacher`'s report, `ratio_<name>` = value / teacher's
    value for every metric but standard errors and counts."""
    out: dict[str, float] = {}
    if "perplexity" in report:
        out["perplexity"] = report["perplexity"]["perplexity"]
    if "ood_perplexity" in report:
        out["ood_perplexity"] = report["ood_perplexity"]["perplexity"]
    passkey = report.get("passkey") or {}
    for length, acc in passkey.get("by_length", {}).items():
        out[f"passkey_{length}"] = acc
    if "overall" in passkey:
        out["passkey_accuracy"] = passkey["overall"]
    for task, entry in (report.get("lm_eval") or {}).items():
        for name, value in entry.get("metrics", {}).items():
            if isinstance(value, (int, float)):
                out[f"{task}_{name.replace(',', '_')}"] = value
        if task == "lambada" and "perplexity" in entry.get("metrics", {}):
            out["lambada_ppl"] = entry["metrics"]["perplexity"]
    if "zero_shot_average" in report:
        out["zero_shot_average"] = report["zero_shot_average"]
    out |= {f"mmlu_letter_{letter}": n for letter, n in (report.get("mmlu_letters") or {}).items()}
    out = {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}
    if teacher is not None:
        base = flat_metrics(teacher)
        out |= {f"ratio_{k}": v / base[k] for k, v in out.items()
                if base.get(k) and not k.endswith("_stderr") and not k.startswith("mmlu_letter_")}
    return out


def merge_reports(*reports: dict) -> dict:
    """One report from partial ones (passkey-only + lm-eval/perplexity-only)."""
    merged: dict = {"figures": {}, "seconds": {}}
    for r in reports:
        for k, v in (r or {}).items():
            if k in ("figures", "seconds"):
                merged[k].update(v)
            else:
                merged[k] = v
    return merged
