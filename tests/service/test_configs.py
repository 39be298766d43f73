"""Run configs of every preset and the flows' config resolution (no stack needed)."""

import pytest

from flows import config as flow_config
from lolcats_core.errors import ConfigError
from lolcats_core.gate import gate_rules

GPU_PRESETS = ("llama3-8b", "llama3.2-1b", "mistral-7b")


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_gpu_preset_configs_validate_with_paper_settings(preset):
    cfg = flow_config.load(preset, "gpu")
    assert cfg.name == preset and cfg.model == preset and cfg.device == "cuda"
    assert cfg.linearize.feature_map == "hedgehog" and cfg.linearize.window == 64
    assert cfg.stage1.train.lr == 0.01 and cfg.stage2.train.lr == 1e-4
    assert cfg.stage2.lora.r == 8 and cfg.stage2.lora.alpha == 16
    assert cfg.stage1.batch_size * cfg.stage1.train.grad_accum == 8 and cfg.data.seq_len == 1024
    assert cfg.stage1.tokens == cfg.stage2.tokens == 20_000_000
    assert "perplexity" in gate_rules(cfg.gate)


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_lolcats_plan_of_gpu_presets(preset, capsys):
    from lolcats_core.cli import main

    assert main(["plan", "--model", preset]) == 0
    assert "decode memory" in capsys.readouterr().out


def test_smollm2_deployment_profile_validates():
    cfg = flow_config.load("smollm2-135m", "cpu-smoke")
    assert cfg.device == "cpu" and gate_rules(cfg.gate) == {"perplexity": ("max_ratio", 1.5)}
    assert gate_rules(flow_config.load("smollm2-135m", "gpu").gate) == {"perplexity": ("max_ratio", 1.10)}


def test_config_errors_say_what_to_do(tmp_path):
    with pytest.raises(flow_config.FlowConfigError, match="unknown preset 'nope'.*llama3-8b"):
        flow_config.load("nope")
    with pytest.raises(flow_config.FlowConfigError, match="does not exist"):
        flow_config.load(config=str(tmp_path / "missing.yaml"))
    with pytest.raises(flow_config.FlowConfigError, match="unknown profile 'tpu'"):
        flow_config.load("llama3-8b", "tpu")
    with pytest.raises(flow_config.FlowConfigError, match="stage1.lr=oops|lr must be"):
        flow_config.load("llama3-8b", "gpu", ["stage1.lr=-1"])
    with pytest.raises(ConfigError, match="unknown setting 'max_ppl'"):
        gate_rules({"max_ppl": 1.1})
    with pytest.raises(flow_config.FlowConfigError, match="gate: unknown setting 'max_ppl'"):
        flow_config.load("llama3-8b", "gpu", ["gate.max_ppl=1.1"])


@pytest.mark.parametrize("flow_module", ["linearize", "evaluate"])
def test_flow_parameters_offer_the_shipped_presets_and_profiles(flow_module):
    """The Prefect UI's run form: preset and profile are choices, each parameter described."""
    import importlib

    module = importlib.import_module(f"flows.{flow_module}")
    schema = getattr(module, flow_module).parameters.model_dump()["properties"]
    assert schema["preset"]["enum"] == flow_config.available_presets()
    assert {"smollm2-135m", "qwen2.5-0.5b", "llama3-8b"} <= set(schema["preset"]["enum"])
    (choices,) = [s for s in schema["profile"]["anyOf"] if "enum" in s]
    assert {"cpu-smoke", "gpu", "gpu-passkey"} <= set(choices["enum"])
    assert all(schema[name].get("description") for name in ("preset", "profile", "overrides", "config"))
