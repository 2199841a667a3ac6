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


def _ce_grad_eager(
    logits: torch.Tensor, y: torch.Tensor, softcap: float | None, acc: torch.dtype, out: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed CE, d CE / d logits in dtype `out`), with the softmax and sums in `acc`."""
    full = logits.to(acc)
    if softcap:  # Gemma 2 caps logits with tanh; the gradient passes through the cap
        capped = torch.tanh(full / softcap)
        full = capped * softcap
    lse = torch.logsumexp(full, dim=-1)
    loss = (lse - full.gather(1, y[:, None]).squeeze(1)).sum()
    # Out of place on purpose: compiled, softmax - one-hot and the cast fuse into one pass.
    onehot = torch.arange(full.shape[1], device=y.device)[None, :] == y[:, None]
    grad = torch.exp(full - lse[:, None]) - onehot.to(acc)
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


def _loss_and_grad_logits(
    logits: torch.Tensor, y: torch.Tensor, softcap: float | None, acc: torch.dtype, out: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    return _compiled_or_eager("fn", _ce_grad_eager, logits, y, softcap, acc, out)


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
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            y = targets[start : start + chunk_size]
            logits = h.to(weight.dtype) @ weight.t()
            if bias is not None:
                logits = logits.to(acc) + bias.to(acc)
            if not (need_h or need_w or need_b):
                total += _compiled_or_eager("loss_only", _loss_only, logits, y, softcap, acc)
                continue
            # The matmuls below run in the weights' dtype (bf16 tensor cores / AMX).
            loss, grad_low = _loss_and_grad_logits(logits, y, softcap, acc, weight.dtype)
            total += loss
            if need_h:
                grad_h[start : start + chunk_size] = (grad_low @ weight).to(hidden.dtype)
            if need_w:
                grad_w += grad_low.t() @ h.to(weight.dtype)
            if need_b:
                grad_b += grad_low.sum(0, dtype=acc)
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
        return grads[0], grads[1], grads[2], None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_size: int = 512,
    softcap: float | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T (+ bias)` against `targets` ([N, H], [V, H], [N])."""
    return _FusedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size, softcap)


def _backbone(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (works through PEFT wrappers)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


class CausalLMLoss(nn.Module):
    """A causal LM whose forward returns (summed response loss, labelled-token count).

    Distributed wrappers (DDP, FSDP) wrap this module, so the LM head runs inside their forward.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 512):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        config = getattr(model.config, "get_text_config", lambda: model.config)()
        self.softcap = getattr(config, "final_logit_softcapping", None)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        targets: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        extra = {}
        if self.model.config._attn_implementation == packed_attention.NAME:
            extra["cu_seq_lens_q"] = packed_attention.example_bounds(position_ids)
        hidden = _backbone(self.model)(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=False,
            **extra,
        ).last_hidden_state
        labelled = targets != IGNORE
        head = self.model.get_output_embeddings()
        loss_sum = linear_cross_entropy(
            hidden[labelled], head.weight, head.bias, targets[labelled], self.chunk_size, self.softcap
        )
        return loss_sum, labelled.sum()
