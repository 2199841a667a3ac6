"""Evol-Instruct (WizardLM, Xu et al., 2023): rounds of rewrites that make a starting set harder and wider.

Each round takes every item of the pool, asks the teacher to rewrite its prompt with one operation picked
at random (in depth: add a constraint, deepen, concretise, add reasoning steps, complicate the input; in
breadth: a new, rarer prompt of the same domain), then asks for the answer to the rewrite in a second
call. Elimination rules drop a failed evolution: a prompt with no new information (the same as its
parent, or fewer than `evol.min_new_words` words outside their longest common subsequence), a prompt
that copies the request's own labels ("#Given Prompt#", "rewritten prompt", 给定提示 ...), a cut-off or
empty prompt, a prompt that is already in the data (`duplicate`: another item's evolution or a starting
prompt, case and spacing ignored), `pacos generate`'s instruction filters, and an answer that is a refusal,
mostly punctuation and stop words, empty or cut off. A successful evolution replaces its parent in the
next round's pool; a failed item goes back into the pool as it was, until it has failed
`evol.max_retries` + 1 times.

The prompts are our own, in English and Chinese, chosen by each record's language. Evolved records have
the whole prompt as their instruction (a former input is part of it) and their lineage in `metadata`:
round, operation, parent_id, root_id, depth.

Resume: every evolution ends in exactly one line, in accepted.jsonl or rejected.jsonl, keyed by (round,
parent id). The pool of any moment is a pure function of the starting set and those lines, so a rerun
replays them and continues with the evolutions that have no line yet: none done twice, none lost.
"""

from __future__ import annotations

import random
import re
import time
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pacos.data.io import read_records
from pacos.data.templates import ALPACA, ALPACA_ZH
from pacos.errors import PacosError
from pacos.fileio import read_jsonl_repairing
from pacos.generate.filters import CandidateFilter, refusal
from pacos.generate.generator import Generator
from pacos.generate.modes import Mode
from pacos.llm.client import Reply, Request
from pacos.text.cjk import CJK, language_of
from pacos.text.rouge import lcs_length, rouge_l_f1, tokenize

ROUNDS_DONE = "every round done"
_EVOL_ID = re.compile(r"^evol-\d+$")

# --- the prompts (our own wording) ------------------------------------------------------------------------

