"""Micro-batches sized from the GPU's memory (`lolcats_core.memory`), checked with made-up GPU
memory figures on the CPU; the CPU's own runs keep their configured batches."""

from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from lolcats_core.errors import ConfigError
from lolcats_core.memory import SPLIT, USABLE, fit_run_config, footprints, stage_as_run
from lolcats_core.run_config import StageConfig, load_run_config
from lolcats_core.training import TrainConfig

GIB = 2**30
H200, H100 = int(139.8 * GIB), int(79.2 * GIB)  # torch.cuda.get_device_properties(...).total_memory


def test_the_estimate_matches_the_h200_measurement_of_the_plain_head():
    """The count with the head as it was (whole fp32 logits: log-probabilities, their gradient
    and the logits' gradient, 12 bytes per logit at the backward's start) against the 94 GiB
    measured for Llama 3 8B, stage 2 at 8 x 1024 tokens (shipped LoRA, random weights, H200)."""
    cfg = load_run_config("configs/llama3-8b.yaml", "gpu")
    feet = footprints("llama3-8b", cfg.linearize, cfg.stage2.lora, torch.bfloat16)
    tokens, vocab, hidden = 8 * 1024, 128_256, 4096
    chunked = feet[(2, False)].peak(tokens)
    plain = chunked - feet[(2, False)].fixed - 2 * 2 * hidden * tokens + 12 * vocab * tokens
    assert plain / GIB == pytest.approx(94, rel=0.05)
    assert chunked < plain - 10 * GIB


@pytest.mark.parametrize("memory,micro_batch,checkpointing", [
    (H200, 8, False),  # the whole step in one micro-batch
    (H100, 4, False),  # 8 rows do not fit an 80 GB card; 4 x 1024 tokens is enough not to recompute
    (40 * GIB, 8, True),  # 2 x 1024 would fit: too small, recompute the layers instead
])
def test_auto_micro_batch_fits_the_gpu_and_keeps_the_rows_per_step(memory, micro_batch, checkpointing):
    cfg = load_run_config("configs/llama3-8b.yaml", "gpu")
    assert cfg.stage2.micro_batch == "auto" and cfg.stage2.batch_size * cfg.stage2.train.grad_accum == 8
    out, fits = fit_run_config(cfg, memory)
    s2 = out.stage2
    assert (s2.batch_size, s2.train.grad_accum, s2.train.gradient_checkpointing) == (micro_batch, 8 // micro_batch,
                                                                                    checkpointing)
    assert s2.micro_batch is None and out.stage1.batch_size == 8 and out.stage1.train.grad_accum == 1
    assert all(f.fits and f.peak_bytes <= USABLE * memory for f in fits.values())
    assert out.stage2.steps_for(1024) == cfg.stage2.steps_for(1024)
    without = footprints("llama3-8b", cfg.linearize, cfg.stage2.lora, torch.bfloat16)[(2, False)]
    if micro_batch < 8:  # twice the rows would not have fitted
        assert without.peak(2 * micro_batch * 1024) > USABLE * memory
    if checkpointing:  # while a smaller micro-batch would have, without recomputing
        assert without.peak(2 * 1024) <= USABLE * memory


def test_nothing_fits_falls_back_to_one_checkpointed_row():
    cfg = load_run_config("configs/llama3-8b.yaml", "gpu")
    fit = fit_run_config(cfg, 16 * GIB)[1][2]
    assert (fit.micro_batch, fit.checkpointing, fit.fits) == (1, True, False)
    assert "DOES NOT FIT" in fit.describe()


def test_the_cpu_keeps_the_configured_batches(tmp_path):
    cfg = load_run_config("configs/llama3-8b.yaml", "gpu", ["device=cpu"])
    out, fits = fit_run_config(cfg, None)
    s2 = out.stage2
    assert (s2.batch_size, s2.train.grad_accum, s2.train.gradient_checkpointing) == (1, 8, False)
    assert fits[2].peak_bytes is None
    plain = load_run_config("configs/smollm2-135m.yaml", "cpu-smoke")
    assert stage_as_run(plain, 2, tmp_path) is plain.stage2  # nothing to decide: not even the model's shape is read


