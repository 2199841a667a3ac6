"""Sampling parameters and the next-token choice for a batch of rows, each with its own settings.

Greedy (temperature 0) is an argmax, so it depends on nothing but the logits. Sampling rows draw from
their own `torch.Generator`, so a seeded request gives the same text whatever else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pacos.errors import PacosError


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    repetition_penalty: float = 1.0  # the CTRL/transformers rule: divide positive logits, multiply negative
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's plus the k most likely
    # The same for every prompt token but the first (nothing predicts it), from the prefill's forward
    # pass: OpenAI's `echo` with `logprobs`, what lm-evaluation-harness scores continuations with.
    prompt_logprobs: int | None = None
    ignore_eos: bool = False
    # A JSON schema the answer must parse and validate against ({"type": "object"}: any JSON object).
    json_schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 0, "max_new_tokens must be >= 0"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be between 0 and 20"),
            (
                self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20,
                "prompt_logprobs must be between 0 and 20",
            ),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise PacosError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the most likely tokens at this step, best first


def apply_repetition_penalty(logits: torch.Tensor, seen: list[int], penalty: float) -> None:
    """In place, on one row [V]."""
    if penalty == 1.0 or not seen:
        return
    ids = torch.tensor(sorted(set(seen)), device=logits.device)
    picked = logits[ids]
    logits[ids] = torch.where(picked > 0, picked / penalty, picked * penalty)


_NUCLEUS_CANDIDATES = 1024  # top-p looks here first: nearly always where the whole nucleus lies


def sample_row(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> int:
    """Draw one token from one row [V] under temperature, top-k and top-p.

    No full sort of the vocabulary (262K for Gemma 3, every row, every step): top-k takes its k best;
    top-p takes the best 1,024 and sorts everything only when they hold less than the nucleus's mass.
    """
    scaled = logits / p.temperature
    size = scaled.numel()
    ids: torch.Tensor | None = None
    values = scaled
    if 0 < p.top_k < size:
        values, ids = torch.topk(scaled, p.top_k)  # sorted, best first
    elif p.top_p < 1.0:
        values, ids = torch.topk(scaled, min(_NUCLEUS_CANDIDATES, size))
        if float((values - torch.logsumexp(scaled, -1)).exp().sum()) < p.top_p:
            values, ids = torch.sort(scaled, descending=True)
    if p.top_p < 1.0:
        # Probabilities under the distribution being truncated (all tokens, or the top k), best first:
        # keep the smallest prefix whose mass reaches top_p (the token that crosses it stays in).
        whole = scaled if ids is None or p.top_k == 0 else values
        probs = (values - torch.logsumexp(whole, -1)).exp()
        values = values.masked_fill(probs.cumsum(-1) - probs >= p.top_p, float("-inf"))
    choice = int(torch.multinomial(values.softmax(-1), 1, generator=generator))
    return int(ids[choice]) if ids is not None else choice


def choose_tokens(
    logits: torch.Tensor,
    params: list[SamplingParams],
    seen: list[list[int]],
    generators: list[torch.Generator | None],
    allowed: list[torch.Tensor | None] | None = None,
) -> tuple[list[int], list[TokenLogprob | None]]:
    """The next token of every row of `logits` [B, V] (float32), and its logprobs where asked for.
    `allowed[row]`, a [V] bool mask, confines a constrained row to its grammar's tokens."""
    logits = logits.float()
    if allowed and any(mask is not None for mask in allowed):
        logits = logits.clone()
        for row, mask in enumerate(allowed):
            if mask is not None:
                logits[row, : mask.numel()].masked_fill_(~mask.to(logits.device), float("-inf"))
                logits[row, mask.numel() :] = float("-inf")  # padded vocabulary rows are never real tokens
    if any(p.repetition_penalty != 1.0 for p in params):
        logits = logits.clone()
        for row, p in enumerate(params):
            apply_repetition_penalty(logits[row], seen[row], p.repetition_penalty)
    tokens = logits.argmax(-1).tolist()  # one call for every greedy row
    for row, p in enumerate(params):
        if p.greedy:
            continue
        tokens[row] = sample_row(logits[row], p, generators[row])
    logprobs: list[TokenLogprob | None] = [None] * len(params)
    wanted = [row for row, p in enumerate(params) if p.logprobs is not None]
    if wanted:
        # The model's distribution (after the repetition penalty, before temperature), as OpenAI reports it.
        rows = logits[wanted] if len(wanted) < len(params) else logits
        scored = token_logprobs(
            rows, [tokens[row] for row in wanted], [params[row].logprobs or 0 for row in wanted]
        )
        for row, lp in zip(wanted, scored):
            logprobs[row] = lp
    return tokens, logprobs


def token_logprobs(logits: torch.Tensor, tokens: list[int], ks: list[int]) -> list[TokenLogprob]:
    """log p of each row's token under that row of `logits` [rows, V] (float32), with the row's k most
    likely tokens: logit - logsumexp (training's cross-entropy, negated), without writing a log-softmax
    of the whole vocabulary. Generated and prompt tokens (echo) are scored by this one function, so a
    token's log-prob is the same whichever way it was asked for; the chosen token's and its top entry's
    are the same float, so "was it the most likely" is an exact comparison."""
    lse = torch.logsumexp(logits, dim=-1).double()
    index = torch.tensor(tokens, device=logits.device)[:, None]
    picked = (logits.gather(1, index).squeeze(1).double() - lse).tolist()
    k = max(ks, default=0)
    top_ids: list[list[int]] = [[] for _ in tokens]
    top_values: list[list[float]] = [[] for _ in tokens]
    if k:
        top = torch.topk(logits, min(k, logits.shape[-1]))
        top_ids = top.indices.tolist()
        top_values = (top.values.double() - lse[:, None]).tolist()
    return [
        TokenLogprob(token, logprob, list(zip(ids[:n], values[:n])))
        for token, logprob, ids, values, n in zip(tokens, picked, top_ids, top_values, ks)
    ]
