"""benchmarks/scale.py: the tiny CPU path runs both real stages end to end and reports sane
numbers; the FLOP count agrees with the model's parameter count; the peak table."""

import json
import sys
from pathlib import Path

import pytest

from lolcats_core.presets import model_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import scale  # noqa: E402


def test_tiny_rehearsal_end_to_end(tmp_path):
    out = tmp_path / "out"
    # seq 72 > window 64: the linear term runs too
    res = scale.main(["--model", "llama3-8b", "--device", "cpu", "--tiny", "--seq-len", "72", "--micro-batch", "1",
                      "--grad-accum", "2", "--steps", "1", "--warmup", "0", "--peak-tflops", "0.5",
                      "--work", str(tmp_path), "--out", str(out)])
    on_disk = json.loads((out / "scale-llama3-8b-tiny.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert res["shape"]["layers"] == 2 and res["shape"]["model_type"] == "llama"
    assert res["linearized_layers"] == 2 and res["kernels"] == "torch" and res["dtype"] == "float32"
    assert res["config"].endswith("configs/llama3-8b.yaml") and res["command"].startswith("python benchmarks/scale.py")
    assert set(res["stages"]) == {"1", "2"}
    for number, r in res["stages"].items():
        assert r["tokens_per_step"] == 1 * 72 * 2
        assert r["steps"] == 1 and len(r["step_seconds"]) == 1 and all(t > 0 for t in r["step_seconds"])
        assert r["tokens_per_s"] > 0 and r["seconds_per_step"] > 0
        assert r["tokens_per_s"] * r["seconds_per_step"] == pytest.approx(r["tokens_per_step"])
        assert "peak_gpu_memory_bytes" in r and r["peak_gpu_memory_bytes"] is None  # no GPU here
        # the config's 20M-token budget in whole steps, as the pipeline trains it
        assert r["budget_tokens_config"] == 20_000_000
        assert r["budget_steps"] == 20_000_000 // 144 and r["budget_tokens"] == r["budget_steps"] * 144
        assert r["projected_seconds"] == pytest.approx(r["budget_tokens"] / r["tokens_per_s"])
        assert r["flops_per_token"] > 0
        assert r["achieved_tflops_per_gpu"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"] / 1e12)
        assert r["fraction_of_peak"] == pytest.approx(r["achieved_tflops_per_gpu"] / 0.5)
        assert r["trainable_parameters"] > 0
    assert res["stages"]["2"]["trainable_parameters"] == res["lora_parameters"]
    assert res["projected_total_seconds"] == pytest.approx(
        sum(r["projected_seconds"] for r in res["stages"].values()))
    assert res["peak_host_rss_bytes"] > 0
    table = (out / "scale-llama3-8b-tiny.md").read_text()
    assert res["device_name"] in table and res["command"] in table and table.count("\n| ") == 3  # header and two stages


def test_flops_match_the_parameter_count():
    """Dense weights dominate at the 8B shape: stage 2 ~ 4 x (parameters outside the embedding)
    + 6 x LoRA, stage 1 ~ 2 x (decoder layers' parameters), attention adding a few percent."""
    import torch

    from lolcats_core.config import LinearizeConfig

    cfg = model_config("llama3-8b")
    shape = scale.shape_of(cfg)
    params = scale.parameter_count(cfg, torch.bfloat16)
    embed = shape["vocab"] * shape["hidden"]
    assert params == pytest.approx(8.03e9, rel=0.01)
    lora = 8 * 32 * (4096 + 4096 + 2 * (4096 + 1024) + 4096 + 4096)
    f = scale.flops_per_token(shape, LinearizeConfig(), 32, 1024, lora)
    assert 1.0 < f["2"] / (4 * (params - embed) + 6 * lora) < 1.03
    assert 1.0 < f["1"] / (2 * (params - 2 * embed)) < 1.08
    # the attention terms grow with the sequence; the softmax teacher in every layer of stage 1
    longer = scale.flops_per_token(shape, LinearizeConfig(), 32, 4096, lora)
    assert longer["1"] > f["1"] and longer["2"] > f["2"]


def test_peak_table():
    assert scale.peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert scale.peak_tflops("NVIDIA H100 PCIe") == 756
    assert scale.peak_tflops("NVIDIA H200") == 989
    assert scale.peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert scale.peak_tflops("Some Future GPU") is None
    assert scale.peak_tflops("NVIDIA H200", override=123.0) == 123.0


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_rehearsal_under_torchrun_reports_the_whole_job(tmp_path, parallel):
    """2 gloo ranks: stage 1 block-wise (the same step), stage 2 data parallel (twice the
    tokens per step); one record from rank 0 with every rank's peak. Each rank builds only
    what its stage needs: its block for stage 1; for stage 2 everything (ddp) or, sharded,
    everything on rank 0 and nothing elsewhere."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           str(root / "benchmarks" / "scale.py"), "--model", "llama3-8b", "--device", "cpu", "--tiny",
           "--seq-len", "72", "--micro-batch", "1", "--grad-accum", "2", "--steps", "1", "--warmup", "0",
           "--work", str(tmp_path), "--out", str(tmp_path / "out"), "--parallel", parallel]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "scale-llama3-8b-tiny.json").read_text())
    assert res["ranks"] == 2 and res["stage2_parallel"] == parallel
    one, two = res["stages"]["1"], res["stages"]["2"]
    assert one["tokens_per_step"] == 72 * 2 and two["tokens_per_step"] == 72 * 2 * 2
    assert two["budget_steps"] == 20_000_000 // (72 * 4)
    assert one["warmup_steps"] == 2 and two["warmup_steps"] == 0  # the block-wise pipeline fills first
    for r in (one, two):  # the job's FLOPs over its 2 GPUs
        assert r["achieved_tflops_per_gpu"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"] / 2 / 1e12)
    assert len(two["peak_gpu_memory_bytes_per_rank"]) == 2
    assert f"2 ranks (stage 2 {parallel})" in (tmp_path / "out" / "scale-llama3-8b-tiny.md").read_text()
    block = one["built_parameters_per_rank"]  # a layer each, the embeddings on rank 0 only
    assert block[0] > block[1] > 0 and sum(block) < 1.2 * res["parameters"]
    full = two["built_parameters_per_rank"]
    assert full == ([full[0], full[0]] if parallel == "ddp" else [full[0], 0]) and full[0] > res["parameters"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the shared work folder is gone
