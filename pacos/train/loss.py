"""Response-only loss without the [batch, seq, vocab] logits.

Gemma's vocabulary has 262,144 entries: full logits for 4 x 512 tokens take 2 GiB in fp32, and the LM
head is the most expensive matmul of a 270M model. So the LM head runs only at labelled positions, in
chunks, and each chunk's gradient is computed in the same pass (logits are never stored for backward
and never recomputed): two matmuls per chunk instead of the three that checkpointing would need.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch import nn

from pacos.errors import first_line
from pacos.train import attention as packed_attention
from pacos.train.data import IGNORE


def _loss_only(
    logits: torch.Tensor, y: torch.Tensor, softcap: float | None, acc: torch.dtype
) -> torch.Tensor:
    logits = logits.to(acc)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return (torch.logsumexp(logits, dim=-1) - logits.gather(1, y[:, None]).squeeze(1)).sum()


def _position_losses(
    per_position: torch.Tensor, weights: torch.Tensor | None, unlike: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(summed loss, the factor on each row's softmax - one-hot gradient; None: 1).

    Rows with unlike > 0 are targets to unlearn: loss unlike * -log(1 - p_target), whose gradient is
    -unlike * p / (1 - p) times the cross-entropy's (sequence-level unlikelihood, Welleck et al. 2019)."""
    if weights is None and unlike is None:
        return per_position.sum(), None
    w = torch.ones_like(per_position) if weights is None else weights
    if unlike is None:
        return (per_position * w).sum(), w
    p = torch.exp(-per_position).clamp(max=1 - 1e-6)
    flagged = unlike > 0
    loss = torch.where(flagged, -unlike * torch.log1p(-p), per_position * w).sum()
    return loss, torch.where(flagged, -unlike * p / (1 - p), w)


def _capped_logits(
    logits: torch.Tensor, softcap: float | None, acc: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(logits in `acc`, capped if the model caps them, tanh(logits / softcap) or None, logsumexp)."""
    full = logits.to(acc)
    capped = None
    if softcap:  # Gemma 2 caps logits with tanh; the gradient passes through the cap
        capped = torch.tanh(full / softcap)
        full = capped * softcap
    return full, capped, torch.logsumexp(full, dim=-1)


def _ce_grad_eager(
    logits: torch.Tensor,
    y: torch.Tensor,
    softcap: float | None,
    acc: torch.dtype,
    out: torch.dtype,
    weights: torch.Tensor | None = None,
    unlike: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed CE, d CE / d logits in dtype `out`), with the softmax and sums in `acc`; each position's
    CE times `weights` [chunk], and `unlike` rows unlearned (_position_losses), where given."""
    full, capped, lse = _capped_logits(logits, softcap, acc)
    loss, row_factor = _position_losses(lse - full.gather(1, y[:, None]).squeeze(1), weights, unlike)
    # Out of place on purpose: compiled, softmax - one-hot and the cast fuse into one pass.
    onehot = torch.arange(full.shape[1], device=y.device)[None, :] == y[:, None]
    grad = torch.exp(full - lse[:, None]) - onehot.to(acc)
    if row_factor is not None:
        grad = grad * row_factor[:, None]
    if softcap:
        grad *= 1 - capped.square()
    return loss, grad.to(out)


# The elementwise part of a chunk (cast, logsumexp, softmax - one-hot, cast back) reads and writes the
# [chunk, vocab] logits several times in eager mode: with Gemma's 262K vocabulary that was 15% of a CPU
# LoRA step. Compiled, it is one fused pass per reduction (3.7x faster here; benchmarks/README.md,
# "Fused loss"). Compiled once per process on first use (~7 s, dynamic shapes); where compiling fails
# (no C++ compiler for inductor), the eager version, with the same results.
_compiled: dict[str, Any] = {}
_COMPILE = os.environ.get("PACOS_COMPILE_LOSS", "1") != "0"


def _compiled_or_eager(name: str, eager: Any, *args: Any) -> Any:
    fn = _compiled.get(name)
    if fn is None:
        fn = _compiled[name] = torch.compile(eager, dynamic=True) if _COMPILE else eager
    try:
        return fn(*args)
    except Exception as e:  # inductor needs a working C++ toolchain; the eager path is always there
        if fn is eager:
            raise
        print(f"[train] compiled loss unavailable ({first_line(e)}); using the eager loss", file=sys.stderr)
        _compiled[name] = eager
        return eager(*args)


def _ce_unlikelihood_grad_eager(
    logits: torch.Tensor,
    y: torch.Tensor,
    softcap: float | None,
    acc: torch.dtype,
    out: torch.dtype,
    columns: torch.Tensor,
    candidate: torch.Tensor,
    alpha: float,
    weights: torch.Tensor | None = None,
    unlike: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As _ce_grad_eager, plus alpha * sum_c -log(1 - p_c) over each row's candidates: the tokens
    `columns` [M] where `candidate` [chunk, M] is 1. The gradient on logit j gains a_j [j in C] -
    p_j sum_c a_c, with a_c = alpha p_c / (1 - p_c). The dense part only rescales each row's softmax, so
    it fuses into the one pass over [chunk, vocab]; the sparse part, a [chunk, M], is returned for the
    caller to apply to the few candidate rows of the head (never scattered into the dense gradient)."""
    full, capped, lse = _capped_logits(logits, softcap, acc)
    ce, row_factor = _position_losses(lse - full.gather(1, y[:, None]).squeeze(1), weights, unlike)
    at_columns = full[:, columns]
    p_candidate = torch.exp(at_columns - lse[:, None]).clamp(max=1 - 1e-6) * candidate
    ul = -torch.log1p(-p_candidate).sum()
    a = alpha * p_candidate / (1 - p_candidate)
    onehot = torch.arange(full.shape[1], device=y.device)[None, :] == y[:, None]
    w = 1.0 if row_factor is None else row_factor[:, None]
    grad = torch.exp(full - lse[:, None]) * (w - a.sum(1, keepdim=True)) - w * onehot.to(acc)
    if softcap:
        grad *= 1 - capped.square()
        a = a * (1 - (at_columns / softcap).square())  # capped at the columns: at_columns / softcap
    return ce + alpha * ul, grad.to(out), a


def first_occurrences(targets: torch.Tensor, example_ids: torch.Tensor) -> torch.Tensor:
    """True where a target token appears for the first time in its example's response."""
    index = torch.arange(targets.shape[0], device=targets.device)
    key = example_ids * (int(targets.max()) + 1) + targets
    _, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), targets.shape[0], device=targets.device)
    first = first.scatter_reduce(0, inverse, index, "amin")
    return first[inverse] == index


