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
