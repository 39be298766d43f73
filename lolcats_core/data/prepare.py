"""Prepare, store and reload linearizing datasets, addressed by content fingerprint."""

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, List, Value, load_from_disk

from .config import DataConfig, check_fits
from .errors import DataError
from .fingerprint import data_fingerprint, source_paths
from .packing import pack
from .passkey import PasskeyGenerator
from .sources import (
    IGNORE_INDEX,
    Document,
    read_sharegpt,
    read_text_files,
    shuffled,
    split_text,
    tokenize_conversations,
    tokenize_texts,
)

logger = logging.getLogger(__name__)

MANIFEST = "lolcats_data.json"
FEATURES = Features(
    {"input_ids": List(Value("int32")), "labels": List(Value("int32")), "source": Value("string")}
)


@dataclass
class PreparedData:
    """A prepared dataset on disk.

    Attributes:
        path: folder holding the `datasets` DatasetDict and the manifest JSON.
        fingerprint: sha256 of the inputs (config, source file hashes, tokenizer).
        train, validation: rows of `input_ids`, `labels` ([seq_len] int32 each) and `source`.
        manifest: the JSON beside the data (fingerprint, inputs, config, stats).
        cache_hit: True when an earlier preparation with the same fingerprint was reused.
    """

    path: Path
    fingerprint: str
    train: Dataset
    validation: Dataset
    manifest: dict
    cache_hit: bool = False


def prepare_dataset(
    config: DataConfig,
    tokenizer,
    *,
    max_positions: int | None = None,
    root: str | Path | None = None,
    progress: bool = True,
    rebuild: bool = False,
) -> PreparedData:
    """Build (or reuse) the train/validation rows `config` describes.

    Each source in `config.mix` gets `weight / sum(weights)` of the `train_tokens // seq_len`
    training rows (and of the validation rows); sharegpt and text documents are shuffled by
    `seed` and the validation rows are packed first, from documents training never sees.
    The result is written to `dataset_dir(config, fingerprint, root)`; a later call with the
    same inputs loads it instead (`cache_hit=True`).

    Args:
        max_positions: the model's `max_position_embeddings`; a longer `seq_len` is an error.
        rebuild: prepare the data again even when a stored copy exists (it is replaced).

    Raises:
        DataError: a missing or malformed source file, a sequence longer than the model
            allows, or a split that comes out empty.
    """
    check_fits(config.seq_len, max_positions)
    fingerprint, inputs = data_fingerprint(config, tokenizer)
    target = dataset_dir(config, fingerprint, root)
    if not rebuild and (target / MANIFEST).is_file():
        cached = load_prepared(target)
        if cached.fingerprint == fingerprint:
            cached.cache_hit = True
            return cached
    start = time.perf_counter()
    splits, stats = _build(config, tokenizer, progress)
    manifest = {
        "fingerprint": fingerprint,
        "inputs": inputs,
        "config": asdict(config),
        "stats": {**stats, "seconds": round(time.perf_counter() - start, 2)},
    }
    _write(target, DatasetDict(splits), manifest)
    return load_prepared(target)


def dataset_dir(config: DataConfig, fingerprint: str, root: str | Path | None = None) -> Path:
    """The folder the data of `fingerprint` is stored in: `root` (default `config.cache_dir`)
    / the fingerprint's first 16 hex digits."""
    return Path(root or config.cache_dir).expanduser() / fingerprint[:16]


