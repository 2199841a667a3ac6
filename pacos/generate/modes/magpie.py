"""Magpie (Xu et al., 2024): an aligned chat model writes the user's turn itself, then answers it.

No seed tasks: the chat template is rendered up to where the user's words begin (the system turn, if
any, then the user header) and sent as a raw completion; what the model writes until its end-of-turn
marker is an instruction. A second, ordinary chat call answers it (greedy by default, as Magpie does).
Both the prefix and the end-of-turn marker are read off the tokenizer's own template: it is rendered
around a marker string standing for the user's words, so any chat model works without a table of
per-model headers.

Filters, each a named rule: `empty`, `truncated` (the instruction hit `magpie.instruction_max_tokens`),
`pacos generate`'s instruction rules (`too_short`: too few words to be a request, and the others),
`repeated` (the same as, or ROUGE-L-near to, an earlier instruction: the novelty filter), then for the
answer `answer_truncated`, `empty_answer` and every record rule (`pacos data clean`'s included).

Multi-turn (`magpie.turns` > 1, Magpie's multi-turn mode): the conversation so far is rendered with the
template up to where the next user's words begin, the model writes that follow-up itself, and a chat
call with the whole conversation answers it. A follow-up that fails its filters (or an answer that does)
ends the conversation at the turns before it; conversations keep their turns in `messages`.

Teachers: a local engine (its tokenizer is at hand), or an http(s) endpoint that takes raw prompts on
/v1/completions (`pacos serve`, vLLM, llama.cpp's server); its template comes from `magpie.tokenizer`,
by default the endpoint's model name.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any

from pacos.errors import PacosError, first_line
from pacos.generate.generator import Generator
from pacos.generate.modes import Mode
from pacos.llm.client import LLM, EngineLLM, Request

# Stands for the user's words while the template is rendered; no template alters a plain ASCII word.
MARKER = "PACOSMAGPIEUSERTURNMARKER"
# With --language zh and no system prompt of the user's: the model is told its users write Chinese.
ZH_SYSTEM = "你是一个乐于助人的 AI 助手。用户会用中文向你提问，你用中文详细地回答。"


@dataclass(frozen=True)
class UserTurn:
    prefix: str  # the rendered template up to where the user's words begin
    stops: list[str]  # what ends the user's turn: the template's end-of-turn text, the next header, EOS


def _adds_bos(tokenizer: Any) -> bool:
    """Whether encoding a raw prompt puts the tokenizer's BOS in front (servers encode raw prompts so)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True).input_ids
    return len(ids) > len(tokenizer("a", add_special_tokens=False).input_ids) and ids[0] == bos


def user_turn(
    tokenizer: Any, system: str | None, where: str = "the teacher", before: list[dict[str, str]] | None = None
) -> UserTurn:
    """The template's text before the user's words and the strings that end the user's turn; after the
    turns `before`, for a follow-up."""
    if not getattr(tokenizer, "chat_template", None):
        raise PacosError(
            f"magpie: {where} has no chat template: Magpie needs a chat model (or --set magpie.tokenizer)"
        )
    messages = [{"role": "system", "content": system}] if system else []
    messages += [*(before or []), {"role": "user", "content": MARKER}]
    try:
        closed = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        opened = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja raises what the template raises (a template that refuses a system turn)
        raise PacosError(
            f"magpie: {where}'s chat template cannot render a user turn: {first_line(e)}"
        ) from None
    if closed.count(MARKER) != 1 or opened.count(MARKER) != 1:
        raise PacosError(f"magpie: {where}'s chat template does not show the user's words once")
    prefix, end = closed.split(MARKER)
    after = opened.split(MARKER)[1]
    header = after[len(end) :] if after.startswith(end) else after  # the assistant's header
    stops = [s for s in (end.strip(), header.strip(), tokenizer.eos_token) if s]
    bos = tokenizer.bos_token
    if bos and prefix.startswith(bos) and _adds_bos(tokenizer):  # else the model would see two BOS
        prefix = prefix[len(bos) :]
    return UserTurn(prefix, list(dict.fromkeys(stops))[:4])  # OpenAI takes four stop strings at most