_IN_DEPTH = {
    "en": (
        "You are rewriting a prompt so that it is harder for a capable AI assistant to answer, while it "
        "stays reasonable, and a person can understand and answer it.\n"
        "Rewrite the #Given Prompt# below: {how}.\n"
        "Keep any input of the #Given Prompt# (text, code, a table, data) that is still needed. Add no "
        "more than 10 to 20 words. The rewritten prompt must stand on its own and must not mention "
        '"#Given Prompt#", "#Rewritten Prompt#", "given prompt" or "rewritten prompt". Reply with the '
        "rewritten prompt only.\n\n"
        "#Given Prompt#:\n{prompt}\n\n#Rewritten Prompt#:\n"
    ),
    "zh": (
        "你要改写一个提示，让能力很强的 AI 助手更难回答，但它仍然要合理，人能读懂并回答。\n"
        "请这样改写下面的 #给定提示#：{how}。\n"
        "保留 #给定提示# 中仍然需要的输入（文字、代码、表格、数据）。最多增加 10 到 20 个词。改写后的提示"
        "必须独立完整，不能提到“#给定提示#”“#改写后的提示#”“给定提示”或“改写后的提示”。只回复改写后的提示。\n\n"
        "#给定提示#：\n{prompt}\n\n#改写后的提示#：\n"
    ),
}
_HOW = {
    "add_constraints": {
        "en": "add one more constraint or requirement to it",
        "zh": "再给它增加一条约束或要求",
    },
    "deepen": {
        "en": "make it ask about its subject in more depth and breadth; if it asks about a specific issue, "
        "go further into that issue",
        "zh": "让它对主题问得更深、更广；如果它问的是一个具体问题，就更深入地追问这个问题",
    },
    "concretize": {
        "en": "replace its general concepts with more specific ones",
        "zh": "把其中笼统的概念换成更具体的概念",
    },
    "increase_reasoning": {
        "en": "if a few simple steps of thinking solve it, make it explicitly need several steps of "
        "reasoning",
        "zh": "如果几步简单的思考就能解决它，就改成明确需要多步推理才能回答",
    },
    "complicate_input": {
        "en": "add input data for it to work on, in a fitting format (a table, code, JSON, a list or a "
        "formula)",
        "zh": "给它加入要处理的输入数据，格式要合适（表格、代码、JSON、列表或公式）",
    },
}
_IN_BREADTH = {
    "en": (
        "You are creating a new prompt for an AI assistant, inspired by the #Given Prompt# below.\n"
        "The #Created Prompt# must belong to the same domain as the #Given Prompt# but be about something "
        "rarer, with a similar length and difficulty. It must stand on its own, and a person must be able "
        'to understand and answer it. Do not mention "#Given Prompt#", "#Created Prompt#", "given prompt" '
        'or "created prompt". Reply with the created prompt only.\n\n'
        "#Given Prompt#:\n{prompt}\n\n#Created Prompt#:\n"
    ),
    "zh": (
        "你要以下面的 #给定提示# 为灵感，为 AI 助手创作一个新的提示。\n"
        "#新提示# 要和 #给定提示# 属于同一领域，但内容更少见，长度和难度相近。"
        "它必须独立完整，人能读懂并回答。"
        "不能提到“#给定提示#”“#新提示#”“给定提示”或“新提示”。只回复新提示。\n\n"
        "#给定提示#：\n{prompt}\n\n#新提示#：\n"
    ),
}
# The request's own labels: an evolved prompt that contains one copied the request, not a task.
TEMPLATE_PHRASES = (
    "given prompt", "rewritten prompt", "created prompt", "给定提示", "改写后的提示", "新提示",
)  # fmt: skip
# A reply that starts with the label it was asked to fill only repeats the request's last line: cut it off.
_LEADING_LABEL = re.compile(
    r"^[\s*#]*(?:rewritten prompt|created prompt|改写后的提示|新提示)[\s*#]*[:：]?[\s*]*",
    re.IGNORECASE,
)

# --- the answer's elimination rules -------------------------------------------------------------------------

_STOP_WORDS = frozenset(
    "a an the and or but if then so of to in on at by for with about from into over under as is are was "
    "were be been being am do does did done have has had having it its this that these those there here "
    "i me my we our you your he him his she her they them their what which who whom whose when where why "
    "how not no yes all any some each such only own same too very can will just should would could may "
    "might must shall than also again further once up down out off ok okay well oh".split()
)
_STOP_CHARS = frozenset("的了是在和与及或也就都而着之其这那个我你他她它们吗呢吧啊呀哦嗯")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
MIN_CONTENT_SHARE = 0.2  # of the answer's words and punctuation marks, at least this share carries content


def lacks_content(answer: str) -> str | None:
    """Mostly punctuation and stop words: content words make up less than MIN_CONTENT_SHARE of it."""
    units, content = 0, 0
    for word in _WORD.findall(answer):
        for piece in CJK.findall(word) or [word]:  # every Chinese character counts as a word
            units += 1
            content += piece.casefold() not in _STOP_WORDS and piece not in _STOP_CHARS
        rest = CJK.sub("", word)
        if rest and CJK.search(word):  # Latin letters or digits beside Chinese characters
            units += 1
            content += rest.casefold() not in _STOP_WORDS
    units += sum(1 for c in answer if not c.isspace() and not c.isalnum() and c != "_")
    if content == 0 or content < MIN_CONTENT_SHARE * units:
        return f"{content} content words among {units} words and marks"
    return None


# --- the pool ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One prompt in the pool: a starting record or an accepted evolution."""

    id: str
    record: dict[str, Any]
    root_id: str
    depth: int  # evolutions from its root
    failures: int = 0  # failed evolutions so far


