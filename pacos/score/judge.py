"""The LLM judge: a 1-5 rating of helpfulness and accuracy per record, by any OpenAI-compatible endpoint or
a local model, with the expected rating over the rating tokens where logprobs are given."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pacos.data.records import Record
from pacos.errors import PacosError
from pacos.fileio import KeyedCache
from pacos.llm.client import LLM, OpenAILLM, Reply, Request
from pacos.models import model_identity
from pacos.score.common import PROMPT_VERSION, QuietScoreProgress, ScoreTally, apply_scores
from pacos.text.cjk import language_of

RATINGS = ("1", "2", "3", "4", "5")

_PROMPT_EN = """You are rating one example of a dataset that teaches an AI assistant to follow instructions. \
Read the task and the assistant's response, then rate how helpful and how accurate the response is for \
this task.

5: fully answers the task, correct, clear and complete.
4: helpful and correct, with small gaps or minor issues.
3: partly helpful: some errors, omissions or irrelevant content.
2: mostly unhelpful, or with serious errors.
1: wrong, off-topic, empty or harmful.

Length is no merit in itself: a short response that does the job deserves a 5.

## Task
{task}

## Response
{output}

Rate the response. Reply with a single digit from 1 to 5."""

_PROMPT_ZH = (
    "你正在为一份训练 AI 助手遵循指令的数据集中的一条样本打分。"
    "请阅读任务和助手的回答，然后评价这条回答对该任务有多大帮助、有多准确。\n\n"
    "5：完整地完成了任务，正确、清楚、全面。\n"
    "4：有帮助且正确，只有小的遗漏或瑕疵。\n"
    "3：部分有帮助：有一些错误、遗漏或无关内容。\n"
    "2：基本没有帮助，或有严重错误。\n"
    "1：错误、答非所问、空白或有害。\n\n"
    "篇幅本身不是优点：简短而完成任务的回答也应得 5 分。\n\n"
    "## 任务\n{task}\n\n## 回答\n{output}\n\n"
    "请为这条回答打分。只回复一个 1 到 5 的数字。"
)


def is_chinese(record: Record) -> bool:
    return language_of(record["instruction"] + (record.get("input") or "")) == "zh"


def rating_prompt(record: Record) -> str:
    """The judge's prompt for one record: Chinese for a Chinese instruction, else English."""
    task = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    template = _PROMPT_ZH if is_chinese(record) else _PROMPT_EN
    return template.format(task=task, output=record["output"])


_DIGIT = re.compile(r"(?<![0-9.])([1-5])(?![0-9])")


def parse_rating(text: str) -> int | None:
    """The first rating digit 1-5 the judge wrote (not part of a longer number), or None."""
    match = _DIGIT.search(text)
    return int(match.group(1)) if match else None


def _rating_mass(logprobs: dict[str, float] | None) -> dict[str, float]:
    """Probability of each rating token "1".."5" among the first token's alternatives (" 4" adds to "4")."""
    mass = dict.fromkeys(RATINGS, 0.0)
    for token, value in (logprobs or {}).items():
        digit = token.strip()
        if digit in mass and value > -math.inf:
            mass[digit] += math.exp(value)
    return mass


def expected_rating(logprobs: dict[str, float] | None) -> float | None:
    """Sum of r * P(r) over the rating tokens "1".."5" among the first token's top alternatives, with
    their probabilities renormalised to sum to 1 (variants such as " 4" add to "4"); None when none is
    there."""
    mass = _rating_mass(logprobs)
    total = sum(mass.values())
    if total <= 0:
        return None
    return sum(int(d) * p for d, p in mass.items()) / total


def read_verdict(
    text: str, logprobs: dict[str, float] | None, first_token_min_mass: float | None = None
) -> tuple[float | None, str]:
    """(score, how): "logprobs" when the reply starts with a rating digit and its logprobs are there,
    "text" for the digit written, "unparseable" when there is none. A reply that starts with other words
    ("Score: 4") is read from its text: the first token's alternatives are then not ratings.

    With `first_token_min_mass`, a reply that wrote no rating at all ("I'm sorry, ...", common with small
    judges) is read as "first_token": the expected rating over the rating tokens among its first token's
    alternatives, i.e. what the judge would say if its reply had to start with a rating, as long as those
    tokens hold at least that much probability together."""
    written = parse_rating(text)
    if written is None:
        mass = _rating_mass(logprobs)
        if first_token_min_mass is not None and sum(mass.values()) >= first_token_min_mass > 0:
            return expected_rating(logprobs), "first_token"
        return None, "unparseable"
    if text.lstrip().startswith(str(written)):
        soft = expected_rating(logprobs)
        if soft is not None:
            return soft, "logprobs"
    return float(written), "text"


@dataclass
class RatingSettings:
    judge: str  # http(s)://HOST:PORT/v1, local:NAME_OR_PATH or llama.cpp:FILE.gguf
    judge_model: str | None = None  # the endpoint's model name
    max_tokens: int = 8  # a digit, or a few words before it
    top_logprobs: int | None = None  # None: 20 for local judges, 5 (OpenAI's completions limit) otherwise
    concurrency: int = 8
    api: str = "auto"
    # A reply with no rating is read from its first token's rating alternatives when they hold this much
    # probability (None: such a reply stays unparseable). Reading only: cached judgments stay valid.
    first_token_min_mass: float | None = 0.05

    @property
    def logprobs(self) -> int:
        return self.top_logprobs or (5 if self.judge.startswith(("http://", "https://")) else 20)

    def identity(self) -> str:
        """What a cached judgment belongs to: the endpoint and model name, or a local model's files."""
        if self.judge.startswith(("http://", "https://")):
            return model_identity(self.judge, self.judge_model)
        kind, _, target = self.judge.partition(":")
        return f"{kind}:{model_identity(target)}" if target else self.judge

    def decoding(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": 0.0, "top_logprobs": self.logprobs,
                "api": self.api}  # fmt: skip