def _view(teacher: LLM, chat: bool) -> LLM:
    """The same teacher (client, rate limits, engine shared), sending chat messages or raw prompts."""
    if teacher.chat == chat:
        return teacher
    view = copy.copy(teacher)
    view.chat = chat
    return view


@dataclass
class MagpieState:
    turn: UserTurn
    raw: LLM  # raw completions: the instructions
    chat: LLM  # chat messages: the answers
    system: str | None
    tokenizer: Any = None
    where: str = "the teacher"


def load_state(generator: Generator) -> MagpieState:
    c, teacher = generator.config, generator.teacher
    system = c.magpie.system_prompt
    if system is None and c.language == "zh":
        system = ZH_SYSTEM
    if c.magpie.tokenizer:
        from pacos.models import load_tokenizer

        tokenizer, where = load_tokenizer(c.magpie.tokenizer), f"tokenizer '{c.magpie.tokenizer}'"
    elif isinstance(teacher, EngineLLM):
        tokenizer, where = teacher.engine.tokenizer, f"teacher {teacher.name}"
    else:
        from pacos.models import load_tokenizer

        if not teacher.model:
            raise PacosError(
                "magpie: the endpoint's model is unknown: pass --model or --set magpie.tokenizer"
            )
        tokenizer, where = load_tokenizer(teacher.model), f"tokenizer '{teacher.model}'"
    return MagpieState(
        turn=user_turn(tokenizer, system, where),
        raw=_view(teacher, False),
        chat=_view(teacher, True),
        system=system,
        tokenizer=tokenizer,
        where=where,
    )


def cut_at_stops(text: str, stops: list[str]) -> str:
    """A server that does not honour stop strings exactly must not leak the template into the data."""
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text.strip()


async def magpie_round(generator: Generator) -> bool:
    """One batch of instructions from the bare template, their filters, the answers; False when every
    request failed."""
    g, c, tally = generator, generator.config, generator.tally
    if g.state is None:
        g.state = load_state(g)
    state: MagpieState = g.state
    count = c.requests_per_round or g.teacher.batch_size
    if c.max_requests is not None:
        count = max(1, min(count, c.max_requests - tally.requests))
    requests = []
    for i in range(count):
        number = tally.requests + i
        rng = random.Random(f"{c.seed}-{number}")  # the same request after a resume
        requests.append(
            Request(
                id=f"req-{number:06d}",
                prompt=state.turn.prefix,
                max_tokens=c.magpie.instruction_max_tokens,
                temperature=c.temperature,
                top_p=c.top_p,
                stop=state.turn.stops,
                seed=rng.randrange(2**31),
            )
        )
    replies = await g.send(requests, [{"step": "instruction"}] * count, state.raw)
    kept = []
    for reply in replies:
        if reply.error is not None:
            continue
        instruction = cut_at_stops(reply.text, state.turn.stops)
        if not instruction:
            g.reject({"instruction": ""}, "empty", "the model wrote no instruction", reply.request_id)
            continue
        if reply.finish_reason == "length":
            reason = f"hit instruction_max_tokens={c.magpie.instruction_max_tokens}"
            g.reject({"instruction": instruction}, "truncated", reason, reply.request_id)
            continue
        rule, reason = g.candidate_filter.check_instruction(instruction)
        if rule:
            g.reject({"instruction": instruction}, rule, reason or rule, reply.request_id)
            continue
        verdict = g.novelty.offer(instruction)
        if not verdict.novel:
            twin, score = verdict.most_similar[0]
            same = " ".join(twin.split()) == " ".join(instruction.split())
            why = f"the same as {twin!r}" if same else f"ROUGE-L {score:.2f} with {twin!r}"
            g.reject({"instruction": instruction}, "repeated", why, reply.request_id)
            continue
        kept.append((instruction, reply, verdict))
    if not kept:
        return any(r.error is None for r in replies)
    asks = [
        Request(
            id=f"req-{tally.requests + i:06d}",
            prompt=instruction,
            max_tokens=c.max_tokens,
            temperature=c.magpie.answer_temperature,
            top_p=c.top_p if c.magpie.answer_temperature > 0 else 1.0,
            stop=[],
        )
        for i, (instruction, _, _) in enumerate(kept)
    ]
    answers = await g.send(asks, [{"step": "answer"}] * len(asks), state.chat)
    conversations = []
    for answer, (instruction, reply, verdict) in zip(answers, kept, strict=True):
        if answer.error is not None:
            continue
        record = {"instruction": instruction, "input": "", "output": answer.text.strip()}
        if answer.finish_reason == "length":
            g.reject(record, "answer_truncated", "the token limit cut the answer", answer.request_id)
            continue
        if not record["output"]:
            g.reject(record, "empty_answer", "no answer", answer.request_id)
            continue
        turns = [{"role": "user", "content": instruction}, {"role": "assistant", "content": record["output"]}]
        conversations.append((turns, reply, verdict, [answer.request_id]))
    for turn in range(2, c.magpie.turns + 1):
        conversations = await _follow_up(g, state, conversations, turn)
    for turns, reply, verdict, request_ids in conversations:
        record = {"instruction": turns[0]["content"], "input": "", "output": turns[-1]["content"]}
        if len(turns) > 2:
            record["messages"] = turns
        extra = {"answer_request_id": request_ids[0], "system_prompt": state.system}
        if len(request_ids) > 1:
            extra["turn_request_ids"] = request_ids[1:]
        g.admit(record, reply, [], extra, verdict)
    return any(r.error is None for r in replies)


