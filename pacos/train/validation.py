"""Validation loss: the mean loss per response token of a model on examples, in the run's precision and
across its processes. `pacos train` logs it as `val_loss`; `pacos eval --loss` reports the same number."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pacos.train import distributed as dist_utils
from pacos.train.config import TrainConfig
from pacos.train.data import micro_batches


@torch.no_grad()
def validation_loss(
    loss_model: torch.nn.Module,
    examples: list[Any],
    config: TrainConfig,
    pad_id: int,
    runtime: dist_utils.Runtime,
    batches: Callable[..., list[Any]] = micro_batches,
) -> float:
    """Mean loss per response token (per pair, for preference objectives: `batches` makes their batches)
    over the validation examples, sharded over processes."""
    usable = len(examples) - len(examples) % runtime.world_size  # equal shards: FSDP needs equal call counts
    shard = list(range(runtime.rank, usable, runtime.world_size))
    loss_model.eval()
    total = count = 0.0
    for batch in batches(examples, shard, config.micro_batch_size, pad_id, config.packing):
        batch = batch.to(runtime.device)
        with dist_utils.autocast(runtime):
            loss_sum, n = loss_model(
                batch.input_ids, batch.position_ids, batch.attention_mask, batch.targets, **batch.extra
            )
        total, count = total + float(loss_sum), count + float(n)
    loss_model.train()
    return dist_utils.all_reduce_sum(total, runtime) / max(dist_utils.all_reduce_sum(count, runtime), 1.0)
