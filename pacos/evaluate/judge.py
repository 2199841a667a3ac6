"""Pairwise judging: model 1 vs model 2 on the same instructions, by any OpenAI-compatible or local judge.

Every pair is judged in both orders, because judges favour a position: a pair is won only when both
orders agree, otherwise it is a tie (MT-Bench's rule). Where the judge returns logprobs, each order also
gives a continuous preference (the softmax of the two label tokens, as AlpacaEval reads its judge), and
the soft preference is the mean of both orders. Small local judges favour one position so strongly that
every pair would tie; with logprobs their average preference for the first position (a logit that the
answers' quality cancels out of, since every pair is shown both ways) is subtracted before the
both-orders rule, and the judge's position bias is reported. Reported: the win rate of model 2 with
its standard error over instructions, and AlpacaEval 2's length-controlled win rate. Judgments are
cached by (judge, instruction, the two answers in their order, prompt version): an immediate rerun makes
zero calls.
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

from pacos.fileio import KeyedCache
from pacos.llm.client import LLM, Request

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

_REFERENCE = """## Request
{instruction}

## Reference answer (written by a person: the better answer agrees with it in substance)
{reference}
"""


def judge_prompt(instruction: str, first: str, second: str, reference: str | None = None) -> str:
    prompt = _JUDGE_PROMPT.format(instruction=instruction, first=first, second=second)
    if reference:
        head = f"## Request\n{instruction}\n"
        prompt = prompt.replace(head, _REFERENCE.format(instruction=instruction, reference=reference), 1)
    return prompt


def shown(answer: str, max_chars: int | None) -> str:
    """The answer as the judge sees it: cut after `max_chars` (cheaper judging of answers that ramble)."""
    if max_chars is None or len(answer) <= max_chars:
        return answer
    return answer[:max_chars] + " [... cut]"


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


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def calibrate_position(judgments: list[PairJudgment]) -> tuple[list[PairJudgment], float | None]:
    """Judgments with the judge's mean preference for the first position taken out, and that preference
    (P(first shown wins) at the mean bias logit); unchanged with None unless every verdict is soft (0 < p
    < 1, from logprobs). In order 1 model 2 is shown second, in order 2 first."""
    values = [p for j in judgments for p in (j.order1, j.order2) if p is not None]
    if not values or not all(0.0 < p < 1.0 for p in values):
        return judgments, None
    first = [_logit(1 - j.order1) for j in judgments if j.order1 is not None]
    first += [_logit(j.order2) for j in judgments if j.order2 is not None]
    bias = sum(first) / len(first)
    calibrated = [
        PairJudgment(
            None if j.order1 is None else 1.0 - _sigmoid(_logit(1 - j.order1) - bias),
            None if j.order2 is None else _sigmoid(_logit(j.order2) - bias),
        )
        for j in judgments
    ]
    return calibrated, _sigmoid(bias)


# A judge is not trusted with a headline win rate when, before any calibration, it names the answer shown
# first (or second) in more than this share of its verdicts, or names the same winner in both orders for
# fewer than this share of pairs: its verdicts then say where an answer was shown, not how good it was.
MAX_POSITION_PREFERENCE = 0.8
MIN_ORDER_AGREEMENT = 0.5


def judge_reliability(judgments: list[PairJudgment]) -> dict[str, Any]:
    """The judge's raw position preference and order agreement, and whether its win rate can be reported
    (`unreliable_because` says why not)."""
    first_wins = [p < 0.5 for j in judgments if j.order1 is not None and j.order1 != 0.5 for p in [j.order1]]
    first_wins += [p > 0.5 for j in judgments if j.order2 is not None and j.order2 != 0.5 for p in [j.order2]]
    both = [j for j in judgments if j.order1 is not None and j.order2 is not None]
    agreeing = [(j.order1 > 0.5) == (j.order2 > 0.5) for j in both if 0.5 not in (j.order1, j.order2)]
    first = sum(first_wins) / len(first_wins) if first_wins else None
    agreement = sum(agreeing) / len(both) if both else None
    reasons = []
    if first is not None and max(first, 1 - first) > MAX_POSITION_PREFERENCE:
        side = "first" if first > 0.5 else "second"
        reasons.append(
            f"it picks the answer shown {side} in {max(first, 1 - first):.0%} of its verdicts "
            f"(more than {MAX_POSITION_PREFERENCE:.0%})"
        )
    if agreement is not None and agreement < MIN_ORDER_AGREEMENT:
        reasons.append(
            f"it names the same winner in both orders for only {agreement:.0%} of pairs "
            f"(at least {MIN_ORDER_AGREEMENT:.0%} needed)"
        )
    if not first_wins:
        reasons.append("it gave no usable verdict")
    return {
        "first_position_raw": first,
        "order_agreement": agreement,
        "reliable": not reasons,
        "unreliable_because": "; ".join(reasons) or None,
    }


def win_rates(
    judgments: list[PairJudgment], len_1: list[int], len_2: list[int], calibrate: bool = True
) -> dict[str, float]:
    """Model 2's win rate (ties count half), its standard error over instructions, the soft and the
    length-controlled win rates, in percent; with `calibrate`, after `calibrate_position` where the
    verdicts allow it (the uncalibrated win rate is kept beside)."""
    raw = judgments
    bias = None
    if calibrate:
        judgments, bias = calibrate_position(judgments)
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
        "position_calibrated": bias is not None,
        "first_position_preference": bias,
        "win_rate_uncalibrated": 100 * float(np.mean([j.discrete for j in raw])),
        **judge_reliability(raw),
    }


def _key(judge: str, instruction: str, first: str, second: str, *extra: Any) -> str:
    payload = [PROMPT_VERSION, judge, instruction, first, second, *extra]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


async def _ask(teacher: LLM, requests: list[Request]) -> list[Any]:
    try:
        resolve = getattr(teacher, "resolve_model", None)  # an endpoint: its served model, when not given
        if resolve is not None:
            await resolve()
        return await teacher.run(requests)
    finally:
        await teacher.close()


def judge_pairs(
    teacher: LLM | Callable[[], LLM],
    instructions: list[str],
    answers_1: list[str],
    answers_2: list[str],
    cache: KeyedCache | None = None,
    judge_name: str | None = None,
    references: list[str | None] | None = None,
    max_answer_chars: int | None = None,
    top_logprobs: int = 5,
) -> tuple[list[PairJudgment], int]:
    """Both orders of every pair (cached ones are not asked again); returns the judgments and how many
    judge calls were made. `teacher` may be a function that makes one, called only if a call is needed
    (so a fully cached rerun loads no judge model). `references`: a reference answer per pair shown to
    the judge (MT-Bench's reference-guided judging); `max_answer_chars`: answers cut for the judge;
    `top_logprobs`: label logprobs asked for (5 is OpenAI's completions limit; a local judge can give
    more, so both labels are found more often)."""
    if judge_name is None and not isinstance(teacher, LLM):
        raise ValueError("judge_name is needed with a teacher factory")
    name = judge_name or f"{teacher.name}#{teacher.model}"  # type: ignore[union-attr]
    references = references or [None] * len(instructions)
    orders = []  # (pair index, which order, first shown, second shown)
    for i, (instruction, a1, a2) in enumerate(zip(instructions, answers_1, answers_2, strict=True)):
        a1, a2 = shown(a1, max_answer_chars), shown(a2, max_answer_chars)
        orders.append((i, 1, instruction, a1, a2))
        orders.append((i, 2, instruction, a2, a1))
    results: dict[tuple[int, int], dict[str, Any]] = {}
    todo = []

    def key(i: int, instruction: str, first: str, second: str) -> str:
        extra = [references[i], top_logprobs] if references[i] or top_logprobs != 5 else []
        return _key(name, instruction, first, second, *extra)

    for i, order, instruction, first, second in orders:
        cached = cache.get(key(i, instruction, first, second)) if cache else None
        if cached is not None:
            results[(i, order)] = cached
        else:
            todo.append((i, order, instruction, first, second))
    if todo:
        requests = [
            Request(
                id=f"judge-{i}-{order}",
                prompt=judge_prompt(instruction, first, second, references[i]),
                max_tokens=1,
                temperature=0.0,
                top_p=1.0,
                stop=[],
                seed=0,
                top_logprobs=top_logprobs,
            )
            for i, order, instruction, first, second in todo
        ]
        judge = teacher if isinstance(teacher, LLM) else teacher()
        replies = asyncio.run(_ask(judge, requests))
        for (i, order, instruction, first, second), reply in zip(todo, replies, strict=True):
            verdict = {"text": reply.text, "logprobs": reply.first_token_logprobs, "error": reply.error}
            results[(i, order)] = verdict
            if cache is not None and reply.error is None:
                cache.put(key(i, instruction, first, second), verdict)
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
