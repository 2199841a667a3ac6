"""Response-only loss and perplexity of a model on a dataset: training's own code, so the number means
exactly what `val_loss` means in a training run (mean loss per response token, EOS included)."""

from __future__ import annotations

import math
from typing import Any

import torch

from pacos.data.io import read_records
from pacos.errors import PacosError


def dataset_loss(
    model: str, data: str, *, template: str | None = None, max_length: int = 2048, micro_batch_size: int = 4
) -> dict[str, Any]:
    from pacos.infer.loading import load_for_inference
    from pacos.train.config import TrainConfig
    from pacos.train.data import tokenize_records
    from pacos.train.distributed import Runtime
    from pacos.train.loss import CausalLMLoss
    from pacos.train.validation import validation_loss

    records = read_records(data)
    hf_model, tokenizer, chosen = load_for_inference(
        model, torch.float32, torch.device("cpu"), template, False
    )
    examples, report = tokenize_records(records, tokenizer, chosen, max_length, "drop")
    if not examples:
        raise PacosError(f"{data}: no example fits in {max_length} tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = TrainConfig(micro_batch_size=micro_batch_size, max_length=max_length)
    runtime = Runtime()
    loss = validation_loss(CausalLMLoss(hf_model), examples, settings, int(pad or 0), runtime)
    return {
        "data": data,
        "template": chosen,
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),  # capped: infinity would be invalid JSON
        "examples": len(examples),
        "dropped_too_long": report.dropped_too_long,
        "response_tokens": report.response_tokens,
    }
