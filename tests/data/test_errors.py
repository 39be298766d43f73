"""Bad input fails fast with a message naming the file or field."""

import json

import pytest

from lolcats_core.data import DataConfig, DataError, load_prepared, prepare_dataset, read_sharegpt, read_text_files


def test_missing_sharegpt_file(tmp_path, tokenizer):
    config = DataConfig(sharegpt_path=str(tmp_path / "nope.json"), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"sharegpt_path: .*nope\.json does not exist"):
        prepare_dataset(config, tokenizer)


def test_malformed_item_in_a_complete_file(tmp_path):
    path = tmp_path / "bad.json"
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    path.write_text("[" + json.dumps(good) + ', {"conversations": [ oops ] }]')
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON in item 1"):
        read_sharegpt(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"conversations": []}', "expected a JSON list"),
        ("[]", "no conversation with an assistant turn"),
        ('[{"id": 1}]', "item 0 has no 'conversations' list"),
        ('[{"conversations": [{"from": "robot", "value": "x"}]}]', "unknown role 'from'='robot'"),
        ('[{"conversations": [{"from": "gpt", "value": 3}]}]', "without a string 'value'"),
    ],
)
def test_malformed_sharegpt_content(tmp_path, content, message):
    path = tmp_path / "chat.json"
    path.write_text(content)
    with pytest.raises(DataError, match=rf"chat\.json: .*{message}"):
        read_sharegpt(path)


def test_missing_and_undecodable_text(tmp_path):
    with pytest.raises(DataError, match=r"text path .*missing\.txt does not exist"):
        read_text_files([tmp_path / "missing.txt"])
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match=r"binary\.txt: not UTF-8"):
        read_text_files([tmp_path / "binary.txt"])


def test_empty_dataset(tmp_path, tokenizer):
    (tmp_path / "short.txt").write_text("Only a few words here.")
    config = DataConfig(mix={"text": 1.0}, text_paths=[str(tmp_path / "short.txt")], seq_len=64,
                        train_tokens=640, val_tokens=0, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    with pytest.raises(DataError, match=r"empty dataset: the train split .*short\.txt"):
        prepare_dataset(config, tokenizer)


def test_sequence_longer_than_the_model_allows(tmp_path, tokenizer):
    config = DataConfig(mix={"text": 1.0}, seq_len=4096, train_tokens=8192, val_tokens=0, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="seq_len=4096 exceeds the model's max_position_embeddings=2048"):
        prepare_dataset(config, tokenizer, max_positions=2048)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mix": {"alpaca": 1.0}}, r"mix: unknown source\(s\) \['alpaca'\]"),
        ({"mix": {"text": 0.0}}, "mix weights sum to zero"),
        ({"seq_len": 0}, "seq_len must be a positive integer"),
        ({"seq_len": 128, "train_tokens": 64}, "train_tokens=64 is smaller than one sequence"),
        ({"seq_len": 128, "val_tokens": 64}, "val_tokens must be 0 .* or at least one sequence"),
        ({"seq_len": 128, "passkey_lengths": [256]}, "passkey_lengths must be positive and at most seq_len=128"),
        ({"passkey_depths": [-0.1]}, r"passkey_depths must lie in \[0, 1\]"),
    ],
)
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(DataError, match=message):
        DataConfig(**fields)


def test_loading_a_folder_without_manifest(tmp_path):
    with pytest.raises(DataError, match=r"lolcats_data\.json: missing or malformed manifest"):
        load_prepared(tmp_path)