@dataclass
class Pool:
    round: int  # the round now being worked on (rounds + 1 once every round is done)
    items: list[Item]  # this round's pool
    pending: list[Item]  # those with no outcome in this round yet
    gave_up: int  # items that left the pool after too many failures


def prompt_of(record: dict[str, Any]) -> str:
    """What is evolved: the instruction, with the input below it (an evolved prompt has both in one)."""
    task_input = (record.get("input") or "").strip()
    return record["instruction"].strip() + (f"\n\n{task_input}" if task_input else "")


def load_start(config: Any) -> list[Item]:
    """The starting set: `seeds` (instructions needed, outputs not) or the bundled seed tasks."""
    source = config.seeds or ("seed-tasks-zh" if config.language == "zh" else "seed-tasks-en")
    records = read_records(source, require_output=False)
    seen_ids: set[str] = set()
    seen_prompts: set[str] = set()
    items = []
    for number, record in enumerate(records, start=1):
        prompt = prompt_of(record)
        if prompt in seen_prompts:
            continue
        seen_prompts.add(prompt)
        given = record.get("id")
        # A record's own id when it has a unique one: lineage then points into the user's file.
        item_id = str(given) if isinstance(given, (str, int)) and str(given) not in seen_ids else None
        if item_id and _EVOL_ID.match(item_id):  # evolving an earlier run's output: keep ids apart
            item_id = f"start:{item_id}"
        item_id = item_id or f"start-{number:06d}"
        seen_ids.add(item_id)
        items.append(Item(item_id, record, item_id, 0))
    if not items:
        raise PacosError(f"seeds {source}: no records to evolve")
    return items


def replay(
    start: list[Item],
    accepted: list[dict[str, Any]],
    failed: set[tuple[int, str]],
    rounds: int,
    max_retries: int,
) -> Pool:
    """The pool now, from the starting set and every outcome so far (the same on resume)."""
    children = {}
    for record in accepted:
        meta = record.get("metadata") or {}
        children[(meta.get("round"), meta.get("parent_id"))] = record
    items, gave_up = start, 0
    for number in range(1, rounds + 1):
        following, pending = [], []
        for item in items:
            child = children.get((number, item.id))
            if child is not None:
                meta = child["metadata"]
                following.append(Item(child["id"], child, meta["root_id"], meta["depth"]))
            elif (number, item.id) in failed:
                if item.failures + 1 <= max_retries:
                    following.append(replace(item, failures=item.failures + 1))
                else:
                    gave_up += 1
            else:
                pending.append(item)
        if pending:
            return Pool(number, items, pending, gave_up)
        items = following
    return Pool(rounds + 1, items, [], gave_up)


@dataclass
class EvolState:
    start: list[Item]
    failed: set[tuple[int, str]]  # (round, parent id) of every failed evolution
    filters: dict[str, CandidateFilter]  # by the record's language
    seen: set[str]  # every starting and accepted prompt, normalised: two items may not evolve into one

    @classmethod
    def load(cls, generator: Generator) -> EvolState:
        c = generator.config
        failed = set()
        for row in read_jsonl_repairing(Path(c.out_dir or ".") / "rejected.jsonl"):
            why = row.get("_rejected") or {}
            if "round" in why and "parent_id" in why:
                failed.add((why["round"], why["parent_id"]))
        filters = {lang: CandidateFilter(c.model_copy(update={"language": lang})) for lang in ("en", "zh")}
        start = load_start(c)
        seen = {_normal(prompt_of(i.record)) for i in start}
        seen |= {_normal(r["instruction"]) for r in generator.tally.accepted}
        return cls(start, failed, filters, seen)


