"""Pairwise judging: model 1 vs model 2 on the same instructions, by any OpenAI-compatible or local judge.

Every pair is judged in both orders, because judges favour a position: a pair is won only when both
orders agree, otherwise it is a tie (MT-Bench's rule). Where the judge returns logprobs, each order also
gives a continuous preference (the softmax of the two label tokens, as AlpacaEval reads its judge), and
the soft preference is the mean of both orders. Reported: the win rate of model 2 with its standard error
over instructions, and AlpacaEval 2's length-controlled win rate. Judgments are cached by (judge,
instruction, the two answers in their order, prompt version): an immediate rerun makes zero calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pacos.evaluate.answers import AnswerCache
from pacos.generate.teachers import Request, Teacher

PROMPT_VERSION = "pacos-judge-1"
LABELS = ("A", "B")

_JUDGE_PROMPT = """You are judging two answers to the same request from a user. Decide which answer \
follows the request better: it is correct, helpful, complete and clear. Length alone is no merit: a \
shorter answer that does the job beats a longer one that pads it.

## Request
{instruction}

## Answer A
{first}

## Answer B
{second}

Which answer is better? Reply with a single letter, A or B."""


def judge_prompt(instruction: str, first: str, second: str) -> str:
    return _JUDGE_PROMPT.format(instruction=instruction, first=first, second=second)


def first_preferred(text: str, logprobs: dict[str, float] | None) -> float | None:
    """P(answer A is better) in one order: from the label tokens' logprobs when both are there (soft),
    else from the letter the judge wrote (0 or 1); None when it wrote neither."""
    if logprobs:
        scores: dict[str, float] = {}
        for token, value in logprobs.items():
            label = token.strip().upper()
            if label in LABELS:
                scores[label] = max(scores.get(label, -math.inf), value)
        if len(scores) == 2:
            a, b = scores["A"], scores["B"]
            return 1.0 / (1.0 + math.exp(b - a))
    letter = text.strip().lstrip("*#([ ").upper()[:1]
    return {"A": 1.0, "B": 0.0}.get(letter)


@dataclass
class PairJudgment:
    """Both orders of one pair. `order1`: answer 1 shown as A; `order2`: answer 2 shown as A. Each is
    P(model 2's answer is better) in that order, or None when the judge gave no usable verdict."""

    order1: float | None
    order2: float | None

    @property
    def discrete(self) -> float:
        """1 when both orders prefer model 2, 0 when both prefer model 1, else 0.5 (a tie)."""
        votes = [p for p in (self.order1, self.order2) if p is not None]
        if len(votes) == 2 and all(p > 0.5 for p in votes):
            return 1.0
        if len(votes) == 2 and all(p < 0.5 for p in votes):
            return 0.0
        return 0.5

    @property
    def soft(self) -> float:
        votes = [p for p in (self.order1, self.order2) if p is not None]
        return sum(votes) / len(votes) if votes else 0.5


def length_controlled_win_rate(soft: list[float], len_1: list[int], len_2: list[int]) -> float:
    """AlpacaEval 2's length control for one pair of models: a logistic model of the soft preference for
    model 2 on tanh(length difference / its standard deviation) plus a model term, read off at zero length
    difference. (AlpacaEval also fits an instruction-difficulty term on its own 805 instructions; with an
    arbitrary instruction set there is none to fit, so it is left out.)"""
    y = np.clip(np.asarray(soft, dtype=float), 0.0, 1.0)
    diff = np.asarray(len_2, dtype=float) - np.asarray(len_1, dtype=float)
    scale = diff.std()
    x = np.tanh(diff / scale) if scale > 0 else np.zeros_like(diff)
    features = np.stack([np.ones_like(x), x], axis=1)  # model term, length term
    w = np.zeros(2)
    for _ in range(100):  # Newton steps on the cross-entropy with soft targets, a little ridge for stability
        p = 1.0 / (1.0 + np.exp(-features @ w))
        gradient = features.T @ (p - y) + 1e-3 * w
        hessian = (features * (p * (1 - p))[:, None]).T @ features + 1e-3 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(1.0 / (1.0 + math.exp(-w[0])))


def win_rates(judgments: list[PairJudgment], len_1: list[int], len_2: list[int]) -> dict[str, float]:
    """Model 2's win rate (ties count half), its standard error over instructions, the soft and the
    length-controlled win rates, in percent."""
    discrete = np.array([j.discrete for j in judgments])
    soft = [j.soft for j in judgments]
    n = len(judgments)
    if not n:
        raise ValueError("no judgments to aggregate")
    se = float(discrete.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "n": n,
        "wins": int((discrete == 1).sum()),
        "ties": int((discrete == 0.5).sum()),
        "losses": int((discrete == 0).sum()),
        "win_rate": 100 * float(discrete.mean()),
        "standard_error": 100 * se,
        "soft_win_rate": 100 * float(np.mean(soft)),
        "length_controlled_win_rate": 100 * length_controlled_win_rate(soft, len_1, len_2),
    }


def _key(judge: str, instruction: str, first: str, second: str) -> str:
    payload = [PROMPT_VERSION, judge, instruction, first, second]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


async def _ask(teacher: Teacher, requests: list[Request]) -> list[Any]:
    try:
        resolve = getattr(teacher, "resolve_model", None)  # an endpoint: its served model, when not given
        if resolve is not None:
            await resolve()
        return await teacher.run(requests)
    finally:
        await teacher.close()


def judge_pairs(
    teacher: Teacher | Callable[[], Teacher],
    instructions: list[str],
    answers_1: list[str],
    answers_2: list[str],
    cache: AnswerCache | None = None,
    judge_name: str | None = None,
) -> tuple[list[PairJudgment], int]:
    """Both orders of every pair (cached ones are not asked again); returns the judgments and how many
    judge calls were made. `teacher` may be a function that makes one, called only if a call is needed
    (so a fully cached rerun loads no judge model)."""
    if judge_name is None and not isinstance(teacher, Teacher):
        raise ValueError("judge_name is needed with a teacher factory")
    name = judge_name or f"{teacher.name}#{teacher.model}"  # type: ignore[union-attr]
    orders = []  # (pair index, which order, first shown, second shown)
    for i, (instruction, a1, a2) in enumerate(zip(instructions, answers_1, answers_2, strict=True)):
        orders.append((i, 1, instruction, a1, a2))
        orders.append((i, 2, instruction, a2, a1))
    results: dict[tuple[int, int], dict[str, Any]] = {}
    todo = []
    for i, order, instruction, first, second in orders:
        cached = cache.get(_key(name, instruction, first, second)) if cache else None
        if cached is not None:
            results[(i, order)] = cached
        else:
            todo.append((i, order, instruction, first, second))
    if todo:
        requests = [
            Request(f"judge-{i}-{order}", judge_prompt(instruction, first, second), 1, 0.0, 1.0, [], 0, 5)
            for i, order, instruction, first, second in todo
        ]
        judge = teacher if isinstance(teacher, Teacher) else teacher()
        replies = asyncio.run(_ask(judge, requests))
        for (i, order, instruction, first, second), reply in zip(todo, replies, strict=True):
            verdict = {"text": reply.text, "logprobs": reply.first_token_logprobs, "error": reply.error}
            results[(i, order)] = verdict
            if cache is not None and reply.error is None:
                cache.put(_key(name, instruction, first, second), verdict)
    judgments = []
    for i in range(len(instructions)):
        prefs = []
        for order in (1, 2):
            verdict = results[(i, order)]
            p_first = first_preferred(verdict["text"], verdict["logprobs"]) if not verdict["error"] else None
            # Order 1 shows model 2's answer second; order 2 shows it first.
            prefs.append(None if p_first is None else (1.0 - p_first if order == 1 else p_first))
        judgments.append(PairJudgment(*prefs))
    return judgments, len(todo)


def alpaca_eval_annotations(
    instructions: list[str],
    answers_1: list[str],
    answers_2: list[str],
    judgments: list[PairJudgment],
    generator_1: str,
    generator_2: str,
    annotator: str,
) -> list[dict[str, Any]]:
    """AlpacaEval's column layout (`preference` in [1, 2]: 2 means output_2 is better), so its tools can
    recompute everything from these rows."""
    return [
        {
            "instruction": instruction,
            "output_1": a1,
            "output_2": a2,
            "generator_1": generator_1,
            "generator_2": generator_2,
            "annotator": annotator,
            "preference": 1.0 + j.soft,
            "preference_both_orders": 1.0 + j.discrete,
        }
        for instruction, a1, a2, j in zip(instructions, answers_1, answers_2, judgments, strict=True)
    ]
