"""Every shipped run config loads and validates under each of its profiles."""

from pathlib import Path

import pytest

from lolcats_core.run_config import load_run_config, read_yaml

CONFIGS = sorted(Path(__file__).resolve().parents[2].glob("configs/**/*.yaml"))
CASES = [(path, profile) for path in CONFIGS for profile in [None, *read_yaml(path).get("profiles", {})]]


@pytest.mark.parametrize("path,profile", CASES, ids=lambda x: getattr(x, "name", x))
def test_shipped_configs_validate(path, profile):
    cfg = load_run_config(path, profile)
    assert cfg.stage1.steps_for(cfg.data.seq_len) > 0 and cfg.stage2.steps_for(cfg.data.seq_len) > 0
    assert all(n <= cfg.data.seq_len for n in cfg.data.passkey_lengths)


def test_passkey_profile_is_the_measured_recipe():
    """docs/results.md: rows as long as the longest passkey prompt, the teacher's retrieval layers
    kept as softmax, the gpu profile's tokens per step and budget."""
    passkey = load_run_config("configs/ablations/lolcats.yaml", "gpu-passkey")
    gpu = load_run_config("configs/ablations/lolcats.yaml", "gpu")
    assert passkey.linearize.softmax_layers == "retrieval:4"
    assert passkey.data.seq_len == max(passkey.data.passkey_lengths) == max(passkey.eval.passkey_lengths) == 8192
    for stage in ("stage1", "stage2"):
        a, b = getattr(passkey, stage), getattr(gpu, stage)
        assert a.batch_size * a.train.grad_accum * 8192 == b.batch_size * b.train.grad_accum * 1024
        assert a.tokens == b.tokens == 20_000_000


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_profile_without_a_gpu_fails_fast(tmp_path, capsys):
    from lolcats_core.cli import main
    from lolcats_core.errors import ConfigError

    cfg = load_run_config("configs/smollm2-135m.yaml", "gpu")
    with pytest.raises(ConfigError, match="no CUDA GPU is visible.*cpu-smoke"):
        cfg.resolved_device()
    assert load_run_config("configs/smollm2-135m.yaml", "gpu", ["device=cpu"]).resolved_device() == "cpu"
    argv = ["linearize", "--config", "configs/smollm2-135m.yaml", "--profile", "gpu",
            "--set", f"output_dir={tmp_path}", "--set", f"data.cache_dir={tmp_path / 'data'}"]
    assert main(argv) != 0
    assert "no CUDA GPU is visible" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # nothing prepared


SMOLLM2 = Path(__file__).resolve().parents[2] / "configs" / "smollm2-135m.yaml"


def test_numeric_text_is_read_as_the_fields_number(tmp_path):
    """PyYAML reads `1e-3` as text: from a file and from --set it becomes the float field's number."""
    path = tmp_path / "lr.yaml"
    path.write_text(f"extends: {SMOLLM2}\nstage1:\n  lr: 1e-3\n  max_steps: '7'\n")
    cfg = load_run_config(path)
    assert cfg.stage1.train.lr == 0.001 and isinstance(cfg.stage1.train.lr, float)
    assert cfg.stage1.train.max_steps == 7
    assert load_run_config(SMOLLM2, None, ["stage2.lr=1e-3"]).stage2.train.lr == 0.001
    # a value valid as given is kept as given (an int lr keeps today's artifact fingerprints)
    assert repr(load_run_config(SMOLLM2, None, ["stage1.lr=1"]).stage1.train.lr) == "1"
    assert load_run_config(SMOLLM2, None, ["service.task_timeout_s=1e3"]).service.task_timeout_s == 1000.0


@pytest.mark.parametrize("override,message", [
    ("stage1.lr=abc", "stage1.lr: expected float, got 'abc'"),
    ("stage2.lora.r=1.5", "stage2.lora.r: expected int, got 1.5"),
    ("eval.passkey_lengths=[1024, x]", r"eval.passkey_lengths: expected list\[int\], got \[1024, 'x'\]"),
    ("dtype=float8", "dtype: expected Literal.*'bfloat16'.*got 'float8'"),
    ("stage1=3", "stage1: expected a mapping of settings, got 3"),
    ("service.task_timeout_s=0", "service.task_timeout_s must lie between 1 and 604800 s, got 0"),
    ("gate.champion_tolerance=x", "gate.champion_tolerance: expected a number >= 0, got 'x'"),
])
def test_wrong_types_name_the_path_the_type_and_the_value(override, message):
    from lolcats_core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_run_config(SMOLLM2, None, [override])


@pytest.mark.parametrize("override,path,section", [
    ("stage1.train.lr=0.001", "stage1.train", "stage1"),
    ("stage2.lora.rank=4", "stage2.lora.rank", "stage2.lora"),
    ("linearize.feature_maps=t2r", "linearize.feature_maps", "linearize"),
    ("foo=1", "foo", "the config"),
    ("service.timeout=5", "service.timeout", "service"),
])
def test_unknown_keys_at_any_depth_name_the_path_and_the_valid_keys(override, path, section):
    from lolcats_core.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_run_config(SMOLLM2, None, [override])
    assert f"unknown setting(s) ['{path}']; valid keys of {section}: [" in str(e.value)
    if section == "stage1":  # stage sections hold their training settings flat, without lora
        assert "'lr'" in str(e.value) and "'batch_size'" in str(e.value) and "'lora'" not in str(e.value)


def test_the_model_must_exist_before_anything_loads(tmp_path):
    from lolcats_core.errors import ConfigError

    for missing in ("/nonexistent", str(tmp_path / "model"), str(tmp_path / "model.gguf"), "no-preset"):
        with pytest.raises(ConfigError, match=f"model: '{missing}' is not a preset .*owner/name"):
            load_run_config(SMOLLM2, None, [f"model={missing}"])
    (tmp_path / "model").mkdir()
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    for model in ("smollm2-135m", str(tmp_path / "model"), str(tmp_path / "model.gguf"), "HuggingFaceTB/SmolLM2-135M"):
        assert load_run_config(SMOLLM2, None, [f"model={model}"]).model == model


def test_distributed_section_is_typed_and_names_stage2_by_its_ranks():
    from lolcats_core.errors import ConfigError
    from lolcats_core.pipeline import stage2_dir

    cfg = load_run_config(SMOLLM2, None, ["distributed.gpus=2", "distributed.stage2=fsdp"])
    assert (cfg.distributed.world_size, cfg.distributed.stage2) == (2, "fsdp")
    with pytest.raises(ConfigError, match="distributed.stage2: expected Literal"):
        load_run_config(SMOLLM2, None, ["distributed.stage2=zero"])
    with pytest.raises(ConfigError, match="distributed.gpus must be at least 1"):
        load_run_config(SMOLLM2, None, ["distributed.gpus=0"])
    stage1 = {"dir": "runs/x/stage1-0123"}  # stage 2's global batch grows with the ranks: so does its name
    one = load_run_config(SMOLLM2)
    assert stage2_dir(cfg, stage1) == stage2_dir(one, stage1, 2) != stage2_dir(one, stage1)