def _normal(prompt: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", prompt).casefold().split())


# --- one batch of evolutions ------------------------------------------------------------------------------


def evolve_prompt(prompt: str, operation: str, language: str) -> str:
    if operation == "breadth":
        return _IN_BREADTH[language].format(prompt=prompt)
    return _IN_DEPTH[language].format(prompt=prompt, how=_HOW[operation][language])


def answer_prompt(prompt: str, language: str, chat: bool) -> tuple[str, list[str]]:
    """A chat teacher gets the prompt as the user's message; a completions teacher Alpaca's template."""
    if chat:
        return prompt, []
    template = ALPACA_ZH if language == "zh" else ALPACA
    return template.prompt({"instruction": prompt, "input": ""}), ["\n### Instruction:", "\n### 指令："]


def check_prompt(text: str, parent: str, reply: Reply, min_new_words: int, tokenizer: str) -> tuple:
    """(evolved prompt, the rule that drops it or None, the reason, ROUGE-L with the parent, new words)."""
    evolved = _LEADING_LABEL.sub("", text.strip(), count=1).strip()
    if reply.finish_reason == "length":
        return evolved, "truncated", "the token limit cut the evolved prompt", None, None
    if not evolved:
        return evolved, "empty", "no evolved prompt", None, None
    folded = evolved.casefold()
    if hit := next((p for p in TEMPLATE_PHRASES if p in folded), None):
        return evolved, "copied_template", f"contains {hit!r}", None, None
    if " ".join(evolved.split()) == " ".join(parent.split()):
        return evolved, "same_as_parent", "the prompt came back unchanged", 1.0, 0
    child_tokens, parent_tokens = tokenize(evolved, tokenizer), tokenize(parent, tokenizer)
    lcs = lcs_length(child_tokens, parent_tokens)
    new_words = len(child_tokens) - lcs
    score = round(rouge_l_f1(child_tokens, parent_tokens), 4)
    if new_words < min_new_words:
        reason = f"{new_words} new words (< {min_new_words}), ROUGE-L {score:.2f} with the parent"
        return evolved, "no_new_information", reason, score, new_words
    return evolved, None, None, score, new_words


def check_answer(answer: str, reply: Reply, refusals: bool = True) -> tuple[str | None, str | None]:
    if reply.finish_reason == "length":
        return "answer_truncated", "the token limit cut the answer"
    if not answer.strip():
        return "empty_answer", "no answer"
    if refusals and (reason := refusal(answer)):  # off with filters.disable=[refusal], as in every mode
        return "refusal", reason
    if reason := lacks_content(answer):
        return "no_content", reason
    return None, None


@dataclass
class Evolution:
    """One item's evolution in this batch, as it goes through the two calls."""

    item: Item
    operation: str
    parent: str  # the parent's prompt
    language: str
    evolved: str = ""
    reply: Reply | None = None  # the evolve call's
    rouge_l: float | None = None
    new_words: int | None = None


async def evol_round(generator: Generator) -> bool:
    """One batch of the current round's pending items: evolve, check, answer, check. False when every
    request failed; sets `generator.finished` once every round is done."""
    g, c, tally = generator, generator.config, generator.tally
    if g.state is None:
        g.state = EvolState.load(g)
    state: EvolState = g.state
    pool = replay(state.start, tally.accepted, state.failed, c.evol.rounds, c.evol.max_retries)
    if not pool.pending:
        g.finished = ROUNDS_DONE + (
            f" ({pool.gave_up} items left the pool after {c.evol.max_retries + 1} failed evolutions)"
            if pool.gave_up
            else ""
        )
        return True
    count = c.requests_per_round or g.teacher.batch_size
    if c.max_requests is not None:
        count = max(1, min(count, c.max_requests - tally.requests))
    tokenizer = c.novelty_tokenizer or "cjk"  # the same as rouge_score's on text without CJK characters

    def fail(e: Evolution, record: dict[str, Any], rule: str, reason: str, request_id: str) -> None:
        last = e.item.failures + 1 > c.evol.max_retries
        why = {"rule": rule, "reason": reason + ("; the item leaves the pool" if last else ""),
               "request": request_id, "round": pool.round, "parent_id": e.item.id,
               "operation": e.operation}  # fmt: skip
        tally.rejected[rule] += 1
        g.rejected_log.write({**record, "_rejected": why})
        state.failed.add((pool.round, e.item.id))

    # Step 1: the evolved prompts.
    requests, metas, batch = [], [], []
    for i, item in enumerate(pool.pending[:count]):
        rng = random.Random(f"{c.seed}-{item.id}-{pool.round}")  # the same choice after a resume
        parent = prompt_of(item.record)
        e = Evolution(item, rng.choice(c.evol.operations), parent, language_of(parent))
        requests.append(
            Request(
                id=f"req-{tally.requests + i:06d}",
                prompt=evolve_prompt(parent, e.operation, e.language),
                max_tokens=min(c.evol.prompt_max_tokens, c.max_tokens),
                temperature=c.temperature,
                top_p=c.top_p,
                stop=[] if g.teacher.chat else ["\n#Given Prompt#", "\n#给定提示#"],
                seed=rng.randrange(2**31),
            )
        )
        metas.append({"step": "evolve", "round": pool.round, "parent_id": item.id, "operation": e.operation})
        batch.append(e)
    replies = await g.send(requests, metas)
    survivors, batch_prompts = [], set()
    for reply, e in zip(replies, batch, strict=True):
        if reply.error is not None:
            continue  # no outcome: the item stays pending and is tried again
        e.reply = reply
        e.evolved, rule, reason, e.rouge_l, e.new_words = check_prompt(
            reply.text, e.parent, reply, c.evol.min_new_words, tokenizer
        )
        if rule is None and (_normal(e.evolved) in state.seen or _normal(e.evolved) in batch_prompts):
            rule, reason = "duplicate", "another item's prompt (or one in the starting set)"
        if rule is None:
            rule, reason = state.filters[e.language].check_instruction(e.evolved)
        if rule:
            fail(e, {"instruction": e.evolved}, rule, reason or rule, reply.request_id)
        else:
            survivors.append(e)
            batch_prompts.add(_normal(e.evolved))
    if not survivors:
        return any(r.error is None for r in replies)

    # Step 2: the answers, in a second call.
    asks = []
    for i, e in enumerate(survivors):
        text, stop = answer_prompt(e.evolved, e.language, g.teacher.chat)
        number = f"req-{tally.requests + i:06d}"
        asks.append(
            Request(
                id=number,
                prompt=text,
                max_tokens=c.max_tokens,
                temperature=c.temperature,
                top_p=c.top_p,
                stop=stop,
            )
        )
    answer_metas = [{"step": "answer", "round": pool.round, "parent_id": e.item.id} for e in survivors]
    answers = await g.send(asks, answer_metas)
    for answer, e in zip(answers, survivors, strict=True):
        if answer.error is not None or len(tally.accepted) >= c.num:
            continue
        record = {"instruction": e.evolved, "input": "", "output": answer.text.strip()}
        rule, reason = check_answer(answer.text, answer, "refusal" not in c.filters.disable)
        if rule is None:
            record, rule, reason = state.filters[e.language](record)
        if rule:
            fail(e, record, rule, reason or rule, answer.request_id)
            continue
        assert e.reply is not None
        accepted = {
            "id": f"evol-{len(tally.accepted) + 1:06d}",
            **record,
            "source": "pacos-generate",
            "metadata": {
                "teacher": g.teacher.name,
                "model": g.teacher.model,
                "request_id": e.reply.request_id,
                "answer_request_id": answer.request_id,
                "mode": "evol",
                "language": e.language,
                "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "round": pool.round,
                "operation": e.operation,
                "parent_id": e.item.id,
                "root_id": e.item.root_id,
                "depth": e.item.depth + 1,
                "rouge_l_parent": e.rouge_l,
                "new_words": e.new_words,
            },
        }
        g.accepted_log.write(accepted)
        tally.accepted.append(accepted)
        state.seen.add(_normal(e.evolved))
    return any(r.error is None for r in replies)


MODE = Mode(name="evol", round=evol_round, check=load_start, uses_seeds=False)