def unlikelihood_candidates(
    targets: torch.Tensor, example_ids: torch.Tensor, first: torch.Tensor, start: int, end: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For positions start..end-1: their example's earlier response tokens other than their own target,
    each once (Welleck et al. 2019's candidates, from the response only: copying from the input is
    often the task). Returns (the column tokens [M], a 0/1 mask [chunk, M] of each row's candidates)."""
    rows = torch.arange(start, end, device=targets.device)
    # Labelled positions of one example are contiguous: the columns start where the first row's example does.
    lo = int(torch.searchsorted(example_ids, example_ids[start : start + 1]))
    cols = torch.arange(lo, end, device=targets.device)
    mask = (
        (example_ids[None, lo:end] == example_ids[start:end, None])
        & (cols[None, :] < rows[:, None])
        & first[None, lo:end]
        & (targets[None, lo:end] != targets[start:end, None])
    )
    return targets[lo:end], mask


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i @ W.T + b, y_i), with d/dh, d/dW, d/db computed chunk by chunk in forward."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_size: int,
        softcap: float | None,
        unlikelihood: float,
        example_ids: torch.Tensor | None,
        weights: torch.Tensor | None,
        unlike: torch.Tensor | None,
    ) -> torch.Tensor:
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        acc = torch.promote_types(weight.dtype, torch.float32)  # softmax and sums in fp32 (or fp64) at least
        master_dtype = weight.dtype
        device = hidden.device.type
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) != weight.dtype:
            # One cast of the [vocab, hidden] head per call, not one per matmul: autocast does not cache
            # casts of frozen weights.
            weight = weight.to(torch.get_autocast_dtype(device))
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=acc) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=acc) if need_b else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        use_ul = unlikelihood > 0 and example_ids is not None and (need_h or need_w or need_b)
        if use_ul:
            first = first_occurrences(targets, example_ids)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            y = targets[start : start + chunk_size]
            w = None if weights is None else weights[start : start + chunk_size].to(acc)
            u = None if unlike is None else unlike[start : start + chunk_size].to(acc)
            logits = h.to(weight.dtype) @ weight.t()
            if bias is not None:
                logits = logits.to(acc) + bias.to(acc)
            if not (need_h or need_w or need_b):
                total += _compiled_or_eager("loss_only", _loss_only, logits, y, softcap, acc)
                continue
            # The matmuls below run in the weights' dtype (bf16 tensor cores / AMX).
            sparse = None
            if use_ul:
                columns, candidate = unlikelihood_candidates(
                    targets, example_ids, first, start, start + len(y)
                )
                loss, grad_low, sparse = _compiled_or_eager(
                    "unlikelihood",
                    _ce_unlikelihood_grad_eager,
                    *(logits, y, softcap, acc, weight.dtype, columns, candidate.to(acc), unlikelihood, w, u),
                )
                sparse = sparse.to(weight.dtype)
            else:
                loss, grad_low = _compiled_or_eager(
                    "fn", _ce_grad_eager, logits, y, softcap, acc, weight.dtype, w, u
                )
            total += loss
            if need_h:
                grad_rows = grad_low @ weight
                if sparse is not None:
                    grad_rows += sparse @ weight[columns]
                grad_h[start : start + chunk_size] = grad_rows.to(hidden.dtype)
            if need_w:
                grad_w += grad_low.t() @ h.to(weight.dtype)
                if sparse is not None:
                    grad_w.index_add_(0, columns, (sparse.t() @ h.to(weight.dtype)).to(acc))
            if need_b:
                grad_b += grad_low.sum(0, dtype=acc)
                if sparse is not None:
                    grad_b.index_add_(0, columns, sparse.sum(0, dtype=acc))
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.present = (need_h, need_w, need_b)
        ctx.dtypes = (master_dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) * grad_output if present else None for present in ctx.present]
        if grads[1] is not None:
            grads[1] = grads[1].to(ctx.dtypes[0])
        if grads[2] is not None:
            grads[2] = grads[2].to(ctx.dtypes[1])
        return grads[0], grads[1], grads[2], None, None, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_size: int = 512,
    softcap: float | None = None,
    unlikelihood: float = 0.0,
    example_ids: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    unlike: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T (+ bias)` against `targets` ([N, H], [V, H], [N]).

    With `unlikelihood` > 0 and `example_ids` ([N], non-decreasing), plus that weight times the
    token-level unlikelihood loss against repeating the example's earlier targets; with `weights` [N],
    each position's cross-entropy times its weight; with `unlike` [N], rows > 0 unlearn their target
    with that weight (all three training only)."""
    return _FusedLinearCrossEntropy.apply(
        hidden, weight, bias, targets, chunk_size, softcap, unlikelihood, example_ids, weights, unlike
    )


def _backbone(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (works through PEFT wrappers)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def example_lengths(position_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[rows, length]: the length of the example each position belongs to (packed rows hold several, one
    starting wherever the position id is 0; padded rows one, as long as its mask)."""
    if attention_mask is not None:
        return attention_mask.sum(1, keepdim=True).expand_as(attention_mask)
    starts = (position_ids == 0).flatten()
    example = torch.cumsum(starts, 0) - 1
    return torch.bincount(example)[example].view_as(position_ids)


def neftune_embeddings(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    alpha: float,
) -> torch.Tensor:
    """NEFTune: the input embeddings plus uniform noise in +-alpha / sqrt(L * d), L the example's own length
    (not the padded or packed row's: the same example gets the same noise scale however it is batched)."""
    embeds = model.get_input_embeddings()(input_ids)
    scale = alpha / torch.sqrt(example_lengths(position_ids, attention_mask) * embeds.shape[-1])
    noise = torch.rand_like(embeds).mul_(2).sub_(1)
    return embeds + noise * scale.unsqueeze(-1).to(embeds.dtype)


def decoder_hidden(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    neftune_alpha: float = 0.0,
) -> torch.Tensor:
    """The decoder's last hidden states (no LM head), with per-example attention on packed rows."""
    extra: dict[str, Any] = {}
    if model.config._attn_implementation == packed_attention.NAME:
        extra["cu_seq_lens_q"] = packed_attention.example_bounds(position_ids)
    if neftune_alpha:
        extra["inputs_embeds"] = neftune_embeddings(
            model, input_ids, position_ids, attention_mask, neftune_alpha
        )
    return _backbone(model)(
        input_ids=None if neftune_alpha else input_ids,
        position_ids=position_ids,
        attention_mask=attention_mask,
        use_cache=False,
        **extra,
    ).last_hidden_state


class CausalLMLoss(nn.Module):
    """A causal LM whose forward returns (summed response loss, labelled-token count).

    Distributed wrappers (DDP, FSDP) wrap this module, so the LM head runs inside their forward.
    """

    def __init__(
        self,
        model: nn.Module,
        chunk_size: int = 512,
        unlikelihood: float = 0.0,
        eos_weight: float = 1.0,
        eos_id: int | None = None,
        loop_weight: float = 1.0,
        neftune_alpha: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.neftune_alpha = neftune_alpha
        self.chunk_size = chunk_size
        self.unlikelihood = unlikelihood
        self.eos_weight, self.eos_id = eos_weight, eos_id
        self.loop_weight = loop_weight
        config = getattr(model.config, "get_text_config", lambda: model.config)()
        self.softcap = getattr(config, "final_logit_softcapping", None)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        targets: torch.Tensor,
        unlike: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        noise = self.neftune_alpha if self.training else 0.0  # validation sees the clean embeddings
        hidden = decoder_hidden(self.model, input_ids, position_ids, attention_mask, noise)
        labelled = targets != IGNORE
        head = self.model.get_output_embeddings()
        example_ids = weights = None
        if self.unlikelihood and self.training:
            example_ids = torch.cumsum((position_ids == 0).flatten(), 0)[labelled.flatten()]
        if self.eos_weight != 1.0 and self.eos_id is not None and self.training:
            y = targets[labelled]
            weights = torch.where(y == self.eos_id, self.eos_weight, 1.0).to(hidden.dtype)
        if unlike is not None and self.training:
            unlike = unlike[labelled].to(hidden.dtype) * self.loop_weight
        else:
            unlike = None  # validation: plain cross-entropy
        loss_sum = linear_cross_entropy(
            hidden[labelled],
            head.weight,
            head.bias,
            targets[labelled],
            self.chunk_size,
            self.softcap,
            self.unlikelihood,
            example_ids,
            weights,
            unlike,
        )
        return loss_sum, labelled.sum()
