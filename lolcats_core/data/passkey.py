"""Passkey retrieval samples: a random number hidden at a chosen depth of an essay haystack.

Layout of a prompt of `length` tokens (pieces are tokenized separately and concatenated, so
token counts are exact):

    intro | haystack[:cut] | needle("The pass key is 12345 ...") | haystack[cut:] | question reply

with `cut = round(depth * haystack_tokens)`: depth 0 puts the needle right after the intro,
depth 1 right before the question. The answer (" 12345") follows the prompt. The wording is a
`PasskeyTemplate`: training data uses `TRAIN_TEMPLATE`; the evaluation has its own
(`lolcats_core.evaluation.passkey.EVAL_TEMPLATE`), wrapped in the tokenizer's chat template.
"""

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .assets import ESSAYS_DIR, asset_path
from .errors import DataError
from .sources import IGNORE_INDEX, Document, read_text_files

ANSWER = " {key}"
STOP = "."  # ends a training answer, so the model learns to end the number (scored: the first number)
_SLOT = "\x00"  # stands for the user's message while the chat template is rendered


@dataclass(frozen=True)
class PasskeyTemplate:
    """The wording of a passkey prompt.

    Attributes:
        intro: text before the haystack.
        needle: the sentence(s) holding the key (`{key}`), inserted into the haystack.
        question: text after the haystack.
        reply: opening of the answer, right before the key (plain text: after the question and
            a space; chat: the start of the assistant's turn).
    """

    intro: str
    needle: str
    question: str
    reply: str


TRAIN_TEMPLATE = PasskeyTemplate(
    intro="There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it.\n\n",
    needle="\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n",
    question="\n\nWhat is the pass key?",
    reply="The pass key is",
)


@dataclass(frozen=True)
class PasskeySample:
    """One retrieval prompt.

    Attributes:
        input_ids: the prompt, exactly the requested number of tokens.
        answer_ids: tokens of the answer (" <key>") that follow the prompt.
        key: the pass key, a string of digits.
        depth: requested relative position of the needle in the haystack, in [0, 1].
        needle_start, needle_end: token span of the needle sentence inside `input_ids`.
    """

    input_ids: list[int]
    answer_ids: list[int]
    key: str
    depth: float
    needle_start: int
    needle_end: int


class PasskeyGenerator:
    """Makes passkey prompts of exact token lengths from an essay haystack.

    Args:
        tokenizer: a Hugging Face tokenizer.
        haystack_path: essay file or folder of `*.txt`; None uses the bundled Paul Graham essays.
        digits: number of digits of the pass key.
        stop: end each answer with a full stop.
        template: the wording (default: the training data's).
        chat: render intro..question as a user turn and `reply` as the opening of the assistant
            turn with the tokenizer's chat template; plain text when the tokenizer has none.
    """

    def __init__(self, tokenizer, haystack_path: str | Path | None = None, digits: int = 5,
                 stop: bool = True, template: PasskeyTemplate = TRAIN_TEMPLATE, chat: bool = False) -> None:
        texts = read_text_files([haystack_path or asset_path(ESSAYS_DIR)])
        self.tokenizer = tokenizer
        self.digits = digits
        self.template = template
        self.answer = ANSWER + (STOP if stop else "")
        self.haystack = np.asarray(self._encode(" ".join(t for _, t in texts)), dtype=np.int32)
        self.chat = bool(chat and getattr(tokenizer, "chat_template", None))
        if self.chat:
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SLOT}], tokenize=False,
                                                     add_generation_prompt=True)
            before, found, after = rendered.partition(_SLOT)
            if not found:
                raise DataError("the tokenizer's chat template drops the user's message; cannot frame passkey prompts")
            self.intro = self._encode(before + template.intro)  # the rendered text carries any BOS
            self.question = self._encode(template.question + after + template.reply)
        else:
            self.intro = tokenizer(template.intro)["input_ids"]  # carries BOS where the tokenizer adds one
            self.question = self._encode(f"{template.question} {template.reply}")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def min_length(self, key: str | None = None) -> int:
        """Shortest prompt (no haystack) for a key of `digits` digits."""
        needle = self._encode(self.template.needle.format(key=key or "9" * self.digits))
        return len(self.intro) + len(needle) + len(self.question)

    def new_key(self, rng: random.Random) -> str:
        return str(rng.randrange(10 ** (self.digits - 1), 10**self.digits))

    def sample(self, length: int, depth: float, rng: random.Random, key: str | None = None) -> PasskeySample:
        """A prompt of exactly `length` tokens with the needle at `depth` of the haystack.

        The haystack is a window of the essays starting at a random token offset (drawn
        from `rng`, wrapping around); the key is random unless given.
        """
        if not 0.0 <= depth <= 1.0:
            raise DataError(f"passkey depth must lie in [0, 1], got {depth!r}")
        key = key or self.new_key(rng)
        needle = self._encode(self.template.needle.format(key=key))
        n_hay = length - len(self.intro) - len(needle) - len(self.question)
        if n_hay < 0:
            raise DataError(
                f"passkey length {length} is too short: the prompt needs at least {length - n_hay} tokens"
            )
        offset = rng.randrange(len(self.haystack))
        filler = self.haystack[(offset + np.arange(n_hay)) % len(self.haystack)].tolist()
        cut = round(depth * n_hay)
        start = len(self.intro) + cut
        prompt = self.intro + filler[:cut] + needle + filler[cut:] + self.question
        return PasskeySample(
            input_ids=prompt,
            answer_ids=self._encode(self.answer.format(key=key)),
            key=key,
            depth=depth,
            needle_start=start,
            needle_end=start + len(needle),
        )

    def training_documents(
        self, lengths: Sequence[int], depths: Sequence[float], rng: random.Random, mask_prompt: bool,
        row_len: int | None = None,
    ) -> Iterator[Document]:
        """Endless training documents of prompt + answer.

        Each document's total length is drawn from `lengths` and its depth from `depths`
        (uniform in [0, 1] when `depths` is empty). With `mask_prompt` only the answer tokens
        are labelled. With `row_len`, the documents tile rows of that many tokens: only lengths
        that fit the rest of the row are drawn, and a row's last document takes the rest when
        less than `lengths`' minimum would be left, so packing never separates an answer from
        its needle.
        """
        remaining = row_len
        while True:
            key = self.new_key(rng)
            length = rng.choice(lengths if row_len is None else
                                [n for n in lengths if n <= remaining] or [remaining])
            if row_len is not None:
                if remaining - length < min(lengths):
                    length = remaining
                remaining = remaining - length or row_len
            depth = rng.choice(depths) if depths else rng.random()
            answer_len = len(self._encode(self.answer.format(key=key)))
            sample = self.sample(length - answer_len, depth, rng, key=key)
            ids = np.asarray(sample.input_ids + sample.answer_ids, dtype=np.int32)
            labels = ids.copy()
            if mask_prompt:
                labels[: len(sample.input_ids)] = IGNORE_INDEX
            yield ids, labels
