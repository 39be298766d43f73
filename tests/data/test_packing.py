"""Packing, splits, mixing and determinism of prepared datasets."""

import numpy as np
import pytest

from lolcats_core.data import DataConfig, pack, prepare_dataset


def _docs(lengths, masked_prefix=0):
    start = 0
    for n in lengths:
        ids = np.arange(start, start + n, dtype=np.int32)
        labels = ids.copy()
        labels[:masked_prefix] = -100
        start += n
        yield ids, labels


def test_pack_concatenates_and_cuts():
    ids, labels, dropped = pack(_docs([5, 7, 3, 9]), seq_len=8, num_rows=10, progress=False)
    assert ids.shape == (3, 8) and dropped == 0  # 24 tokens -> 3 full rows, nothing left over
    assert np.array_equal(ids.ravel(), np.arange(24))
    assert np.array_equal(labels, ids)


def test_pack_stops_at_quota_and_the_next_pack_continues_with_fresh_documents():
    stream = _docs([6] * 10)
    first, _, _ = pack(stream, seq_len=4, num_rows=2, progress=False)
    second, _, _ = pack(stream, seq_len=4, num_rows=1, progress=False)
    assert first.ravel().tolist() == list(range(8))
    assert second.ravel().tolist() == list(range(12, 16))  # the partly used document is dropped


def test_pack_drops_rows_without_targets():
    ids, labels, dropped = pack(_docs([8, 8], masked_prefix=8), seq_len=8, num_rows=5, progress=False)
    assert len(ids) == 0 and dropped == 2


@pytest.fixture(scope="module")
def mixed(tokenizer, tmp_path_factory):
    config = DataConfig(
        mix={"sharegpt": 0.5, "text": 0.25, "passkey": 0.25}, seq_len=256, train_tokens=256 * 16,
        val_tokens=256 * 4, seed=3, cache_dir=str(tmp_path_factory.mktemp("cache")),
    )  # fmt: skip
    return config, prepare_dataset(config, tokenizer, max_positions=2048, progress=False)


def test_mix_fractions_and_shapes(mixed):
    _, data = mixed
    assert data.train.num_rows == 16 and data.validation.num_rows == 4
    sources = data.train["source"]
    assert {s: sources.count(s) for s in set(sources)} == {"sharegpt": 8, "text": 4, "passkey": 4}
    rows = np.asarray(data.train["input_ids"])
    assert rows.shape == (16, 256)


def test_prompt_tokens_are_masked(mixed, tokenizer):
    _, data = mixed
    for row in data.train:
        ids, labels = np.asarray(row["input_ids"]), np.asarray(row["labels"])
        kept = labels != -100
        assert np.array_equal(ids[kept], labels[kept])
        if row["source"] == "text":
            assert kept.all()
        elif row["source"] == "passkey":
            assert tokenizer.decode(ids[kept]).strip().rstrip(".").isdigit()  # only the answer
        else:
            assert "<|im_start|>user" not in tokenizer.decode(ids[kept])


def test_same_inputs_give_identical_data_and_seed_changes_it(mixed, tokenizer, tmp_path):
    config, data = mixed
    again = prepare_dataset(config, tokenizer, root=tmp_path / "a", progress=False)
    assert not again.cache_hit
    assert again.train["input_ids"] == data.train["input_ids"]
    assert again.validation["labels"] == data.validation["labels"]
    other = DataConfig(**{**config.__dict__, "seed": 4})
    reseeded = prepare_dataset(other, tokenizer, root=tmp_path / "b", progress=False)
    assert reseeded.train["input_ids"] != data.train["input_ids"]


def test_validation_documents_are_not_in_training(mixed):
    _, data = mixed
    text = lambda split: {tuple(r["input_ids"][:32]) for r in split if r["source"] != "passkey"}  # noqa: E731
    assert not text(data.train) & text(data.validation)


def test_short_passkey_samples_are_packed_together(tokenizer, tmp_path):
    config = DataConfig(mix={"passkey": 1.0}, seq_len=256, passkey_lengths=[128], passkey_depths=[0.5],
                        train_tokens=256 * 2, val_tokens=0, cache_dir=str(tmp_path))  # fmt: skip
    data = prepare_dataset(config, tokenizer, progress=False)
    for row in data.train:
        assert tokenizer.decode(row["input_ids"]).count("What is the pass key?") == 2
        assert sum(label != -100 for label in row["labels"]) == 2 * 7  # two answers " ddddd."


def test_passkey_samples_of_mixed_lengths_are_never_split_across_rows(tokenizer, tmp_path):
    config = DataConfig(mix={"passkey": 1.0}, seq_len=512, passkey_lengths=[128, 192, 384], train_tokens=512 * 6,
                        val_tokens=0, cache_dir=str(tmp_path))  # fmt: skip
    data = prepare_dataset(config, tokenizer, progress=False)
    for row in data.train:
        text = tokenizer.decode(row["input_ids"])
        questions = text.count("What is the pass key?")
        assert questions >= 2 and text.count("The pass key is") == 2 * questions  # needle + answer each
        assert sum(label != -100 for label in row["labels"]) == 7 * questions


def test_a_source_that_runs_out_keeps_the_mix(tokenizer, tmp_path):
    (tmp_path / "small.txt").write_text("A short essay about nothing in particular.\n" * 120)
    config = DataConfig(mix={"text": 0.5, "passkey": 0.5}, text_paths=[str(tmp_path / "small.txt")], seq_len=128,
                        train_tokens=128 * 40, val_tokens=0, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    data = prepare_dataset(config, tokenizer, progress=False)
    sources = data.train["source"]
    assert 0 < sources.count("text") < 20 and sources.count("passkey") == sources.count("text")
    assert data.manifest["stats"]["sources"]["passkey/train"] == {"requested": 20, "rows": sources.count("passkey"),
                                                                  "dropped_unlabelled": 0}  # fmt: skip
