"""The DataLoader helper: shapes, determinism, exact resume."""

import torch
from datasets import Dataset

from lolcats_core.data import make_dataloader


def _rows(n=10, t=6):
    ids = [[i * 100 + j for j in range(t)] for i in range(n)]
    return Dataset.from_dict({"input_ids": ids, "labels": [[-100] + r[1:] for r in ids], "source": ["x"] * n})


def test_batches_are_int64_input_ids_and_labels():
    input_ids, labels = next(iter(make_dataloader(_rows(), 4)))
    assert input_ids.shape == labels.shape == (4, 6)
    assert input_ids.dtype == labels.dtype == torch.int64
    assert (labels[:, 0] == -100).all() and torch.equal(labels[:, 1:], input_ids[:, 1:])


def test_order_depends_on_seed_and_epoch_only_and_resumes_exactly():
    data = _rows()
    full = [b[0] for b in make_dataloader(data, 2, seed=7, epoch=1)]
    assert all(torch.equal(a, b[0]) for a, b in zip(full, make_dataloader(data, 2, seed=7, epoch=1)))
    assert not torch.equal(torch.cat(full), torch.cat([b[0] for b in make_dataloader(data, 2, seed=7, epoch=2)]))
    resumed = [b[0] for b in make_dataloader(data, 2, seed=7, epoch=1, start_batch=3)]
    assert len(resumed) == 2 and all(torch.equal(a, b) for a, b in zip(full[3:], resumed))


def test_sequential_order_without_shuffle():
    ids = torch.cat([b[0] for b in make_dataloader(_rows(5), 2, shuffle=False, drop_last=False)])
    assert ids[:, 0].tolist() == [0, 100, 200, 300, 400]
