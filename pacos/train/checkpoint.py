"""Resumable checkpoints: trainable weights, optimizer, scheduler, data position and RNG state.

A checkpoint directory appears only when complete (written beside, then renamed), so a run killed while
saving resumes from the previous one. Weights are safetensors; optimizer and RNG state are loaded with
`torch.load(weights_only=True)`. `torch.distributed.checkpoint.state_dict` gathers full state dicts
from plain, DDP and FSDP models alike (with FSDP on rank 0 only, offloaded to CPU, so it fits).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from pacos.errors import PacosError, first_line
from pacos.fileio import atomic_dir
from pacos.train.distributed import Runtime, barrier

_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state(runtime: Runtime) -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def set_rng_state(state: dict[str, Any], runtime: Runtime) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and runtime.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], runtime.device)


def _options(trainable_only: bool, distributed: bool, **extra: Any) -> StateDictOptions:
    return StateDictOptions(
        full_state_dict=True, cpu_offload=distributed, ignore_frozen_params=trainable_only, **extra
    )


def full_model_state(model: nn.Module, runtime: Runtime, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The whole (or trainable) model state on rank 0, gathered on CPU; {} on other ranks."""
    state = get_model_state_dict(model, options=_options(trainable_only, runtime.distributed))
    return state if runtime.is_main else {}


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied embeddings): store each once.
    seen: dict[int, str] = {}
    out = {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        if ptr in seen and tensor.numel():
            continue
        seen[ptr] = name
        out[name] = tensor.detach().contiguous().cpu()
    return out


def save_checkpoint(
    directory: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    runtime: Runtime,
    trainable_only: bool,
    keep: int,
    extra_files: dict[str, str] | None = None,
) -> Path | None:
    model_state, optim_state = get_state_dict(
        model, optimizer, options=_options(trainable_only, runtime.distributed)
    )
    rng = rng_state(runtime)
    target = directory / f"step-{step:06d}"
    # Every rank writes its RNG state; rank 0 writes the rest, then publishes the directory.
    staging = directory / f".step-{step:06d}.staging"
    if runtime.is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier(runtime)
    torch.save(rng, staging / f"rng-rank{runtime.rank}.pt")
    barrier(runtime)
    if runtime.is_main:
        with atomic_dir(target) as tmp:
            for item in staging.iterdir():
                item.rename(tmp / item.name)
            save_file(_contiguous(model_state), tmp / "model.safetensors")
            torch.save(optim_state, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
        shutil.rmtree(staging, ignore_errors=True)
        for old in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(runtime)
    return target if runtime.is_main else None


def list_checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    runtime: Runtime,
    trainable_only: bool,
) -> dict[str, Any]:
    """Restore everything saved by `save_checkpoint`; returns the trainer state."""
    try:
        trainer_state = json.loads((path / "trainer_state.json").read_text())
        weights = load_file(path / "model.safetensors")
        optim_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng_file = path / f"rng-rank{runtime.rank}.pt"
        rng = torch.load(rng_file, weights_only=True) if rng_file.exists() else None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise PacosError(f"{path}: cannot read the checkpoint: {first_line(e)}") from None
    # Tied weights were stored once; the model's state dict may list them under both names.
    expected = get_model_state_dict(model, options=_options(trainable_only, runtime.distributed))

    def storage(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    for name, tensor in expected.items():
        if name not in weights:
            twin = next(
                (k for k, v in expected.items() if k in weights and storage(v) == storage(tensor)), None
            )
            if twin is None:
                raise PacosError(f"{path}: checkpoint has no weights for '{name}' (another model or method?)")
            weights[name] = weights[twin]
    set_state_dict(
        model,
        optimizer,
        model_state_dict=weights,
        optim_state_dict=optim_state,
        options=_options(trainable_only, runtime.distributed, strict=not trainable_only),
    )
    if rng is not None:
        set_rng_state(rng, runtime)
    return trainer_state
