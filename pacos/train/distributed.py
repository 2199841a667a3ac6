"""Process groups, devices and model wrapping. The engines are PyTorch's own (DDP, FSDP2 `fully_shard`);
pacos only picks them, under `torchrun` or `accelerate launch` (both set RANK/WORLD_SIZE/LOCAL_RANK)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import distributed as dist
from torch import nn

from pacos.device import cpu_has_fast_bf16, pick_device
from pacos.errors import PacosError

CPU = torch.device("cpu")


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """Where this process trains; `Runtime()` is one process on the CPU in fp32."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = CPU
    strategy: str = "single"  # "single", "ddp" or "fsdp"
    autocast_dtype: torch.dtype | None = None  # bf16 autocast on GPU, None for plain fp32
    param_dtype: torch.dtype = torch.float32
    precision_note: str = ""  # why the precision asked for was not used (a CPU without native bf16)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def precision(self) -> str:
        """What the run computes in, named as the `precision` setting names it."""
        if self.autocast_dtype is not None:
            return "bf16-mixed"
        return "bf16" if self.param_dtype == torch.bfloat16 else "fp32"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def autocast(runtime: Runtime) -> torch.autocast:
    """The run's mixed-precision context (bf16 on GPUs and native-bf16 CPUs, a no-op for fp32)."""
    return torch.autocast(
        runtime.device.type,
        runtime.autocast_dtype or torch.float32,
        enabled=runtime.autocast_dtype is not None,
    )


def setup(device: str = "auto", precision: str = "auto", strategy: str = "auto") -> Runtime:
    """Start the process group when launched by torchrun/accelerate; pick device and precision."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    note = ""
    if precision == "auto":
        precision = "bf16-mixed" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    elif precision.startswith("bf16") and dev.type == "cpu" and not cpu_has_fast_bf16():
        # Emulated bf16 is several times slower than fp32 (a 2-step LoRA run: minutes, not seconds).
        note, precision = f"this CPU has no native bf16 (AMX, AVX512-BF16): {precision} -> fp32", "fp32"
    autocast = torch.bfloat16 if precision == "bf16-mixed" else None
    param_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    chosen = "single" if world_size == 1 else ("ddp" if strategy == "auto" else strategy)
    return Runtime(
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        device=dev,
        strategy=chosen,
        autocast_dtype=autocast,
        param_dtype=param_dtype,
        precision_note=note,
    )


def _decoder_layer_classes(model: nn.Module) -> tuple[type, ...]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        raise PacosError(f"FSDP: cannot find the decoder layers of {type(model).__name__} to shard")
    return tuple(found)


def wrap(module: nn.Module, hf_model: nn.Module, runtime: Runtime) -> nn.Module:
    """DDP replicates; FSDP shards every decoder layer, then the rest (embeddings, norm, head)."""
    if runtime.strategy == "single":
        return module
    if runtime.strategy == "ddp":
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=runtime.autocast_dtype, reduce_dtype=torch.float32)
    layer_types = _decoder_layer_classes(hf_model)
    for sub in hf_model.modules():
        if isinstance(sub, layer_types):
            fully_shard(sub, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    return module


@contextlib.contextmanager
def no_gradient_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """Accumulate locally on all but the last micro-batch of a step."""
    if skip and isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
        return
    if skip and hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


def all_reduce_sum(value: float | int, runtime: Runtime) -> float:
    if not runtime.distributed:
        return float(value)
    tensor = torch.tensor(
        float(value), dtype=torch.float64, device=runtime.device if runtime.device.type == "cuda" else "cpu"
    )
    dist.all_reduce(tensor)
    return float(tensor)


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
