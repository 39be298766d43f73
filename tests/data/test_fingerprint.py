"""Content fingerprints and the on-disk cache."""

import json

import pytest

from lolcats_core.data import DataConfig, data_fingerprint, load_prepared, prepare_dataset


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(400)))
    return path


def _config(path, **fields):
    return DataConfig(**{"mix": {"text": 1.0}, "text_paths": [str(path)], "seq_len": 64,
                         "train_tokens": 64 * 8, "val_tokens": 64 * 2, **fields})  # fmt: skip


def test_fingerprint_is_stable_and_follows_the_inputs(corpus, tokenizer, tmp_path):
    base, _ = data_fingerprint(_config(corpus), tokenizer)
    assert data_fingerprint(_config(corpus), tokenizer)[0] == base
    assert data_fingerprint(_config(corpus, cache_dir="/elsewhere"), tokenizer)[0] == base
    for change in ({"seed": 1}, {"seq_len": 32}, {"train_tokens": 64 * 9}, {"mask_prompt": False}):
        assert data_fingerprint(_config(corpus, **change), tokenizer)[0] != base, change

    moved = tmp_path / "moved" / "copy.txt"
    moved.parent.mkdir()
    moved.write_bytes(corpus.read_bytes())
    assert data_fingerprint(_config(moved), tokenizer)[0] == base  # content, not location
    moved.write_text(corpus.read_text() + "\none more line")
    assert data_fingerprint(_config(moved), tokenizer)[0] != base

    tokenizer.chat_template, template = "{{ messages }}", tokenizer.chat_template
    try:
        assert data_fingerprint(_config(corpus), tokenizer)[0] != base
    finally:
        tokenizer.chat_template = template


def test_second_preparation_is_a_cache_hit(corpus, tokenizer, tmp_path):
    config = _config(corpus, cache_dir=str(tmp_path / "cache"))
    first = prepare_dataset(config, tokenizer, progress=False)
    assert not first.cache_hit
    manifest = json.loads((first.path / "lolcats_data.json").read_text())
    assert manifest["fingerprint"] == first.fingerprint == data_fingerprint(config, tokenizer)[0]
    assert first.path.name == first.fingerprint[:16]
    assert manifest["stats"]["splits"]["train"]["rows"] == 8

    second = prepare_dataset(config, tokenizer, progress=False)
    assert second.cache_hit and second.path == first.path
    assert second.train["input_ids"] == first.train["input_ids"]
    assert load_prepared(first.path).fingerprint == first.fingerprint
