"""Packing labelled documents into fixed-length training rows."""

from collections.abc import Iterator

import numpy as np
from tqdm.auto import tqdm

from .sources import IGNORE_INDEX, Document


def pack(
    documents: Iterator[Document], seq_len: int, num_rows: int, desc: str = "packing", progress: bool = True
) -> tuple[np.ndarray, np.ndarray, int]:
    """Concatenate documents and cut the stream into at most `num_rows` rows of `seq_len` tokens.

    Attention over a packed row is plain causal: a token may attend to the end of the previous
    document in its row (no per-document masking). Rows with no trained target (every label
    after the first is -100) are dropped, since they would give a 0/0 loss. Documents are
    consumed lazily; the partly used document when the quota is met is dropped, so a second
    `pack` on the same iterator (train after validation) never sees a token of the first.

    Returns:
        input_ids: [N, seq_len] int32, N <= num_rows (less when the documents run out).
        labels: [N, seq_len] int32, -100 where masked.
        dropped: rows dropped for having no target.
    """
    empty = np.zeros((0, seq_len), dtype=np.int32)
    if num_rows <= 0:
        return empty, empty.copy(), 0
    id_rows, label_rows, dropped = [], [], 0
    buf_ids, buf_labels, buffered, made = [], [], 0, 0
    with tqdm(total=num_rows, desc=desc, unit="seq", disable=not progress, leave=False) as bar:
        for ids, labels in documents:
            buf_ids.append(ids)
            buf_labels.append(labels)
            buffered += len(ids)
            if buffered < seq_len:
                continue
            flat_ids, flat_labels = np.concatenate(buf_ids), np.concatenate(buf_labels)
            n = min(buffered // seq_len, num_rows - made)
            rows_ids = flat_ids[: n * seq_len].reshape(n, seq_len)
            rows_labels = flat_labels[: n * seq_len].reshape(n, seq_len)
            trained = (rows_labels[:, 1:] != IGNORE_INDEX).any(axis=1)
            dropped += int((~trained).sum())
            id_rows.append(rows_ids[trained])
            label_rows.append(rows_labels[trained])
            made += int(trained.sum())
            bar.update(int(trained.sum()))
            buf_ids, buf_labels = [flat_ids[n * seq_len :]], [flat_labels[n * seq_len :]]
            buffered = len(buf_ids[0])
            if made >= num_rows:
                break
    if not id_rows:
        return empty, empty.copy(), dropped
    return np.concatenate(id_rows), np.concatenate(label_rows), dropped
