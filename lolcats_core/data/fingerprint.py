"""Content fingerprints: sha256 over the data config, the source files and the tokenizer."""

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from ..hashing import sha256_file
from .assets import ESSAYS_DIR, SHAKESPEARE_DIR, SHAREGPT_FILE, asset_path
from .config import DataConfig
from .errors import DataError

FORMAT_VERSION = 4  # bump when the prepared layout or the preparation logic changes
PATH_FIELDS = {"sharegpt": "sharegpt_path", "text": "text_paths", "passkey": "haystack_path"}


def hash_path(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a folder's sorted (relative path, file hash) pairs."""
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return _hash_file(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path).as_posix()}\0{hash_path(file)}\n".encode())
        return digest.hexdigest()
    raise DataError(f"{path} does not exist")


@lru_cache(maxsize=256)
def _hash_file(path: str, size: int, mtime_ns: int) -> str:  # size/mtime key the cache
    return sha256_file(path)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's full definition (vocab, merges, normalizer, added tokens),
    its special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256((body + json.dumps(extra, sort_keys=True)).encode()).hexdigest()


def source_paths(config: DataConfig) -> dict[str, list[Path]]:
    """Files each source in the mix reads, with bundled assets resolved.

    Raises `DataError` for a path that is, holds or lies inside the out-of-distribution
    evaluation text (`SHAKESPEARE_DIR`): training on it would flatter that perplexity.
    """
    paths = {}
    for source, weight in config.mix.items():
        if weight <= 0:
            continue
        if source == "sharegpt":
            paths[source] = [Path(config.sharegpt_path) if config.sharegpt_path else asset_path(SHAREGPT_FILE)]
        elif source == "text":
            paths[source] = [Path(p) for p in config.text_paths] or [asset_path(ESSAYS_DIR)]
        else:
            paths[source] = [Path(config.haystack_path) if config.haystack_path else asset_path(ESSAYS_DIR)]
    _refuse_ood_text(paths)
    return paths


def _refuse_ood_text(paths: dict[str, list[Path]]) -> None:
    try:
        ood = asset_path(SHAKESPEARE_DIR).resolve()
    except DataError:  # not installed: there is no out-of-distribution text to keep out
        return
    for source, entries in paths.items():
        for path in entries:
            resolved = path.resolve()
            if resolved == ood or ood in resolved.parents or resolved in ood.parents:
                raise DataError(f"{PATH_FIELDS[source]}: {path} reaches the out-of-distribution evaluation "
                                f"text {ood}; it must stay out of the linearizing data")


def data_fingerprint(config: DataConfig, tokenizer) -> tuple[str, dict]:
    """Fingerprint of the data `config` would prepare, and the inputs it covers.

    Paths are resolved and hashed by content, so moving a file keeps the fingerprint and
    editing it changes it. Raises `DataError` naming a source path that does not exist.
    """
    sources = {}
    for source, paths in source_paths(config).items():
        for path in paths:
            if not path.exists():
                raise DataError(f"{PATH_FIELDS[source]}: {path} does not exist")
        sources[source] = {str(p): hash_path(p) for p in paths}
    inputs = {
        "format_version": FORMAT_VERSION,
        "config": config.content_dict(),
        "sources": {s: list(h.values()) for s, h in sources.items()},
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    fingerprint = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return fingerprint, {**inputs, "source_files": sources}