Conversation = tuple[list[dict[str, str]], Any, Any, list[str]]  # turns, first reply, verdict, request ids


async def _follow_up(
    g: Generator, state: MagpieState, conversations: list[Conversation], turn: int
) -> list[Conversation]:
    """Each conversation that reached the last turn gets a follow-up question the model writes itself and
    its answer; one that fails a filter stays as it was (and takes no further turns)."""
    c = g.config
    going = [conv for conv in conversations if len(conv[0]) == 2 * (turn - 1)]
    if not going:
        return conversations
    asks = []
    for turns, reply, _, _ in going:
        follow = user_turn(state.tokenizer, state.system, state.where, before=turns)
        rng = random.Random(f"{c.seed}-{reply.request_id}-{turn}")
        asks.append(
            Request(
                id=f"{reply.request_id}-t{turn}",
                prompt=follow.prefix,
                max_tokens=c.magpie.instruction_max_tokens,
                temperature=c.temperature,
                top_p=c.top_p,
                stop=follow.stops,
                seed=rng.randrange(2**31),
            )
        )
    questions = await g.send(asks, [{"step": f"instruction {turn}"}] * len(asks), state.raw)
    asking = []
    for (turns, reply, verdict, ids), question in zip(going, questions, strict=True):
        text = cut_at_stops(question.text, state.turn.stops) if question.error is None else ""
        if not text or question.finish_reason == "length":
            continue  # no usable follow-up: the conversation ends here
        rule, reason = g.candidate_filter.check_instruction(text)
        if rule:
            g.reject({"instruction": text}, rule, f"turn {turn}: {reason or rule}", question.request_id)
            continue
        asking.append(((turns, reply, verdict, ids), text))
    system = [{"role": "system", "content": state.system}] if state.system else []
    answers = await g.send(
        [
            Request(
                id=f"{conv[1].request_id}-t{turn}-answer",
                prompt=text,
                messages=[*system, *conv[0], {"role": "user", "content": text}],
                max_tokens=c.max_tokens,
                temperature=c.magpie.answer_temperature,
                top_p=c.top_p if c.magpie.answer_temperature > 0 else 1.0,
                stop=[],
            )
            for conv, text in asking
        ],
        [{"step": f"answer {turn}"}] * len(asking),
        state.chat,
    )
    grown = {}
    for ((turns, reply, verdict, ids), text), answer in zip(asking, answers, strict=True):
        output = answer.text.strip()
        if answer.error is None and answer.finish_reason != "length" and output:
            more = [{"role": "user", "content": text}, {"role": "assistant", "content": output}]
            grown[id(turns)] = ([*turns, *more], reply, verdict, [*ids, answer.request_id])
    return [grown.get(id(conv[0]), conv) for conv in conversations]


MODE = Mode(name="magpie", round=magpie_round, uses_seeds=False)
