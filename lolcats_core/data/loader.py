"""Deterministic, resumable torch DataLoaders over prepared rows."""

import torch
from datasets import Dataset
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler[int]):
    """Row indices for one epoch: a permutation fixed by `(seed, epoch)` (or the identity when
    not shuffling), starting at `start` so a resumed run sees exactly the rows it had left."""

    def __init__(self, num_rows: int, *, shuffle: bool, seed: int, epoch: int, start: int) -> None:
        self.num_rows, self.shuffle, self.seed, self.epoch, self.start = num_rows, shuffle, seed, epoch, start

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_rows))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_rows, generator=generator).tolist()

    def __iter__(self):
        return iter(self._order()[self.start :])

    def __len__(self) -> int:
        return max(self.num_rows - self.start, 0)


def _collate(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.stack([r["input_ids"] for r in rows]).long(),
        torch.stack([r["labels"] for r in rows]).long(),
    )


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    drop_last: bool = True,
    num_workers: int = 0,
) -> DataLoader:
    """Batches `(input_ids, labels)`, each [batch_size, seq_len] int64, from prepared rows.

    The order depends only on `(seed, epoch)`; `start_batch` skips the batches an interrupted
    run already consumed, so resuming at (epoch, start_batch) continues bit-identically.
    """
    sampler = ResumableSampler(
        len(dataset), shuffle=shuffle, seed=seed, epoch=epoch, start=start_batch * batch_size
    )
    return DataLoader(
        dataset.with_format("torch", columns=["input_ids", "labels"]),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        collate_fn=_collate,
        num_workers=num_workers,
    )
