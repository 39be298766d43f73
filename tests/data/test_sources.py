"""ShareGPT and plain-text readers, chat rendering with prompt masking."""

import json

import numpy as np
import pytest

from lolcats_core.data import read_sharegpt, read_text_files, tokenize_conversations
from lolcats_core.data.assets import SHAREGPT_FILE, asset_path

CHAT = [
    {"id": "a", "conversations": [
        {"from": "human", "value": "What is two plus two?"},
        {"from": "gpt", "value": "Four."},
        {"from": "human", "value": "And times three?"},
        {"from": "gpt", "value": "Twelve."},
    ]},
    {"id": "b", "conversations": [{"from": "gpt", "value": "orphan reply"}, {"from": "human", "value": "Hi"},
                                  {"from": "gpt", "value": "Hello!"}]},
    {"id": "c", "conversations": [{"from": "human", "value": "no answer"}]},
]  # fmt: skip


def test_truncated_file_keeps_complete_items(tmp_path):
    text = json.dumps([CHAT[0], CHAT[2], CHAT[1]], indent=2)
    path = tmp_path / "cut.json"
    path.write_text(text[: text.index("Hello!")])  # cut inside the last item's string
    conversations = read_sharegpt(path)
    assert len(conversations) == 1  # CHAT[2] has no assistant turn, CHAT[1] is cut off
    assert [m["role"] for m in conversations[0]] == ["user", "assistant", "user", "assistant"]


def test_leading_assistant_turn_is_dropped(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(CHAT))
    conversations = read_sharegpt(path)
    assert conversations[1] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def test_bundled_sharegpt_file_is_truncated_but_readable():
    path = asset_path(SHAREGPT_FILE)
    with pytest.raises(json.JSONDecodeError):
        json.loads(path.read_text())
    conversations = read_sharegpt(path)
    assert 17_000 < len(conversations) < 18_000
    assert all(m["role"] in {"system", "user", "assistant"} for c in conversations for m in c)


def test_assistant_turns_alone_are_labelled(tmp_path, tokenizer):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(CHAT[:1]))
    messages = read_sharegpt(path)
    ((ids, labels),) = tokenize_conversations(messages, tokenizer, mask_prompt=True)
    kept = labels != -100
    assert np.array_equal(ids[kept], labels[kept])
    assert tokenizer.decode(ids[kept]) == "Four.<|im_end|>\nTwelve.<|im_end|>\n"
    prompt = tokenizer.decode(ids[~kept])
    assert "What is two plus two?" in prompt and "And times three?" in prompt and "Four" not in prompt
    ((_, unmasked),) = tokenize_conversations(messages, tokenizer, mask_prompt=False)
    assert (unmasked != -100).all()


def test_text_files_and_folders(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("second")
    (tmp_path / "docs" / "a.txt").write_text("first")
    (tmp_path / "docs" / "empty.txt").write_text("  \n")
    (tmp_path / "single.md").write_text("third")
    texts = read_text_files([tmp_path / "docs", tmp_path / "single.md"])
    assert [t for _, t in texts] == ["first", "second", "third"]
