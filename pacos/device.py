"""Which device and number format to compute in: one place for every stage (inference, training, scoring,
embeddings), so that "bf16 where it is native" means the same everywhere."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import torch

from pacos.errors import PacosError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}  # fmt: skip


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matrix work runs natively (elsewhere it is emulated, slower than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def auto_device() -> torch.device:
    """A CUDA GPU when PyTorch sees one, else the CPU (inference; training also takes Apple's MPS)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_device(kind: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: CUDA, else MPS, else CPU; a CUDA device is made current for this process's local rank."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise PacosError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU")
        if local_rank >= (count := torch.cuda.device_count()):  # torchrun started more processes than GPUs
            raise PacosError(
                f"process LOCAL_RANK={local_rank} needs a GPU of its own, but PyTorch sees {count} here: "
                f"start at most {count} per machine (torchrun --nproc_per_node {count})"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(kind)


def auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware computes it natively (Ampere+ GPUs, CPUs with AMX or AVX512-BF16)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
HEAP_LIMIT = 1 << 20  # blocks from 1 MiB up are mapped on their own and given back when freed


def return_freed_memory() -> bool:
    """Make glibc give large freed blocks back to the system at once. By default it keeps blocks of up to
    32 MiB in its heap for reuse; a training step frees and allocates thousands of 1-30 MiB activations in
    changing sizes, and the heap fragments: a LoRA DPO step on Gemma 3 270M peaked at 3.5 GB of RSS
    instead of 2.1 GB (benchmarks/README.md, bench_dpo). False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_LIMIT))
