"""Attention for packed rows on CPUs: one causal SDPA call per example instead of one over the whole row.

A packed row of 4 examples, ~700 tokens, under transformers' SDPA path attends through a dense
[row, row] block-diagonal mask: every example pays for the others' positions, and the masked kernel is
the slow one. On 2 CPU cores that was a quarter of a Gemma 3 270M LoRA step (profile in
benchmarks/README.md, "Packed attention"). Split per example, each call is plain causal attention over
its own tokens: (sum of n_i^2) work instead of (sum of n_i)^2, and the fast unmasked kernel.

It is registered with transformers' AttentionInterface under NAME; transformers builds no mask for
a name it does not know, so the example boundaries come from `cu_seq_lens_q`, which the loss passes
through the model's kwargs (the same keyword flash-attention's varlen path reads). GPUs with
flash-attn get the same effect from `attn_implementation: flash_attention_2`.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F

NAME = "pacos_packed_sdpa"


def packed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, heads, tokens, dim]
    key: torch.Tensor,  # [1, kv heads, tokens, dim]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError(f"{NAME} takes one packed row without a mask (training with packing: true)")
    if kwargs.get("softcap") is not None:
        raise ValueError(f"{NAME} cannot soft-cap attention logits (Gemma 2); use attn_implementation eager")
    tokens = query.shape[2]
    bounds = [0, tokens] if cu_seq_lens_q is None else cu_seq_lens_q.tolist()
    gqa = query.shape[1] != key.shape[1]
    outputs = []
    for start, end in itertools.pairwise(bounds):
        q, k, v = (t[:, :, start:end] for t in (query, key, value))
        mask = None
        if sliding_window is not None and end - start > sliding_window:
            i = torch.arange(end - start, device=query.device)
            distance = i[:, None] - i[None, :]
            mask = (distance >= 0) & (distance < sliding_window)
        outputs.append(
            F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=mask is None,
                scale=scaling,
                enable_gqa=gqa,
            )
        )
    out = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_sdpa)
    return NAME


def example_bounds(position_ids: torch.Tensor) -> torch.Tensor:
    """[0, start of example 2, ..., row length] from a packed row's restarting positions."""
    row = position_ids[0]
    starts = torch.nonzero(row == 0).flatten()
    return torch.cat([starts, torch.tensor([len(row)], device=row.device)]).to(torch.int32)
