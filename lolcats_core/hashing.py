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


def safetensors_sha256(path: str | Path) -> tuple[str, str]:
    """(hex sha256 of a safetensors file's bytes, hex sha256 of the file with its header's keys
    sorted), in one read. The second names the tensors: safetensors writes the header's metadata
    from a hash map, so two saves of the same tensors can differ in their bytes, not in it."""
    raw, canonical = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        prefix = f.read(8)
        header = f.read(struct.unpack("<Q", prefix)[0])
        raw.update(prefix + header)
        canonical.update(json.dumps(json.loads(header), sort_keys=True).encode())
        while block := f.read(BLOCK):
            raw.update(block)
            canonical.update(block)
    return raw.hexdigest(), canonical.hexdigest()
