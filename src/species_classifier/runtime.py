"""CPU and device settings that make training and inference fast by default.

On CPU, training is markedly faster with channels_last and with glibc's malloc set to
keep freed memory for reuse instead of returning it to the kernel after every large
activation tensor. `benchmarks/training/throughput.py` measures both. The allocator
reads its settings only at process start, so the CLI re-executes itself once with them
set (see `reexec_with_tuned_allocator`).
"""

from __future__ import annotations

import logging
import os
import platform
import sys

import torch

log = logging.getLogger(__name__)

# glibc malloc tunables. The mmap threshold is capped by glibc at 32 MiB on 64-bit
# systems; the trim threshold has no cap.
TUNED_ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(16 * 1024 * 1024 * 1024),
}
DISABLE_ENV = "SPECIES_CLASSIFIER_NO_ALLOCATOR_TUNING"


def allocator_is_tuned() -> bool:
    return all(key in os.environ for key in TUNED_ALLOCATOR_ENV)


def reexec_with_tuned_allocator() -> None:
    """Restart this process with the tuned glibc malloc settings, once.

    Does nothing off Linux/glibc, when the settings are already present, or when
    SPECIES_CLASSIFIER_NO_ALLOCATOR_TUNING is set.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return
    if allocator_is_tuned() or os.environ.get(DISABLE_ENV):
        return
    environment = {**os.environ, **TUNED_ALLOCATOR_ENV}
    arguments = [sys.executable, "-m", "species_classifier", *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, arguments, environment)


def available_cores() -> int:
    """Return the cores this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def configure_threads(threads: int = 0) -> int:
    """Set PyTorch's intra-op threads; 0 means one per available core."""
    count = threads if threads > 0 else available_cores()
    torch.set_num_threads(count)
    return count


def default_workers() -> int:
    """Data-loader worker processes: one per core beyond the first, at most 8."""
    return max(1, min(8, available_cores() - 1))


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU; any other value goes to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
