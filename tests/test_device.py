"""Process-level settings of pacos.device that change what a run costs."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocate blocks of 2-8 MiB between small ones that stay alive (as a training step's activations lie
# between its small tensors, after earlier steps freed blocks as large), free the blocks, and report how
# much memory the process still holds: with glibc's defaults, then after return_freed_memory().
PROGRAM = """
import numpy as np
from pacos.device import return_freed_memory
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
def held():
    before, big, small = rss(), [], []
    for i in range(120):
        big.append(np.ones((2 + i % 7) << 17))  # 2-8 MiB, touched
        small.append(np.ones(64 << 10 >> 3))  # 64 KiB, kept
    del big
    return rss() - before
warm = np.ones(8 << 17)  # freeing an 8 MiB block raises glibc's default threshold past the sizes above
del warm
off = held()
print(off, return_freed_memory(), held())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_large_blocks_go_back_to_the_system():
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True)
    off, applied, on = out.stdout.split()
    assert applied == "True"
    assert int(on) < 60 < 300 < int(off), out.stdout  # ~8 MiB of small blocks vs most of 600 MB kept


def test_more_processes_than_gpus_is_a_one_line_error(monkeypatch):
    import torch

    from pacos.device import pick_device
    from pacos.errors import PacosError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(PacosError, match=r"LOCAL_RANK=1 needs a GPU of its own, but PyTorch sees 1 here"):
        pick_device("cuda", local_rank=1)
