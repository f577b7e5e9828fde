"""Multi-process training under torchrun: process group, data sharding and metric reduction.

`torchrun --nproc-per-node N -m species_classifier train ...` sets RANK, WORLD_SIZE and
LOCAL_RANK; `init_distributed` reads them and joins the process group (NCCL on GPUs,
gloo on CPU). A plain `species-classifier train` runs as a group of one, and every
helper here works the same way for it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the torchrun process group when WORLD_SIZE > 1; returns this process's context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.info("Joined process group: rank %d of %d (%s backend, %s)", rank, world_size, backend, device)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def sum_across_ranks(values: list[float], context: DistributedContext) -> list[float]:
    """Sum a list of numbers over all processes (no-op for one process)."""
    if not context.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.to(context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def any_rank(flag: bool, context: DistributedContext) -> bool:
    """True when `flag` is true on any process, so every rank takes the same branch."""
    if not context.enabled:
        return flag
    return sum_across_ranks([1.0 if flag else 0.0], context)[0] > 0


def gather_arrays(arrays: dict[str, np.ndarray], context: DistributedContext) -> dict[str, np.ndarray]:
    """Concatenate each named array over all processes, in rank order."""
    if not context.enabled:
        return arrays
    gathered: list[dict[str, np.ndarray]] = [{} for _ in range(context.world_size)]
    dist.all_gather_object(gathered, arrays)
    return {name: np.concatenate([part[name] for part in gathered]) for name in arrays}


class EpochSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one epoch, sharded over ranks, resumable mid-epoch.

    The order of epoch E is a permutation drawn from `seed + E`, so a restarted process
    reproduces it, and `start` skips the samples this rank already trained on. When
    shuffling, the permutation is cut to a multiple of world_size, so every rank gets the
    same number of samples. The cut-off samples change every epoch. Rank r takes
    positions r, r + world_size, ... Without shuffling nothing is cut, for validation.
    """

    def __init__(self, size: int, context: DistributedContext, shuffle: bool, seed: int = 0):
        self.size = size
        self.rank = context.rank
        self.world_size = context.world_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
            order = order[: self.size // self.world_size * self.world_size]
        else:
            order = list(range(self.size))
        return order[self.rank :: self.world_size][self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return len(self.indices())
