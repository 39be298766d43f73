"""The `lolcats` command line: plan on the meta device, generate from a checkpoint."""

import json
import re
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from lolcats_core import LinearizeConfig, linearize, load_base_model, save_linearized
from lolcats_core.cli import main


def test_plan_llama3_8b_offline(capsys):
    assert main(["plan", "--model", "llama3-8b"]) == 0
    out = capsys.readouterr().out
    assert "layers converted 32 of 32" in out
    assert "16.78M parameters (0.209%)" in out  # the paper's ~0.2% for Llama 3 8B
    assert "32,768" in out and "4.0 GiB" in out  # KV cache of 32k tokens in bf16


def test_plan_with_kept_softmax_layers_as_json(capsys):
    assert main(["plan", "--model", "smollm2-135m", "--softmax-layers", "0,29", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"num_layers": 30' in out and '"linearized_layers": [\n  1,' in out


def test_plan_errors_name_the_problem(capsys):
    assert main(["plan", "--model", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert main(["plan", "--model", "llama3-8b", "--window", "0"]) == 2
    assert "window must be a positive number" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_streams_from_a_checkpoint(tiny_model_dir, smollm2_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model, _, _ = load_base_model(str(tiny_model_dir))
    model.resize_token_embeddings(len(tok))
    model.config.lolcats_base["fingerprint"] = ""  # resized: the base weights changed on purpose
    linearize(model, LinearizeConfig(window=4))
    # the base model on disk keeps its original vocabulary: save a full (self-contained) checkpoint
    save_linearized(model, tmp_path / "full", tokenizer=tok, merge_lora=True)
    result = subprocess.run([sys.executable, "-m", "lolcats_core.cli", "generate", "--model",
                             str(tmp_path / "full"), "--prompt", "Hello", "--max-new-tokens", "5"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) > 0


@pytest.mark.slow
def test_evaluate_a_checkpoint_without_a_config(tiny_model_dir, smollm2_dir, tmp_path, capsys):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model, _, _ = load_base_model(str(tiny_model_dir))
    model.resize_token_embeddings(len(tok))
    linearize(model, LinearizeConfig(window=4))
    save_linearized(model, tmp_path / "full", tokenizer=tok, merge_lora=True)
    argv = ["evaluate", "--model", str(tmp_path / "full"), "--set", "model=smollm2-135m",
            "--set", "eval.passkey=false", "--set", "eval.tasks=[piqa]", "--set", "eval.limit=3",
            "--set", "data.val_tokens=2048", "--set", f"data.cache_dir={tmp_path / 'data'}",
            "--set", "dtype=bfloat16"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["perplexity"]["perplexity"] > 1 and "piqa" in report["lm_eval"]
    assert (report["device"], report["dtype"]) == ("cpu", "bfloat16")  # the config's, not a fixed one


def test_summary_stage_rows_give_the_throughput():
    from lolcats_core.summary import _stage_row

    trained = {"tokens": 20_000_000, "trainable_parameters": 921_600, "seconds": 250.0}
    assert _stage_row("LoRA adjustment", trained) == "| LoRA adjustment | 20,000,000 | 921,600 | 250.0 | 80,000 |"
    skipped = {"tokens": 0, "trainable_parameters": 0, "seconds": 0.0}
    assert _stage_row("attention transfer", skipped).endswith("| 0.0 | - |")


def test_summary_names_the_layers_kept_as_softmax():
    from lolcats_core.run_config import load_run_config
    from lolcats_core.summary import _softmax_line

    cfg = load_run_config("configs/smollm2-135m.yaml", "gpu-passkey")
    assert _softmax_line(cfg, {"softmax_layers": [18, 20, 21, 23]}) == [
        "layers kept as softmax: 18, 20, 21, 23 (softmax_layers: retrieval:4)", ""]
    assert _softmax_line(cfg, {"softmax_layers": []}) == []


def test_plan_llama3_70b_on_8_gpus_prints_the_layer_blocks(capsys):
    assert main(["plan", "--model", "llama3-70b", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "llama3-70b: 80 layers, 70.64B parameters" in out
    blocks = [line.split()[1] for line in out.splitlines() if re.fullmatch(r"\s+\d+\s+\d+-\d+\s.*GiB.*", line)]
    assert blocks == [f"{10 * i}-{10 * i + 9}" for i in range(8)]
    assert "stage 2, data parallel" in out and "x 8 x grad_accum" in out
    assert re.search(r"DDP\s+132\.\d GiB", out) and re.search(r"FSDP2\s+16\.\d GiB\s+1/8 of the weights", out), out


def test_stage2_auto_shards_when_every_weight_takes_more_than_half_a_gpu():
    from lolcats_core.plan import stage2_parallel

    gib = 2**30
    assert stage2_parallel("auto", 132 * gib, 141 * gib) == "fsdp"  # Llama 3 70B on an H200
    assert stage2_parallel("auto", 16 * gib, 80 * gib) == "ddp"  # Llama 3 8B on an 80 GB GPU
    assert stage2_parallel("auto", 132 * gib, None) == "ddp"  # CPU processes
    assert stage2_parallel("fsdp", 1, None) == "fsdp" and stage2_parallel("ddp", 132 * gib, 141 * gib) == "ddp"
