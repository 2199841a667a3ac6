"""Token-level distillation divergences between a teacher's and a student's next-token distributions.

Every function takes per-position logits of the response tokens ([positions, vocab]) and returns the
divergence summed over positions (the caller divides by the labelled-token count, as the training loss
does). Both distributions are softened by the same temperature; the loss is not rescaled by T² (TRL's GKD
does not either: pick the learning rate with the temperature you use).

- forward KL(teacher || student): mass-covering, the classic Hinton/"word-level KD" loss;
- reverse KL(student || teacher): mode-seeking, MiniLLM's choice for generative students;
- generalised JSD(beta): beta * KL(teacher || M) + (1 - beta) * KL(student || M) with
  M = beta * teacher + (1 - beta) * student (GKD's definition; beta -> 0 approaches forward KL / beta).

A cached teacher is sparse: its top-k ids and logits per position (`TopK`). Against it the teacher is
renormalised over its k ids; forward KL uses the student's full-vocabulary log-probabilities at those ids
(mass the student puts elsewhere is pushed down through the softmax), reverse KL and JSD compare both
distributions renormalised over the k ids. With k = the vocabulary each equals the dense loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


@dataclass
class TopK:
    """A teacher's k most likely next tokens per position: ids [positions, k] and their logits."""

    ids: torch.Tensor
    logits: torch.Tensor


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from log-probabilities over the same support (0 * log 0 counted as 0)."""
    return torch.where(log_p > -math.inf, log_p.exp() * (log_p - log_q), 0.0).sum(-1)


def _between(log_t: torch.Tensor, log_s: torch.Tensor, divergence: str, beta: float) -> torch.Tensor:
    if divergence == "forward_kl":
        return _kl(log_t, log_s)
    if divergence == "reverse_kl":
        return _kl(log_s, log_t)
    if divergence == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd needs 0 < beta < 1, not {beta}")
        log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1.0 - beta))
        return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)
    raise ValueError(f"unknown divergence '{divergence}'; choose one of {', '.join(DIVERGENCES)}")


def divergence_sum(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TopK,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The divergence summed over positions. `teacher` is dense logits [positions, vocab] (the student's
    shape) or a cached `TopK`. Gradients reach the student's logits only."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    if isinstance(teacher, TopK):
        log_t = F.log_softmax(teacher.logits.detach().float() / temperature, dim=-1)
        picked = log_s.gather(-1, teacher.ids.long())
        if divergence != "forward_kl":
            picked = picked - picked.logsumexp(-1, keepdim=True)  # the student renormalised over the k ids
        return _between(log_t, picked, divergence, beta).sum()
    log_t = F.log_softmax(teacher.detach().float() / temperature, dim=-1)
    return _between(log_t, log_s, divergence, beta).sum()


def top_k(logits: torch.Tensor, k: int) -> TopK:
    """The cacheable part of a teacher's logits."""
    values, ids = logits.float().topk(min(k, logits.shape[-1]), dim=-1)
    return TopK(ids=ids, logits=values)
