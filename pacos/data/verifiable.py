"""Prompts that carry verifiable instructions: the bundled evaluation set (105 prompts, en + zh) and the
reader of any file in its format (one JSON object per line: id, language, instruction, checks), every
check validated against pacos.text.checks before use."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from pacos.errors import PacosError
from pacos.text.checks import LANGUAGES, validate_check
from pacos.text.cjk import HAN_CHARS, language_of

HAN_RUN = re.compile(f"[{HAN_CHARS}]+")

PROMPTS_FILE = Path(__file__).with_name("ifeval_prompts.jsonl")


def load_ifeval_prompts(language: str | None = None, path: str | Path | None = None) -> list[dict[str, Any]]:
    """The bundled prompt set (or the one at `path`), optionally one language, each prompt validated."""
    if language is not None and language not in LANGUAGES:
        raise PacosError(f"ifeval language must be one of {', '.join(LANGUAGES)}, not {language!r}")
    where = Path(path) if path else PROMPTS_FILE
    try:
        lines = where.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PacosError(f"ifeval prompts '{where}': {e.strerror or e}") from None
    prompts: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            prompt = json.loads(line)
        except ValueError as e:
            raise PacosError(f"ifeval prompts '{where}' line {number}: not JSON: {e}") from None
        prompt_id = str(prompt.get("id", f"line {number}")) if isinstance(prompt, dict) else f"line {number}"
        if not isinstance(prompt, dict) or not {"id", "language", "instruction", "checks"} <= prompt.keys():
            raise PacosError(f"ifeval prompt {prompt_id}: needs id, language, instruction and checks")
        if prompt_id in seen:
            raise PacosError(f"ifeval prompt {prompt_id}: the id is used twice")
        seen.add(prompt_id)
        if prompt["language"] not in LANGUAGES:
            raise PacosError(
                f"ifeval prompt {prompt_id}: language must be en or zh, not {prompt['language']!r}"
            )
        if not isinstance(prompt["checks"], list) or not prompt["checks"]:
            raise PacosError(f"ifeval prompt {prompt_id}: checks must be a non-empty list")
        for check in prompt["checks"]:
            validate_check(prompt_id, check)
        if language is None or prompt["language"] == language:
            prompts.append(prompt)
    return prompts


# --- a pool of verifiable prompts for preference data ------------------------------------------------------
# Each clause: (check type, kwargs maker, English wording, Chinese wording or None). A prompt is a seed task
# plus one or two clauses; the checks travel with it, so answers to it are scored by a program (Tulu 3's
# verifiable rewards). Wordings differ from the evaluation set's hand-written prompts on purpose.
_STARTS = {
    "en": ["Sure thing.", "Here is my answer:", "In short,", "Well,"],
    "zh": ["好的。", "我的回答如下：", "简单来说，"],
}
_ENDS = {
    "en": ["Hope this helps.", "That is all.", "Any other questions?"],
    "zh": ["希望对你有帮助。", "以上就是全部内容。"],
}
_STOP = set(
    "about above after again against because before being below between could doing during every first "
    "their there these those through under until where which while would should other another".split()
)


def _keyword(record: dict[str, Any], rng: random.Random, language: str) -> str | None:
    """A word of the task's reference answer, so that a good answer can use it naturally."""
    text = record.get("output", "")
    if language == "zh":
        runs = [m.group() for m in HAN_RUN.finditer(text) if len(m.group()) >= 2]
        if not runs:
            return None
        run = rng.choice(runs)
        start = rng.randrange(len(run) - 1)
        return run[start : start + 2]
    words = sorted({w.lower() for w in re.findall(r"[A-Za-z]{5,}", text)} - _STOP)
    return rng.choice(words) if words else None