def judgment_key(identity: str, prompt: str, decoding: dict[str, Any]) -> str:
    payload = [PROMPT_VERSION, identity, prompt, decoding]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def _verdict_info(
    record: Record, verdict: dict[str, Any], judge_name: str, tally: ScoreTally, min_mass: float | None
) -> None:
    score, how = read_verdict(verdict["text"], verdict.get("logprobs"), min_mass)
    tally.read_from[how] += 1
    info: dict[str, Any] = {"judge_model": judge_name, "judge_from": how}
    if score is None:
        info["judge_reply"] = verdict["text"][:200]
        record.get("scores", {}).pop("judge", None)  # a stale score from an earlier judge is not this one's
        apply_scores(record, {}, info)
    else:
        apply_scores(record, {"judge": round(score, 4)}, info)


async def _ask_all(
    make_llm: Callable[[], LLM],
    requests: list[Request],
    on_reply: Callable[[Reply], None],
) -> str:
    """Send every request (endpoints: one task per request, bounded by the client's concurrency, each
    handled the moment it returns; local engines: in batches of the engine's size). Returns the judge's
    model name."""
    teacher = make_llm()
    pending: list[asyncio.Task] = []
    try:
        if isinstance(teacher, OpenAILLM):
            await teacher.resolve_model()
            pending = [asyncio.ensure_future(teacher.run([r])) for r in requests]
            for done in asyncio.as_completed(pending):
                on_reply((await done)[0])
        else:
            for start in range(0, len(requests), teacher.batch_size):
                for reply in await teacher.run(requests[start : start + teacher.batch_size]):
                    on_reply(reply)
        return teacher.model
    finally:
        for task in pending:
            task.cancel()
        await teacher.close()


def judge_records(
    records: list[Record],
    settings: RatingSettings,
    cache: KeyedCache,
    tally: ScoreTally,
    progress: QuietScoreProgress | None = None,
    make_llm: Callable[[], LLM] | None = None,
) -> None:
    """Rate every record in place (`scores.judge`, `scoring.judge_*`); cached judgments are not asked
    again, and each new one is in the cache the moment it arrives. The judge is made (a local model
    loaded) only when something is left to ask."""
    from pacos.llm.client import make_llm as make
    from pacos.llm.config import ClientConfig

    progress = progress or QuietScoreProgress()
    identity, decoding = settings.identity(), settings.decoding()
    name = settings.judge + (f"#{settings.judge_model}" if settings.judge_model else "")
    prompts = [rating_prompt(r) for r in records]
    keys = [judgment_key(identity, p, decoding) for p in prompts]
    todo: dict[str, list[int]] = {}  # key -> records (identical records share one call)
    for i, key in enumerate(keys):
        verdict = cache.get(key)
        if verdict is not None:
            tally.cache_hits += 1
            _verdict_info(records[i], verdict, name, tally, settings.first_token_min_mass)
        else:
            todo.setdefault(key, []).append(i)
    if not todo:
        return
    requests = [
        Request(
            id=key,
            prompt=prompts[idx[0]],
            max_tokens=settings.max_tokens,
            temperature=0.0,
            top_p=1.0,
            stop=[],
            seed=0,
            top_logprobs=settings.logprobs,
        )
        for key, idx in todo.items()
    ]
    progress.start("judging", len(records), len(records) - sum(len(v) for v in todo.values()))

    # A judge that fails every request (down, overloaded, refusing the body) would otherwise be retried
    # for every record in turn: stop after this many failures in a row, what was judged kept in the cache.
    give_up = max(16, 2 * settings.concurrency)
    streak = [0]

    def on_reply(reply: Reply) -> None:
        tally.calls += 1
        indices = todo[reply.request_id]
        if reply.error:
            tally.failed[reply.error] += 1
            for i in indices:
                records[i].get("scores", {}).pop("judge", None)
                apply_scores(records[i], {}, {"judge_model": name, "judge_from": "failed",
                                        "judge_error": f"{reply.error}: {reply.detail}"})  # fmt: skip
            streak[0] += 1
            if streak[0] >= give_up:
                raise PacosError(
                    f"judge {settings.judge}: the last {give_up} requests all failed (last: {reply.error}: "
                    f"{(reply.detail or '')[:120]}); judgments so far are cached, rerun to continue"
                )
        else:
            streak[0] = 0
            verdict = {"text": reply.text, "logprobs": reply.first_token_logprobs}
            cache.put(reply.request_id, verdict)
            for i in indices:
                _verdict_info(records[i], verdict, name, tally, settings.first_token_min_mass)
        failed = sum(tally.failed.values())
        info = f"calls {tally.calls} · cached {tally.cache_hits}" + (f" · failed {failed}" if failed else "")
        progress.advance(len(indices), info)

    if make_llm is None:
        config = ClientConfig(concurrency=settings.concurrency, api=settings.api)  # type: ignore[arg-type]

        def make_llm() -> LLM:
            return make(settings.judge, settings.judge_model, config, None)

    try:
        asyncio.run(_ask_all(make_llm, requests, on_reply))
    finally:
        progress.stop()
