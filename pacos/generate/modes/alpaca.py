"""Alpaca's mode (the default): each request shows a few seed tasks and asks the teacher to continue the
numbered list; every task in the reply that passes the filters and the novelty rule is kept."""

from __future__ import annotations

import random
from typing import Any

from pacos.generate.generator import Generator
from pacos.generate.modes import Mode
from pacos.generate.parse import parse_tasks
from pacos.generate.prompts import continuation_prefix, list_prompt, stop_strings
from pacos.llm.client import Reply, Request


def request(g: Generator, number: int) -> tuple[Request, list[dict[str, Any]]]:
    c = g.config
    rng = random.Random(f"{c.seed}-{number}")  # the same request after a resume
    shown = rng.sample(g.seeds, c.prompt_examples)
    prompt = list_prompt(shown, c.language, c.tasks_per_request, chat=g.teacher.chat)
    made = Request(
        id=f"req-{number:06d}",
        prompt=prompt,
        max_tokens=c.max_tokens,
        temperature=c.temperature,
        top_p=c.top_p,
        stop=stop_strings(c.tasks_per_request),
        seed=rng.randrange(2**31),
    )
    return made, shown


def admit_reply(g: Generator, reply: Reply, shown: list[dict[str, Any]]) -> None:
    """Parse one Alpaca-mode reply and keep what passes every filter, until the target is reached."""
    c = g.config
    text = reply.text
    if not g.teacher.chat:  # the completion continues the prompt's last, unfinished label
        text = continuation_prefix(c.prompt_examples + 1, c.language) + text
    parsed = parse_tasks(text, truncated=reply.finish_reason == "length")
    for start in parsed.incomplete:
        g.reject({"instruction": start}, "incomplete", "not an instruction with an output", reply.request_id)
    if parsed.truncated is not None:
        g.reject({"instruction": parsed.truncated}, "truncated", "the token limit cut it", reply.request_id)
    seed_ids = [s.get("id") for s in shown]
    for candidate in parsed.candidates:
        record = {
            "instruction": candidate.instruction,
            "input": candidate.input,
            "output": candidate.output,
        }
        g.admit(record, reply, seed_ids)


async def alpaca_round(g: Generator) -> bool:
    """One batch of requests; False when every request failed."""
    c, tally = g.config, g.tally
    count = c.requests_per_round or g.teacher.batch_size
    if c.max_requests is not None:
        count = min(count, c.max_requests - tally.requests)
    batch = [request(g, tally.requests + i) for i in range(count)]
    metas = [{"seed_ids": [s.get("id") for s in shown]} for _, shown in batch]
    replies = await g.send([r for r, _ in batch], metas)
    for reply, (_, shown) in zip(replies, batch, strict=True):
        if reply.error is None:
            admit_reply(g, reply, shown)
    return any(r.error is None for r in replies)


MODE = Mode(name="alpaca", round=alpaca_round)
