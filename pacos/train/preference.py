"""Preference objectives: the model learns from comparisons of answers instead of imitating one.

Each loss reads every answer's log-probability under the policy, summed over its response tokens and EOS
(the tokens inference would generate), from train/pairs.py's batches:

- DPO (Rafailov et al. 2023): -log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)]), with label smoothing
  (cDPO: that share of pairs assumed flipped). At the first step pi = ref, so every pair's loss is ln 2.
- SimPO (Meng et al. 2024): no reference; -log sigmoid(beta * (avg_c - avg_r) - gamma) on log-probs
  averaged per token, gamma = simpo_gamma * beta (TRL's CPOTrainer, loss_type "simpo").
- ORPO (Hong et al. 2024): no reference; the chosen answer's mean token NLL - beta * log sigmoid(log odds
  ratio), the odds of an answer being p / (1 - p) with p its per-token average probability.
- KTO (Ethayarajh et al. 2024): desirable answers lambda_D * (1 - sigmoid(beta * (r - z0))), undesirable
  lambda_U * (1 - sigmoid(beta * (z0 - r))), r = pi - ref, z0 = max(0, mean r over the batch) held constant
  (the paper estimates z0 from mismatched answers; the batch's own rewards save one forward pass).

`sft_weight` adds the chosen answer's mean token NLL to each pair's loss (RPO, LLaMA-Factory's pref_ftx),
which keeps both answers' probabilities from falling together; in it the EOS target can count `eos_weight`
times, as in SFT (the token that decides where an answer ends). The module returns (summed loss, units),
as every objective does, and keeps the numbers people watch (reward margins, preference accuracy, chosen
and rejected log-probs) for the training log.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pacos.train.config import PreferenceConfig
from pacos.train.data import IGNORE, Batch
from pacos.train.loss import decoder_hidden

PAIRED = ("dpo", "simpo", "orpo")
NEEDS_REFERENCE = ("dpo", "kto")


def _token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    softcap: float | None,
) -> torch.Tensor:
    logits = (hidden.to(weight.dtype) @ weight.t()).float()
    if bias is not None:
        logits = logits + bias.float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


class _FrozenHeadLogProbs(torch.autograd.Function):
    """log p(y_t) per row with a frozen LM head: the gradient of log p(y_t) with respect to row t's hidden
    state, (onehot - softmax) @ W, is an [N, H] tensor computed in forward, chunk by chunk; backward only
    scales it by each row's incoming gradient. Two head matmuls per chunk, no [N, vocab] kept."""

    @staticmethod
    def forward(ctx: Any, hidden, weight, bias, targets, chunk_size: int, softcap: float | None):
        device = hidden.device.type
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) != weight.dtype:
            weight = weight.to(torch.get_autocast_dtype(device))  # one cast per call, not per matmul
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size].to(weight.dtype)
            y = targets[start : start + chunk_size]
            logits = (h @ weight.t()).float()
            if bias is not None:
                logits += bias.float()
            capped = None
            if softcap:
                capped = torch.tanh(logits / softcap)
                logits = capped * softcap
            # One [chunk, vocab] buffer, the logits', for everything (logsumexp would allocate another):
            # the picked logit first, then exp(logits - max) in place, then -softmax, then onehot - softmax.
            picked = logits.gather(1, y[:, None]).squeeze(1)
            top = logits.amax(dim=-1, keepdim=True)
            d = logits.sub_(top).exp_()
            total = d.sum(dim=-1, keepdim=True)
            out[start : start + len(y)] = picked - (top + total.log()).squeeze(1)
            d.div_(total).neg_()
            d.scatter_add_(1, y[:, None], torch.ones_like(y, dtype=d.dtype)[:, None])
            if capped is not None:
                d *= 1 - capped.square()
            grad[start : start + len(y)] = (d.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_out[:, None].to(grad.dtype), None, None, None, None, None


def token_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_size: int = 512,
    softcap: float | None = None,
) -> torch.Tensor:
    """log p(target) at each row of `hidden` [N, H], without ever holding [N, vocab] logits. A frozen head
    (LoRA, frozen embeddings): _FrozenHeadLogProbs. A trained head: each chunk's logits are recomputed in
    backward (its gradient needs every answer's loss coefficient, known only after all chunks)."""
    trains_head = weight.requires_grad or (bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and hidden.requires_grad and not trains_head:
        return _FrozenHeadLogProbs.apply(hidden, weight, bias, targets, chunk_size, softcap)
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and (hidden.requires_grad or trains_head):
            pieces.append(checkpoint(_token_logps, h, weight, bias, y, softcap, use_reentrant=False))
        else:
            pieces.append(_token_logps(h, weight, bias, y, softcap))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def dpo_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    logits = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing


def simpo_losses(
    avg_chosen: torch.Tensor,
    avg_rejected: torch.Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    logits = beta * (avg_chosen - avg_rejected) - gamma * beta
    return -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing


def orpo_losses(avg_chosen: torch.Tensor, avg_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    def log_odds(avg: torch.Tensor) -> torch.Tensor:  # log(p / (1 - p)), p = exp(avg)
        return avg - torch.log1p(-torch.exp(avg).clamp(max=1 - 1e-7))

    return -avg_chosen - beta * F.logsigmoid(log_odds(avg_chosen) - log_odds(avg_rejected))


def kto_losses(
    logps: torch.Tensor,
    reference: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    rewards = logps - reference
    z0 = rewards.detach().mean().clamp(min=0)
    return torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (rewards - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - rewards))),
    )


class PreferenceLoss(nn.Module):
    """The policy's forward on a batch of answers, and the objective's loss summed over its units."""

    def __init__(
        self,
        model: nn.Module,
        objective: str,
        settings: PreferenceConfig,
        chunk_size: int = 512,
        eos_id: int | None = None,
        eos_weight: float = 1.0,
    ):
        super().__init__()
        self.eos_id, self.eos_weight = eos_id, eos_weight
        self.model = model
        self.objective = objective
        self.settings = settings
        self.beta = settings.beta_for(objective)
        # Rows per [rows, vocab] slab of logits: 256 rows of Gemma's 262K vocabulary are 268 MB in fp32.
        self.chunk_size = min(chunk_size, 256)
        config = getattr(model.config, "get_text_config", lambda: model.config)()
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self._stats: dict[str, float] = {}

    @property
    def units(self) -> str:
        return "pairs" if self.objective in PAIRED else "sequences"

    def _logps(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        targets: torch.Tensor,
        sequence: torch.Tensor,
        n: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(each answer's summed log-prob, its response tokens, the sum with EOS counted eos_weight times)."""
        hidden = decoder_hidden(self.model, input_ids, position_ids, attention_mask)
        labelled = targets != IGNORE
        head = self.model.get_output_embeddings()
        y = targets[labelled]
        per_token = token_log_probs(
            hidden[labelled], head.weight, head.bias, y, self.chunk_size, self.softcap
        )
        sums = per_token.new_zeros(n, dtype=torch.float64).index_add(0, sequence, per_token.double())
        counts = torch.bincount(sequence, minlength=n).to(sums.dtype)
        weighted = sums
        if self.eos_weight != 1.0 and self.eos_id is not None:
            w = torch.where(y == self.eos_id, self.eos_weight, 1.0).double()
            weighted = torch.zeros_like(sums).index_add(0, sequence, per_token.double() * w)
        return sums, counts, weighted

    def sequence_logps(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Each answer's summed log-prob and its number of response tokens (EOS included)."""
        n = len(batch.extra["chosen"])
        sums, counts, _ = self._logps(
            batch.input_ids,
            batch.position_ids,
            batch.attention_mask,
            batch.targets,
            batch.extra["sequence"],
            n,
        )
        return sums, counts

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        targets: torch.Tensor,
        unlike: torch.Tensor | None = None,
        *,
        sequence: torch.Tensor,
        chosen: torch.Tensor,
        reference: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logps, counts, weighted = self._logps(
            input_ids, position_ids, attention_mask, targets, sequence, len(chosen)
        )
        if self.objective in NEEDS_REFERENCE and reference is None:
            raise RuntimeError(f"{self.objective} needs reference log-probs (train/pairs.py fill_reference)")
        s, beta = self.settings, self.beta
        avg = logps / counts.clamp(min=1)
        if self.objective == "kto":
            losses = kto_losses(logps, reference, chosen, beta, s.desirable_weight, s.undesirable_weight)
            self._track_kto(logps, reference, chosen)
            return losses.sum(), torch.tensor(len(losses))
        c, r = slice(0, None, 2), slice(1, None, 2)  # sequences alternate chosen, rejected
        if self.objective == "dpo":
            losses = dpo_losses(logps[c], logps[r], reference[c], reference[r], beta, s.label_smoothing)
            rewards = (beta * (logps[c] - reference[c]), beta * (logps[r] - reference[r]))
        elif self.objective == "simpo":
            losses = simpo_losses(avg[c], avg[r], beta, s.simpo_gamma, s.label_smoothing)
            rewards = (beta * avg[c], beta * avg[r])
        else:
            losses = orpo_losses(avg[c], avg[r], beta)
            rewards = (beta * avg[c], beta * avg[r])
        if s.sft_weight:
            losses = losses - s.sft_weight * weighted[c] / counts[c].clamp(min=1)
        self._track_pairs(losses, rewards, logps[c], logps[r])
        return losses.sum(), torch.tensor(len(losses))

    def _add(self, **sums: float) -> None:
        for k, v in sums.items():
            self._stats[k] = self._stats.get(k, 0.0) + float(v)

    @torch.no_grad()
    def _track_pairs(
        self, losses: torch.Tensor, rewards: tuple, chosen: torch.Tensor, rejected: torch.Tensor
    ) -> None:
        if not self.training:
            return
        good, bad = rewards[0].detach(), rewards[1].detach()
        self._add(
            units=len(losses),
            reward_chosen=good.sum(),
            reward_rejected=bad.sum(),
            reward_margin=(good - bad).sum(),
            accuracy=(good > bad).sum(),
            logp_chosen=chosen.detach().sum(),
            logp_rejected=rejected.detach().sum(),
        )

    @torch.no_grad()
    def _track_kto(self, logps: torch.Tensor, reference: torch.Tensor, chosen: torch.Tensor) -> None:
        if not self.training:
            return
        rewards = self.beta * (logps.detach() - reference)
        self._add(
            units=len(logps),
            desirable=chosen.sum(),
            reward_chosen=rewards[chosen].sum(),
            reward_rejected=rewards[~chosen].sum(),
            logp_chosen=logps.detach()[chosen].sum(),
            logp_rejected=logps.detach()[~chosen].sum(),
        )

    def pop_metrics(self) -> dict[str, float]:
        """The sums since the last call (the training loop reduces them over processes and divides)."""
        stats, self._stats = self._stats, {}
        return stats


def metric_means(sums: dict[str, float]) -> dict[str, float]:
    """Per-unit means of PreferenceLoss.pop_metrics() sums (reduced over processes), for the log."""
    units = sums.get("units", 0.0)
    if not units:
        return {}
    if "desirable" in sums:  # KTO: rewards per kind of answer
        good, bad = sums["desirable"], units - sums["desirable"]
        out = {}
        for key, n in (("reward_chosen", good), ("logp_chosen", good), ("reward_rejected", bad),
                       ("logp_rejected", bad)):  # fmt: skip
            if n:
                out[key] = round(sums[key] / n, 4)
        return out
    out = {k: round(v / units, 4) for k, v in sums.items() if k != "units"}
    out["accuracy"] = round(sums["accuracy"] / units, 4)
    return out
