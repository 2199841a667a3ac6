"""Ragged batches for the torch backend: every row's new tokens in one forward, without padding.

A step is one flattened sequence of tokens: one token for each decoding row, then chunks of prompts being
prefilled, each token with its own position (vLLM's layout). Linear layers see [1, tokens, hidden] and
waste nothing on padding; only attention needs to know whose token is whose, so pacos registers an
attention function with transformers (`AttentionInterface`) that writes each token's key and value into
its row's slot of a preallocated cache and attends per row: all decoding rows in one masked call on a
view of the cache (the rows occupy slots 0..D-1), each prefill chunk in one causal call.

Why: a decode step no longer concatenates the whole cache (DynamicCache grows by copying), joining and
leaving copy one row, a burst of prompts is prefilled in one pass, and a prompt chunk rides in the same
forward as the decode step, so running streams keep their pace while requests are admitted.
Architectures listed in RAGGED_MODEL_TYPES use it; others keep the padded DynamicCache path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

ATTENTION = "pacos_ragged"
# Decoder-only models whose attention modules call transformers' attention interface with rotary
# positions from position_ids and nothing else from the mask (no soft-capping, no ALiBi): each checked
# against transformers' `generate` on a tiny model (tests/test_infer_engine.py).
RAGGED_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "smollm3"}


def supports_ragged(model: Any) -> bool:
    config = model.config
    return getattr(config, "model_type", None) in RAGGED_MODEL_TYPES and not getattr(
        config, "attn_logit_softcapping", None
    )


class SlotKV:
    """Keys and values of every layer, [slots, kv heads, capacity, head dim], allocated on first use
    and grown (doubling) when a row outgrows the capacity or more rows arrive."""

    def __init__(self, slots: int, capacity: int, limit: int) -> None:
        self.slots, self.capacity, self.limit = slots, capacity, limit
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def ensure(self, slots: int, length: int) -> None:
        if slots <= self.slots and length <= self.capacity:
            return
        new_slots = max(slots, self.slots)
        new_capacity = self.capacity
        while new_capacity < length:
            new_capacity *= 2
        new_capacity = max(min(new_capacity, self.limit), length)
        for store in (self.keys, self.values):
            for layer, old in store.items():
                grown = old.new_zeros(new_slots, old.shape[1], new_capacity, old.shape[3])
                grown[: old.shape[0], :, : old.shape[2]] = old
                store[layer] = grown
        self.slots, self.capacity = new_slots, new_capacity

    def layer(self, index: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if index not in self.keys:
            shape = (self.slots, like.shape[1], self.capacity, like.shape[3])
            self.keys[index] = like.new_zeros(shape)
            self.values[index] = like.new_zeros(shape)
        return self.keys[index], self.values[index]

    def move(self, source: int, target: int, length: int) -> None:
        """Copy a row's first `length` positions to another slot."""
        for store in (self.keys, self.values):
            for buffer in store.values():
                buffer[target, :, :length] = buffer[source, :, :length]

    def swap(self, a: int, b: int, length: int) -> None:
        for store in (self.keys, self.values):
            for buffer in store.values():
                kept = buffer[a, :, :length].clone()
                buffer[a, :, :length] = buffer[b, :, :length]
                buffer[b, :, :length] = kept


@dataclass(eq=False)  # rows are compared by identity
class RowSlot:
    """A row being prefilled: its slot (which may change while it waits) and its length so far."""

    slot: int
    length: int = 0


@dataclass
class RaggedBatch:
    """The backend's state: decoding rows in slots 0..D-1 (their lengths), and rows being prefilled."""

    kv: SlotKV
    lengths: list[int] = field(default_factory=list)
    prefilling: list[RowSlot] = field(default_factory=list)

    def new_row(self) -> RowSlot:
        used = {row.slot for row in self.prefilling}
        slot = next((s for s in range(self.kv.slots - 1, len(self.lengths) - 1, -1) if s not in used), None)
        if slot is None:  # every slot taken: one more
            slot = self.kv.slots
            self.kv.ensure(slot + 1, self.kv.capacity)
        row = RowSlot(slot)
        self.prefilling.append(row)
        return row

    def drop(self, row: RowSlot) -> None:
        if row in self.prefilling:
            self.prefilling.remove(row)

    def join(self, row: RowSlot) -> None:
        """A prefilled row becomes decoding row D: its data moves to slot D (swapping with a row that is
        still prefilling there)."""
        target = len(self.lengths)
        self.prefilling.remove(row)
        if row.slot != target:
            other = next((r for r in self.prefilling if r.slot == target), None)
            if other is None:
                self.kv.move(row.slot, target, row.length)
            else:
                self.kv.swap(row.slot, target, max(row.length, other.length))
                other.slot = row.slot
        self.lengths.append(row.length)

    def keep(self, rows: list[int]) -> None:
        """Only these decoding rows, compacted into slots 0..len(rows)-1 in order."""
        for new, old in enumerate(rows):
            if new != old:
                self.kv.move(old, new, self.lengths[old])
        self.lengths = [self.lengths[old] for old in rows]