def _clauses(record: dict[str, Any], rng: random.Random, language: str) -> list[tuple[dict[str, Any], str]]:
    """Every clause this task could take, with its check, in its language."""
    zh = language == "zh"
    n_words = rng.choice([40, 50, 60, 80, 100]) if not zh else rng.choice([60, 80, 100, 150])
    n_least = rng.choice([60, 80, 120]) if not zh else rng.choice([80, 120, 200])
    n_sent, n_bul, n_par = rng.randint(2, 4), rng.randint(3, 5), rng.randint(2, 3)
    start, end = rng.choice(_STARTS[language]), rng.choice(_ENDS[language])
    out = [
        ({"type": "word_count", "kwargs": {"at_most": n_words}},
         f"回答不要超过{n_words}个字。" if zh else f"Keep your answer under {n_words + 1} words."),
        ({"type": "word_count", "kwargs": {"at_least": n_least}},
         f"回答至少要有{n_least}个字。" if zh else f"Write no fewer than {n_least} words."),
        ({"type": "sentence_count", "kwargs": {"at_most": n_sent}},
         f"最多用{n_sent}句话回答。" if zh else f"Reply in {n_sent} sentences or fewer."),
        ({"type": "paragraph_count", "kwargs": {"exactly": n_par}},
         f"回答分成{n_par}段，段与段之间空一行。" if zh
         else f"Split your answer into {n_par} paragraphs with a blank line between them."),
        ({"type": "bullet_count", "kwargs": {"exactly": n_bul}},
         f"用{n_bul}个以“* ”开头的列表项回答。" if zh
         else f"Answer as a list of {n_bul} bullet points, each line starting with \"* \"."),
        ({"type": "title", "kwargs": {}},
         "在回答开头写一个标题，用双尖括号括起来，如<<标题>>。" if zh
         else "Begin with a title inside double angle brackets, like <<My Title>>."),
        ({"type": "no_commas", "kwargs": {}}, "整个回答里不能出现逗号。" if zh else "Avoid commas entirely."),
        ({"type": "starts_with", "kwargs": {"phrase": start}},
         f"回答必须以“{start}”开头。" if zh else f'The first words of your reply must be "{start}"'),
        ({"type": "ends_with", "kwargs": {"phrase": end}},
         f"回答最后一句必须是“{end}”" if zh else f'Finish your reply with the exact sentence "{end}"'),
        ({"type": "placeholders", "kwargs": {"at_least": 2}},
         "回答中至少放两个方括号占位符，如[地点]。" if zh
         else "Leave at least two placeholders in square brackets, such as [date]."),
        ({"type": "json_format", "kwargs": {}},
         "只输出一个合法的JSON对象作为回答。" if zh else "Give your whole reply as one valid JSON object."),
        ({"type": "response_language", "kwargs": {"language": language}},
         "请用中文回答。" if zh else "Reply in English."),
    ]  # fmt: skip
    if not zh:
        out += [
            ({"type": "all_lowercase", "kwargs": {}}, "Use only lowercase letters in your reply."),
            ({"type": "all_uppercase", "kwargs": {}}, "Write your reply entirely in uppercase."),
        ]
    keyword = _keyword(record, rng, language)
    if keyword:
        out += [
            ({"type": "keywords_included", "kwargs": {"keywords": [keyword]}},
             f"回答里要用到“{keyword}”这个词。" if zh else f'Mention the word "{keyword}" in your reply.'),
            ({"type": "keyword_frequency", "kwargs": {"keyword": keyword, "at_least": 2}},
             f"“{keyword}”至少出现两次。" if zh else f'Use the word "{keyword}" at least twice.'),
        ]  # fmt: skip
    return out


# Pairs of checks no answer can satisfy together, or that make each other trivial.
_CLASH = [
    {"all_lowercase", "all_uppercase"},
    {"json_format", "bullet_count"},
    {"json_format", "title"},
    {"json_format", "paragraph_count"},
    {"json_format", "starts_with"},
    {"json_format", "ends_with"},
    {"json_format", "all_uppercase"},
    {"json_format", "all_lowercase"},
    {"bullet_count", "paragraph_count"},
    {"starts_with", "title"},
    {"all_lowercase", "starts_with"},
    {"all_lowercase", "ends_with"},
    {"all_uppercase", "starts_with"},
    {"all_uppercase", "ends_with"},
    {"no_commas", "starts_with"},
    {"no_commas", "ends_with"},
]


def prompt_pool(
    tasks: list[dict[str, Any]], n: int, seed: int = 0, max_checks: int = 2, id_prefix: str = "pool"
) -> list[dict[str, Any]]:
    """`n` verifiable prompts: seed tasks (instruction records with a reference `output`) with one to
    `max_checks` clauses appended in the task's language (languages in equal shares), in the evaluation
    set's format plus the task's `input` and reference `output`. Deterministic for a seed; no repeats."""
    if not tasks:
        raise PacosError("a verifiable prompt pool needs seed tasks")
    rng = random.Random(seed)
    by_language: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:  # languages in equal shares, whatever their numbers of tasks
        by_language.setdefault(language_of(task["instruction"]), []).append(task)
    languages = sorted(by_language)
    pool, seen = [], set()
    attempts = 0
    while len(pool) < n and attempts < 50 * n:
        attempts += 1
        language = languages[len(pool) % len(languages)]
        task = rng.choice(by_language[language])
        clauses = _clauses(task, rng, language)
        picked = [rng.choice(clauses)]
        if max_checks > 1 and rng.random() < 0.5:
            other = rng.choice(clauses)
            if (
                other[0]["type"] != picked[0][0]["type"]
                and {picked[0][0]["type"], other[0]["type"]} not in _CLASH
            ):
                picked.append(other)
        joiner = "" if language == "zh" else " "
        instruction = task["instruction"].rstrip() + joiner + joiner.join(text for _, text in picked)
        key = (instruction, task.get("input", ""))
        if key in seen:
            continue
        seen.add(key)
        pool.append(
            {
                "id": f"{id_prefix}-{language}-{len(pool) + 1:05d}",
                "language": language,
                "instruction": instruction,
                "input": task.get("input", ""),
                "output": task.get("output", ""),
                "checks": [check for check, _ in picked],
            }
        )
    return pool
