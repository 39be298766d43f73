"""Readers for the raw sources and their tokenization into labelled documents.

A *document* is a pair `(input_ids, labels)` of equal-length int32 arrays; `labels[i]` is
`input_ids[i]` where the token is trained on and -100 where it is masked (HF convention:
the model shifts labels itself).
"""

import json
import logging
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from jinja2.exceptions import TemplateError

from .errors import DataError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "assistant": "assistant", "system": "system",
}  # fmt: skip
_SEPARATORS = re.compile(r"[\s,]*")

Document = tuple[np.ndarray, np.ndarray]


def read_sharegpt(path: str | Path) -> list[list[dict]]:
    """Read a ShareGPT JSON file into conversations of `{"role", "content"}` messages.

    The file is decoded item by item, so a file cut off inside its last item (as the bundled
    ShareGPT V3 file is) yields every complete conversation. Roles map human/user -> user,
    gpt (and other assistant aliases) -> assistant, system -> system.

    Raises:
        DataError: the file is missing, is not a JSON list, has a malformed item before its
            end, or holds no conversation.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sharegpt_path: {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    start = _SEPARATORS.match(text).end()
    if not text.startswith("[", start):
        raise DataError(f"{path}: expected a JSON list of conversations, found {text[start:start + 20]!r}")
    decoder, pos, items = json.JSONDecoder(), start + 1, []
    complete_file = text.rstrip().endswith("]")
    while True:
        pos = _SEPARATORS.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            if complete_file:
                raise DataError(f"{path}: malformed JSON in item {len(items)}: {err}") from None
            logger.info("%s: truncated after %d complete items; dropping the rest", path, len(items))
            break
        items.append(item)
    conversations = [_parse_conversation(item, index, path) for index, item in enumerate(items)]
    conversations = [c for c in conversations if any(m["role"] == "assistant" for m in c)]
    if not conversations:
        raise DataError(f"{path}: no conversation with an assistant turn")
    return conversations


def _parse_conversation(item: object, index: int, path: Path) -> list[dict]:
    turns = item.get("conversations") if isinstance(item, dict) else None
    if not isinstance(turns, list):
        raise DataError(f"{path}: item {index} has no 'conversations' list")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise DataError(f"{path}: item {index} has a turn without a string 'value': {turn!r:.80}")
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise DataError(f"{path}: item {index} has unknown role 'from'={turn.get('from')!r}")
        messages.append({"role": role, "content": turn["value"]})
    while messages and messages[0]["role"] == "assistant":  # a split-off tail without its prompt
        messages.pop(0)
    return messages


def read_text_files(paths: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Read text files (folders contribute their `*.txt`, sorted) as `(path, text)` pairs.

    Raises:
        DataError: a path does not exist, a file is not UTF-8, or no file holds any text.
    """
    files = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files.extend(sorted(entry.rglob("*.txt")))
        elif entry.is_file():
            files.append(entry)
        else:
            raise DataError(f"text path {entry} does not exist")
    texts = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{file}: not UTF-8 text ({err})") from None
        if text.strip():
            texts.append((file, text))
    if not texts:
        raise DataError(f"no text found in {[str(p) for p in paths]}")
    return texts


def split_text(text: str, target_chars: int = 16_384) -> list[str]:
    """Cut a long text at line ends into pieces of about `target_chars` characters."""
    pieces, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        size += len(line)
        if size >= target_chars:
            pieces.append("".join(current))
            current, size = [], 0
    if "".join(current).strip():
        pieces.append("".join(current))
    return pieces


def shuffled(items: Sequence, seed: int) -> list:
    """A copy of `items` in an order fixed by `seed`."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order]


def tokenize_conversations(
    conversations: Sequence[list[dict]], tokenizer, mask_prompt: bool, batch_size: int = 64
) -> Iterator[Document]:
    """Render conversations with the tokenizer's chat template and tokenize them, lazily.

    Assistant turns (their content and the end-of-turn markup the template appends) keep
    their labels; system and user turns and the template's generation prompts get -100
    when `mask_prompt`. Spans are found by rendering growing prefixes of the conversation,
    which requires a prefix-stable template (ChatML, Llama-3, ...). Conversations a strict
    template rejects (e.g. non-alternating roles) are skipped with a warning.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat_template; use the 'text' source for this model")
    for start in range(0, len(conversations), batch_size):
        rendered = []
        for messages in conversations[start : start + batch_size]:
            try:
                rendered.append(_render(messages, tokenizer))
            except TemplateError as err:
                logger.warning("skipping a conversation the chat template rejects: %s", err)
        if not rendered:
            continue
        encoded = tokenizer(
            [text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True
        )
        for (_, spans), ids, offsets in zip(rendered, encoded["input_ids"], encoded["offset_mapping"]):
            ids = np.asarray(ids, dtype=np.int32)
            if not mask_prompt:
                yield ids, ids.copy()
                continue
            starts = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)[:, 0]
            keep = np.zeros(len(ids), dtype=bool)
            for lo, hi in spans:
                keep |= (starts >= lo) & (starts < hi)
            yield ids, np.where(keep, ids, IGNORE_INDEX).astype(np.int32)


def _render(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """Full chat text and the character spans of the assistant replies."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (text.startswith(prompt) and text.startswith(upto)):
            raise DataError("the tokenizer's chat template is not prefix-stable; cannot locate assistant turns")
        spans.append((len(prompt), len(upto)))
    return text, spans


def tokenize_texts(texts: Sequence[str], tokenizer) -> Iterator[Document]:
    """Tokenize plain texts (special tokens as the tokenizer adds them, then EOS), fully labelled."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos_token to separate text documents")
    for start in range(0, len(texts), 64):
        for ids in tokenizer(list(texts[start : start + 64]))["input_ids"]:
            ids = np.asarray([*ids, eos], dtype=np.int32)
            yield ids, ids.copy()