def test_a_resumed_auto_stage_keeps_its_micro_batch_on_another_gpu(tmp_path, monkeypatch):
    from lolcats_core import memory

    cfg = load_run_config("configs/llama3-8b.yaml", "gpu")
    monkeypatch.setattr(memory, "device_memory", lambda device: H200)
    monkeypatch.setattr(cfg, "device", "cpu")  # resolved_device() on this machine; the figure above decides
    assert stage_as_run(cfg, 2, tmp_path).batch_size == 8
    assert (tmp_path / SPLIT).is_file()
    monkeypatch.setattr(memory, "device_memory", lambda device: H100)  # resumed on an 80 GB card
    resumed = stage_as_run(cfg, 2, tmp_path)
    assert (resumed.batch_size, resumed.train.grad_accum, resumed.train.gradient_checkpointing) == (8, 1, True)
    assert stage_as_run(cfg, 2, tmp_path / "fresh").batch_size == 4


def test_artifact_names_do_not_depend_on_the_gpu():
    """A stage's directory is named by its config as written (so the same run is found from
    any machine), and configs without the new settings keep the fingerprints they had."""
    settings = StageConfig(batch_size=2).artifact_settings()
    assert set(settings) == {"enabled", "batch_size", "tokens", "train", "lora"}
    assert set(settings["train"]) == set(asdict(TrainConfig())) - {"compile", "gradient_checkpointing"}
    cfg = load_run_config("configs/llama3-8b.yaml", "gpu")
    assert cfg.stage2.artifact_settings() == replace(cfg.stage2, train=replace(
        cfg.stage2.train, compile=False, gradient_checkpointing=True)).artifact_settings()
    assert cfg.stage2.artifact_settings()["micro_batch"] == "auto"


def test_explicit_micro_batch_and_invalid_settings():
    cfg = load_run_config("configs/llama3-8b.yaml", None, ["stage2.micro_batch=2"])
    s2 = fit_run_config(cfg, None)[0].stage2
    assert (s2.batch_size, s2.train.grad_accum) == (2, 4)
    with pytest.raises(ConfigError, match="micro_batch must divide the 8 rows"):
        load_run_config("configs/llama3-8b.yaml", None, ["stage2.micro_batch=3"])
    with pytest.raises(ConfigError, match="stage1.gradient_checkpointing: stage 1"):
        load_run_config("configs/llama3-8b.yaml", None, ["stage1.gradient_checkpointing=true"])
    with pytest.raises(ConfigError, match="stage2.micro_batch: expected"):
        load_run_config("configs/llama3-8b.yaml", None, ["stage2.micro_batch=big"])


def test_lolcats_plan_prints_the_split(capsys):
    from lolcats_core.cli import main

    assert main(["plan", "--config", "configs/llama3-8b.yaml", "--profile", "gpu", "--gpu-memory", "79.2"]) == 0
    out = capsys.readouterr().out
    assert "stage 2: micro-batch 4 x 1024 tokens, grad_accum 2, checkpointing off" in out
    assert "of 67.3 GiB usable" in out
    assert main(["plan"]) == 2 and "give --model PRESET or --config FILE" in capsys.readouterr().err


@pytest.mark.slow  # prepares data, trains and saves both stages: about 15 s
def test_the_pipeline_runs_each_stage_as_fitted(tiny_base, tmp_path, monkeypatch):
    """With a made-up GPU whose memory takes stage 2's two rows only with recomputed layers, the
    pipeline's stages run (on the CPU) the micro-batches and checkpointing the plan picks."""
    import json

    from lolcats_core import memory, pipeline
    from lolcats_core.training import execution
    from service.tiny import tiny_tree

    base, data_dir = tiny_base
    tree = tiny_tree("fit", base, tmp_path, max_steps=1, batch_size=1, grad_accum=2, micro_batch="auto")
    tree["data"]["cache_dir"] = str(data_dir)
    tree["stage2"] |= {"batch_size": 1, "grad_accum": 2, "max_steps": 1, "micro_batch": "auto",
                       "gradient_checkpointing": "auto"}
    cfg = load_run_config(tree=tree)
    feet = footprints(cfg.model, cfg.linearize, cfg.stage2.lora, torch.float32)
    gpu = int((feet[(2, True)].peak(128) + feet[(2, False)].peak(128)) / 2 / USABLE)
    monkeypatch.setattr(memory, "device_memory", lambda device: gpu)
    checkpointing = []
    real = execution.checkpointed_layers
    monkeypatch.setattr(execution, "checkpointed_layers", lambda m, on: checkpointing.append(on) or real(m, on))

    data = pipeline.prepare_data(cfg)
    stage1 = pipeline.attention_transfer_step(cfg, data)
    stage2 = pipeline.lora_step(cfg, data, stage1)
    assert checkpointing == [True]
    assert stage1["tokens"] == stage2["tokens"] == 2 * 64
    for record in (stage1, stage2):
        assert json.loads((Path(record["dir"]) / "trainer" / SPLIT).read_text()) == {"micro_batch": 2}
