"""Checkpoints: save -> AutoModelForCausalLM.from_pretrained round trip, refusals."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from helpers import make_tiny_config, randomize_attention
from lolcats_core import (
    CheckpointError,
    LinearizeConfig,
    LoraSettings,
    add_lora,
    linearize,
    load_base_model,
    save_linearized,
)


@pytest.fixture
def linearized(tiny_model_dir):
    model, _, _ = load_base_model(str(tiny_model_dir))
    linearize(model, LinearizeConfig(window=8, softmax_layers=[1], sinks=2, sink_logits=True, gate="scalar"))
    randomize_attention(model)
    return model.eval()


@pytest.fixture
def with_lora(linearized):
    model = add_lora(linearized, LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    return model.eval()


IDS = torch.randint(1, 128, (2, 30), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("variant", ["stage1", "adapter", "merged"])
def test_round_trip_gives_identical_logits(variant, request, tmp_path):
    model = request.getfixturevalue("linearized" if variant == "stage1" else "with_lora")
    ref = model(IDS).logits
    if variant == "stage1":
        model.save_pretrained(tmp_path / "ck")  # the linearized class saves a lolcats checkpoint
    else:
        save_linearized(model, tmp_path / "ck", merge_lora=variant == "merged")
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["model_type"] == "lolcats" and config["base_model"]["fingerprint"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ck")
    assert type(loaded).__name__ == "LolcatsLlamaForCausalLM"
    torch.testing.assert_close(loaded(IDS).logits, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(model(IDS).logits, ref)  # saving left the model unchanged


def test_adapter_checkpoint_holds_only_trained_weights(with_lora, tmp_path):
    save_linearized(with_lora, tmp_path / "ck")
    keys = load_file(tmp_path / "ck" / "model.safetensors").keys()
    trained = ("feature_map", "window_gate", "sink_logit", "state_gate", "lora_")
    assert keys and all(any(t in k for t in trained) for k in keys)
    assert any("sink_logit" in k for k in keys) and any("state_gate" in k for k in keys)


def test_tampered_weights_are_refused(linearized, tmp_path):
    linearized.save_pretrained(tmp_path / "ck")
    path = tmp_path / "ck" / "model.safetensors"
    state = load_file(path)
    key = next(iter(state))
    state[key] = state[key] + 1.0
    save_file(state, path)
    with pytest.raises(CheckpointError, match="modified after saving"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "ck")


def test_pickle_files_are_refused(linearized, tmp_path):
    linearized.save_pretrained(tmp_path / "ck")
    torch.save({"x": 1}, tmp_path / "ck" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pickle files \['pytorch_model.bin'\]"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "ck")


def test_mismatched_base_model_is_refused(linearized, tmp_path):
    linearized.save_pretrained(tmp_path / "ck")
    torch.manual_seed(123)  # same shapes, other weights
    AutoModelForCausalLM.from_config(make_tiny_config()).save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="base model weights differ"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "ck", base_model_path=str(tmp_path / "other"))
    AutoModelForCausalLM.from_config(make_tiny_config(hidden_size=32)).save_pretrained(tmp_path / "small")
    with pytest.raises(CheckpointError, match="hidden_size: checkpoint 64 vs base 32"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "ck", base_model_path=str(tmp_path / "small"))


def test_model_without_base_reference_cannot_be_saved(tmp_path):
    model = AutoModelForCausalLM.from_config(make_tiny_config())
    linearize(model, LinearizeConfig())
    with pytest.raises(CheckpointError, match="load_base_model"):
        model.save_pretrained(tmp_path / "ck")


def test_base_model_ref_from_files_equals_the_loaded_models(tiny_model_dir, smollm2_dir, monkeypatch):
    from lolcats_core import presets

    loaded = {source: load_base_model(source)[2] for source in (str(tiny_model_dir), "smollm2-135m")}
    monkeypatch.setattr(presets, "load_base_model", None)  # the cheap path must not load the model
    for source, ref in loaded.items():
        assert presets.base_model_ref(source) == ref
