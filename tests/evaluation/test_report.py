"""evaluate_model reports, comparison tables and the attention-MSE figure."""

import json

import pytest
from datasets import Dataset

from lolcats_core.errors import ConfigError
from lolcats_core.evaluation import EvalConfig, compare_reports, comparison_table, evaluate_model, plot_attention_mse


@pytest.fixture
def heldout(tokenizer):
    ids = tokenizer("The quick brown fox jumps over the lazy dog. " * 20)["input_ids"][:128]
    return Dataset.from_dict({"input_ids": [ids[:64], ids[64:]], "labels": [ids[:64], ids[64:]]})


def test_report_is_json_and_tables_compare_models(tiny_lm, tokenizer, heldout, tmp_path):
    config = EvalConfig(passkey_lengths=[200], passkey_depths=[0.0, 1.0], passkey_trials=1, ppl_max_rows=2,
                        tasks=["piqa", "winogrande"], limit=3, output_dir=str(tmp_path))  # fmt: skip
    report = evaluate_model(tiny_lm, tokenizer, config, heldout=heldout, name="tiny", progress=False)
    assert json.loads(json.dumps(report))["name"] == "tiny"
    assert report["perplexity"]["tokens"] == 126 and report["ood_perplexity"]["tokens"] == 126
    assert set(report["lm_eval"]) == {"piqa", "winogrande"} and "zero_shot_average" not in report
    assert (tmp_path / "tiny_passkey.png").is_file()

    student = json.loads(json.dumps(report))
    student["perplexity"]["perplexity"] *= 1.5
    table = compare_reports(report, student)
    row = next(line for line in table.splitlines() if line.startswith("| held-out perplexity"))
    ppl = report["perplexity"]["perplexity"]
    assert row == f"| held-out perplexity | {ppl:.2f} | {1.5 * ppl:.2f} | +{0.5 * ppl:.2f} | 1.500 |"
    assert "| piqa (acc) |" in table and "| passkey 200 |" in table and "| out-of-distribution perplexity |" in table
    wide = comparison_table({"teacher": report, "lolcats": student, "t2r": student})
    assert wide.splitlines()[0] == "| metric | teacher | lolcats | t2r |"


def test_perplexity_needs_heldout_data(tiny_lm, tokenizer):
    with pytest.raises(ConfigError, match="no held-out dataset"):
        evaluate_model(tiny_lm, tokenizer, EvalConfig(passkey=False, tasks=[]), progress=False)


def test_eval_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"tasks: unknown task\(s\) \['boolq'\]"):
        EvalConfig(tasks=["boolq"])
    with pytest.raises(ConfigError, match="passkey_depths"):
        EvalConfig(passkey_depths=[1.5])


def test_attention_mse_bar_plot(tmp_path):
    path = plot_attention_mse({0: 1e-3, 1: 4e-2, 7: 2e-1}, tmp_path / "figs" / "mse.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