@dataclass
class RaggedStep:
    """What the attention function needs to know about one flattened step."""

    batch: RaggedBatch
    decode_rows: int
    decode_positions: torch.Tensor  # [D] position of each decoding row's new token
    decode_length: int  # cache positions the decoding rows attend over: the longest row's, plus one
    write_slots: torch.Tensor  # [T] slot of every token in the step
    write_positions: torch.Tensor  # [T] its position
    chunks: list[tuple[int, int, int, int]]  # (slot, start position, tokens, offset in the step)
    masks: dict[Any, torch.Tensor] = field(default_factory=dict)

    def decode_mask(self, window: int | None, length: int) -> torch.Tensor:
        key = ("decode", window)
        if key not in self.masks:
            pos = self.decode_positions[:, None]
            j = torch.arange(length, device=pos.device)[None, :]
            visible = j <= pos
            if window:
                visible &= j > pos - window
            self.masks[key] = visible[:, None, None, :]
        return self.masks[key]

    def chunk_mask(self, index: int, window: int | None) -> torch.Tensor:
        key = (index, window)
        if key not in self.masks:
            _, start, n, _ = self.chunks[index]
            q = torch.arange(start, start + n, device=self.decode_positions.device)[:, None]
            j = torch.arange(start + n, device=q.device)[None, :]
            visible = j <= q
            if window:
                visible &= j > q - window
            self.masks[key] = visible
        return self.masks[key]


def ragged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [1, heads, T, dim], key/value [1, kv heads, T, dim] for the step's tokens; returns [1, T,
    heads, dim] as transformers' attention functions do."""
    plan: RaggedStep | None = kwargs.pop("pacos_step", None)
    if plan is None:  # a plain forward (a caller using the model directly): transformers' SDPA path
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    keys, values = plan.batch.kv.layer(module.layer_idx, key)
    keys[plan.write_slots, :, plan.write_positions] = key[0].transpose(0, 1)
    values[plan.write_slots, :, plan.write_positions] = value[0].transpose(0, 1)
    # Grouped-query attention without copying keys: the query heads that share a key head are stacked
    # as extra query positions of that head (transformers maps query head h to key head h // group).
    heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[3]
    group = heads // kv_heads
    outputs = []
    rows = plan.decode_rows
    if rows:
        length = plan.decode_length
        q = query[0, :, :rows].transpose(0, 1).reshape(rows, kv_heads, group, dim)
        out = F.scaled_dot_product_attention(
            q,
            keys[:rows, :, :length],
            values[:rows, :, :length],
            attn_mask=plan.decode_mask(sliding_window, length),
            scale=scaling,
        )
        outputs.append(out.reshape(rows, heads, dim))
    for index, (slot, start, n, offset) in enumerate(plan.chunks):
        q = query[0, :, offset : offset + n].reshape(kv_heads, group * n, dim)
        out = F.scaled_dot_product_attention(
            q,
            keys[slot, :, : start + n],
            values[slot, :, : start + n],
            attn_mask=plan.chunk_mask(index, sliding_window).repeat(group, 1),
            scale=scaling,
        )
        outputs.append(out.reshape(heads, n, dim).transpose(0, 1))
    return torch.cat(outputs).unsqueeze(0), None


# A ragged step passes this as the attention mask: transformers takes a 4-D mask as already built and
# skips building its own (the attention function above makes each row's mask itself).
NO_MASK = torch.ones(1, 1, 1, 1, dtype=torch.bool)


def register() -> None:
    """Make the attention function known to transformers, with SDPA's masks for plain forwards."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION, ragged_attention)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
