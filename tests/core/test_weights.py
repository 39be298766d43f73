"""A base model read piecewise (`lolcats_core.weights`): built on the meta device, then only the
parts a rank needs read from its safetensors, sharded over files or not, local or a hub
model's cached snapshot."""

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import make_tiny_config
from lolcats_core import presets, weights
from lolcats_core.presets import load_base_model
from lolcats_core.weights import load_parts


def _sharded_base(tmp_path):
    """A tiny random 4-layer Llama saved over several safetensors files with an index."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_tiny_config(num_hidden_layers=4))
    model.save_pretrained(tmp_path / "base", max_shard_size="40KB")
    assert (tmp_path / "base" / weights.INDEX).exists()
    return tmp_path / "base"


def _recording_reads(monkeypatch) -> list[str]:
    """The names of the tensors `weights` reads from files from now on, in order."""
    read, real_open = [], weights.safe_open

    class Recording:
        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)

        def __enter__(self):
            self.opened = self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def keys(self):
            return self.opened.keys()

        def get_tensor(self, name):
            read.append(name)
            return self.opened.get_tensor(name)

    monkeypatch.setattr(weights, "safe_open", Recording)
    return read


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_meta_model_reads_only_the_parts_it_is_given(tmp_path, monkeypatch, dtype):
    path = _sharded_base(tmp_path)
    whole, _, whole_ref = load_base_model(str(path), dtype=dtype)
    read = _recording_reads(monkeypatch)
    model, _, ref = load_base_model(str(path), dtype=dtype, device="meta")
    assert ref == whole_ref and model.config.lolcats_base == whole.config.lolcats_base
    assert read == ["model.embed_tokens.weight", "model.layers.3.mlp.down_proj.weight"]  # the fingerprint's
    assert all(p.is_meta for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), whole.buffers(), strict=True))  # rotary

    read.clear()
    load_parts(model, path, [model.model.layers[2], model.model.embed_tokens], dtype)
    wanted = {n for n in whole.state_dict() if n.startswith(("model.layers.2.", "model.embed_tokens."))}
    assert sorted(read) == sorted(wanted)
    held = dict(model.state_dict())
    assert {n for n, t in held.items() if not t.is_meta} == wanted
    assert all(torch.equal(held[n], t) and held[n].dtype == dtype for n, t in whole.state_dict().items() if n in wanted)


def test_a_hub_models_ref_is_read_from_its_cached_snapshot(tmp_path, monkeypatch):
    """A hub id (the Llama 3 presets) is read from its snapshot in the Hugging Face cache: the
    fingerprint of every rank's stage-1 directory name costs two tensors, not the model."""
    import huggingface_hub.constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--acme--tiny"
    shutil.copytree(_sharded_base(tmp_path), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    want = load_base_model(str(repo / "snapshots" / commit))[2]
    monkeypatch.setattr(presets, "load_base_model", None)  # the model must not be loaded
    assert presets.base_weights_dir("acme/tiny") == repo / "snapshots" / commit
    ref = presets.base_model_ref("acme/tiny")
    assert (ref.id, ref.revision, ref.fingerprint) == ("acme/tiny", "main", want.fingerprint)
