"""The sha256 of files: checkpoint weights, data sources, GGUF parts and S3 artifacts all use
`sha256_files`, read in blocks of 4 MiB."""

import contextlib
import hashlib
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
