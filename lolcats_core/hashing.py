"""The sha256 of files: checkpoint weights, data sources, GGUF parts and S3 artifacts all use
`sha256_files`, read in blocks of 4 MiB; `safetensors_sha256` names a checkpoint's tensors."""

import contextlib
import hashlib
import json
import struct
from collections.abc import Iterable
from pathlib import Path

BLOCK = 1 << 22


def sha256_files(paths: Iterable[str | Path], copy_to: str | Path | None = None) -> str:
    """Hex sha256 of the files' bytes joined in order, streamed; the joined bytes are also
    written to `copy_to` when given."""
    digest = hashlib.sha256()
    with open(copy_to, "wb") if copy_to else contextlib.nullcontext() as sink:
        for path in paths:
            with open(path, "rb") as f:
                while block := f.read(BLOCK):
                    digest.update(block)
                    if sink:
                        sink.write(block)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of one file's bytes."""
    return sha256_files([path])


def safetensors_sha256(path: str | Path) -> str:
    """Hex sha256 of a safetensors file with its header's keys sorted: the same tensors give
    the same digest whatever order the writer put the header's metadata in (safetensors writes
    it from a hash map, so two saves of the same tensors can differ in their bytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        digest.update(json.dumps(json.loads(f.read(length)), sort_keys=True).encode())
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
