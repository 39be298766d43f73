"""torch.distributed for the training stages: ranks from torchrun, the process group, layer blocks.

Launched by `torchrun --nproc-per-node N -m lolcats_core.cli train ...`, every process reads its
rank from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
Without torchrun, or with a single process, `torchrun_ranks()` is None and the stages run
as a single process. A rank that dies ends the run: its peers' next send, receive or
collective fails (gloo at once when the connection closes; otherwise after the process-group
timeout) and torchrun stops the others and names the rank that failed first.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import ConfigError

TIMEOUT_ENV = "LOLCATS_DIST_TIMEOUT_S"  # seconds a rank waits for its peers (default 1800)


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the shared files (checkpoints, completion records)."""
        return self.rank == 0


def torchrun_ranks() -> Ranks | None:
    """The ranks torchrun set in the environment; None for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def join_process_group(ranks: Ranks, device: str) -> str:
    """Join the launch's process group (NCCL on CUDA, gloo on the CPU); returns this rank's device."""
    if str(device).startswith("cuda"):
        torch.cuda.set_device(ranks.local_rank)
        device, backend = f"cuda:{ranks.local_rank}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
        dist.init_process_group(backend, timeout=timeout)
    return device


def layer_blocks(costs: list[float], parts: int) -> list[range]:
    """Split layers 0..len(costs)-1 into `parts` contiguous blocks with the smallest largest cost.

    costs: relative cost of each layer (e.g. a linearized layer's training against a kept
    softmax layer's forward). Exact (dynamic programming over split points); ties keep blocks
    earlier in the model no larger than later ones.
    """
    n = len(costs)
    if not 0 < parts <= n:
        raise ConfigError(f"cannot split {n} layers into {parts} blocks: use at most {n} ranks")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    # best[k][i]: the smallest largest block cost splitting layers i.. into k blocks
    best = [[float("inf")] * (n + 1) for _ in range(parts + 1)]
    cut = [[n] * (n + 1) for _ in range(parts + 1)]
    best[0][n] = 0.0
    for k in range(1, parts + 1):
        for i in range(n - k, -1, -1):
            for j in range(i + 1, n - k + 2):
                worst = max(prefix[j] - prefix[i], best[k - 1][j])
                if worst < best[k][i]:
                    best[k][i], cut[k][i] = worst, j
    blocks, start = [], 0
    for k in range(parts, 0, -1):
        end = cut[k][start]
        blocks.append(range(start, end))
        start = end
    return blocks