def load_prepared(path: str | Path) -> PreparedData:
    """Load a dataset written by `prepare_dataset` (the folder holding its manifest)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        fingerprint = manifest["fingerprint"]
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise DataError(f"{path / MANIFEST}: missing or malformed manifest ({err})") from None
    data = load_from_disk(str(path))
    return PreparedData(path, fingerprint, data["train"], data["validation"], manifest)


def _build(config: DataConfig, tokenizer, progress: bool) -> tuple[dict[str, Dataset], dict]:
    weights = {s: w for s, w in config.mix.items() if w > 0}
    quotas = {
        "validation": _allocate(weights, config.val_tokens // config.seq_len),
        "train": _allocate(weights, config.train_tokens // config.seq_len),
    }
    paths = source_paths(config)
    rows = {"validation": [], "train": []}
    stats = {"sources": {}, "splits": {}}
    for source in weights:
        streams = _streams(source, paths[source], config, tokenizer)
        for split in ("validation", "train"):
            quota = quotas[split][source]
            ids, labels, dropped = pack(streams[split], config.seq_len, quota, f"{source}/{split}", progress)
            rows[split].append((source, ids, labels))
            stats["sources"][f"{source}/{split}"] = {"requested": quota, "dropped_unlabelled": dropped}
    splits = {}
    for split, packed in rows.items():
        parts = _keep_mix(packed, quotas[split], split)
        for source, ids, _ in parts:
            stats["sources"][f"{source}/{split}"]["rows"] = len(ids)
        n_rows = sum(len(p[1]) for p in parts)
        if sum(quotas[split].values()) and n_rows == 0:
            raise DataError(
                f"empty dataset: the {split} split has no row of seq_len={config.seq_len} "
                f"from {sorted(weights)} ({[str(p) for ps in paths.values() for p in ps]})"
            )
        stats["splits"][split] = {
            "rows": n_rows,
            "tokens": n_rows * config.seq_len,
            "target_tokens": int(sum((p[2][:, 1:] != IGNORE_INDEX).sum() for p in parts)),
        }
        splits[split] = _to_dataset(parts, config.seed)
    return splits, stats


def _streams(source: str, paths: list[Path], config: DataConfig, tokenizer) -> dict[str, Iterator[Document]]:
    """Document iterators per split; sharegpt/text share one shuffled stream (validation first)."""
    if source == "passkey":
        generator = PasskeyGenerator(tokenizer, paths[0], config.passkey_digits, config.passkey_stop)
        return {
            split: generator.training_documents(
                config.passkey_lengths or [config.seq_len], config.passkey_depths,
                random.Random(f"{config.seed}-passkey-{split}"), config.mask_prompt, config.seq_len,
            )  # fmt: skip
            for split in ("validation", "train")
        }
    if source == "sharegpt":
        conversations = shuffled(read_sharegpt(paths[0]), config.seed)
        stream = tokenize_conversations(conversations, tokenizer, config.mask_prompt)
    else:
        pieces = [piece for _, text in read_text_files(paths) for piece in split_text(text)]
        stream = tokenize_texts(shuffled(pieces, config.seed), tokenizer)
    return {"validation": stream, "train": stream}


def _keep_mix(parts: list[tuple[str, np.ndarray, np.ndarray]], quotas: dict[str, int], split: str) -> list:
    """When a source ran out, trim the others so the split keeps the configured proportions."""
    scale = min((len(ids) / quotas[source] for source, ids, _ in parts if quotas[source]), default=1.0)
    if scale >= 1.0:
        return parts
    short = [f"{s}: {len(ids)} of {quotas[s]} rows" for s, ids, _ in parts if len(ids) < quotas[s]]
    logger.warning("%s split: sources ran out (%s); keeping the mix at %.0f%% of the budget",
                   split, ", ".join(short), 100 * scale)  # fmt: skip
    keep = {source: min(len(ids), round(quotas[source] * scale)) for source, ids, _ in parts}
    return [(source, ids[: keep[source]], labels[: keep[source]]) for source, ids, labels in parts]


def _allocate(weights: dict[str, float], total: int) -> dict[str, int]:
    """Split `total` rows across sources in proportion to `weights` (largest remainder)."""
    norm = sum(weights.values())
    exact = {s: total * w / norm for s, w in weights.items()}
    counts = {s: int(v) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: counts[s] - exact[s])[: total - sum(counts.values())]:
        counts[s] += 1
    return counts


def _to_dataset(parts: list[tuple[str, np.ndarray, np.ndarray]], seed: int) -> Dataset:
    """Concatenate per-source rows and shuffle them with `seed`."""
    ids = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    sources = np.concatenate([np.full(len(p[1]), p[0]) for p in parts]).tolist()
    order = np.random.default_rng(seed).permutation(len(ids))
    return Dataset.from_dict(
        {"input_ids": ids[order], "labels": labels[order], "source": [sources[i] for i in order]},
        features=FEATURES,
    )


def _write(target: Path, data: DatasetDict, manifest: dict) -> None:
    """Save next to `target` and rename into place, so a reader never sees a partial dataset."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    # an empty split saved with the default (zero) shards cannot be loaded back
    data.save_to_disk(str(staging), num_shards={split: 1 for split, rows in data.items() if len(rows) == 0})
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / MANIFEST).is_file():
            raise
        shutil.rmtree(staging)  # a concurrent run with the same fingerprint finished first
