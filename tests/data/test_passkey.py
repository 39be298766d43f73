"""The passkey generator: exact lengths, the key at the requested depth."""

import random

import numpy as np
import pytest

from lolcats_core.data import DataError, PasskeyGenerator


@pytest.fixture(scope="module")
def generator(tokenizer):
    return PasskeyGenerator(tokenizer)


@pytest.mark.parametrize("length", [200, 1024, 4096])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_key_sits_at_the_requested_depth(generator, tokenizer, length, depth):
    sample = generator.sample(length, depth, random.Random(0))
    ids = sample.input_ids
    assert len(ids) == length
    assert len(sample.key) == 5 and sample.key.isdigit()
    needle = tokenizer.decode(ids[sample.needle_start : sample.needle_end])
    assert f"The pass key is {sample.key}." in needle
    assert sample.key not in tokenizer.decode(ids[: sample.needle_start])
    assert sample.key not in tokenizer.decode(ids[sample.needle_end :])
    assert tokenizer.decode(ids).endswith("What is the pass key? The pass key is")
    assert tokenizer.decode(sample.answer_ids).strip() == sample.key + "."
    # relative position of the needle inside the haystack (between intro and question)
    haystack = length - (sample.needle_end - sample.needle_start) - len(generator.intro) - len(generator.question)
    position = (sample.needle_start - len(generator.intro)) / haystack
    assert position == pytest.approx(depth, abs=1 / haystack)


def test_prompts_are_reproducible_and_vary_with_the_rng(generator):
    a = generator.sample(512, 0.5, random.Random("x"))
    b = generator.sample(512, 0.5, random.Random("x"))
    c = generator.sample(512, 0.5, random.Random("y"))
    assert a == b
    assert a.key != c.key and a.input_ids != c.input_ids


def test_too_short_or_bad_depth(generator):
    with pytest.raises(DataError, match="passkey length 20 is too short"):
        generator.sample(20, 0.5, random.Random(0))
    with pytest.raises(DataError, match=r"depth must lie in \[0, 1\]"):
        generator.sample(512, 1.5, random.Random(0))


def test_training_documents_have_the_drawn_length_and_label_only_the_answer(generator, tokenizer):
    docs = generator.training_documents([300, 500], [0.0, 1.0], random.Random(0), mask_prompt=True)
    lengths = set()
    for _ in range(12):
        ids, labels = next(docs)
        assert ids.shape == labels.shape and len(ids) in (300, 500)
        lengths.add(len(ids))
        answer = labels[labels != -100]
        assert tokenizer.decode(answer).strip().rstrip(".").isdigit()
        assert np.array_equal(answer, ids[-len(answer) :])
    assert lengths == {300, 500}


def test_training_documents_tile_rows_exactly(generator):
    docs = generator.training_documents([300, 500], [], random.Random(0), mask_prompt=True, row_len=1024)
    ends, total = set(), 0
    for _ in range(40):
        ids, _ = next(docs)
        assert len(ids) >= 300
        total += len(ids)
        ends.add(total)
    # every row boundary falls between two documents
    assert {1024 * n for n in range(1, total // 1024 + 1)} <= ends


def test_answers_end_with_a_full_stop_unless_asked_not_to(tokenizer):
    rng = random.Random(0)
    stopped = PasskeyGenerator(tokenizer).sample(300, 0.5, rng)
    plain = PasskeyGenerator(tokenizer, stop=False).sample(300, 0.5, random.Random(0))
    assert tokenizer.decode(stopped.answer_ids) == f" {stopped.key}."
    assert tokenizer.decode(plain.answer_ids) == f" {plain.key}" and plain.key == stopped.key
