"""Verifiable instructions (in the spirit of IFEval, Zhou et al., 2023): prompts that carry
instructions a program can check ("answer in fewer than 80 words", "do not use commas"), and the checks.

Each checker is a named function (response, **kwargs) -> bool in CHECKERS. Chinese counts characters where
English counts words, and Chinese punctuation counts where English punctuation does (the comma `，`, the
full stop `。`). An empty answer follows no instruction, so every checker fails it. Loose scoring forgives
what a chat model adds around an answer: a first line such as "Sure, here it is:", a closing line, and
markdown emphasis, by also trying the response without them.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Callable
from typing import Any

from pacos.errors import PacosError
from pacos.text.cjk import CJK, HAN, count_words

LANGUAGES = ("en", "zh")

_WORDISH = re.compile(r"\w")
_LATIN = re.compile(r"[A-Za-z]")
# A sentence ends at . ! ? (followed by a space or the end) or at Chinese 。！？ (followed by anything).
SENTENCE_END = re.compile(r"(?:[.!?]+[\"')\]]*(?=\s|$))|[。！？]+[”’）」』]*")
_PARAGRAPH_BREAK = re.compile(r"^[ \t]*\*{3,}[ \t]*$|\n[ \t]*\n", re.MULTILINE)
_BULLET = re.compile(r"^[ \t]*[*-][ \t]+(?![*\- \t]*$)\S", re.MULTILINE)  # not a `* * *` rule
_TITLE = re.compile(r"<<([^<>\n]+)>>")
_PLACEHOLDER = re.compile(r"\[[^\[\]\n]+\](?!\()")  # not a markdown link's [text](url)
_JSON_FENCE = re.compile(r"^```(?:json|JSON)?[ \t]*\n(.*)\n[ \t]*```$", re.DOTALL)

CHECKERS: dict[str, Callable[..., bool]] = {}


def _checker(func: Callable[..., bool]) -> Callable[..., bool]:
    """Register a checker under its function name; an empty (or blank) response fails it."""

    @functools.wraps(func)
    def check(response: str, **kwargs: Any) -> bool:
        return bool(response.strip()) and func(response, **kwargs)

    CHECKERS[func.__name__] = check
    return check


def _within(n: int, at_least: int | None, at_most: int | None, exactly: int | None = None) -> bool:
    if at_least is None and at_most is None and exactly is None:
        raise PacosError("a count check needs at_least, at_most or exactly")
    return (
        (at_least is None or n >= at_least)
        and (at_most is None or n <= at_most)
        and (exactly is None or n == exactly)
    )


def count_sentences(text: str) -> int:
    return sum(1 for piece in SENTENCE_END.split(text) if _WORDISH.search(piece))


def keyword_pattern(word: str) -> re.Pattern[str]:
    # Whole words for Latin keywords (so "art" is not found in "start"); substrings for Chinese ones.
    escaped = re.escape(word.strip())
    return re.compile(escaped if CJK.search(word) else rf"(?<!\w){escaped}(?!\w)", re.IGNORECASE)


@_checker
def word_count(response: str, at_least: int | None = None, at_most: int | None = None) -> bool:
    return _within(count_words(response), at_least, at_most)


@_checker
def sentence_count(response: str, at_least: int | None = None, at_most: int | None = None) -> bool:
    return _within(count_sentences(response), at_least, at_most)


@_checker
def paragraph_count(
    response: str, exactly: int | None = None, at_least: int | None = None, at_most: int | None = None
) -> bool:
    """Paragraphs are separated by blank lines or by a line of `***`."""
    n = sum(1 for piece in _PARAGRAPH_BREAK.split(response) if piece.strip())
    return _within(n, at_least, at_most, exactly)


@_checker
def keywords_included(response: str, keywords: list[str]) -> bool:
    return all(keyword_pattern(k).search(response) for k in keywords)


@_checker
def keywords_excluded(response: str, keywords: list[str]) -> bool:
    return not any(keyword_pattern(k).search(response) for k in keywords)


@_checker
def keyword_frequency(
    response: str, keyword: str, at_least: int | None = None, at_most: int | None = None
) -> bool:
    return _within(len(keyword_pattern(keyword).findall(response)), at_least, at_most)


@_checker
def json_format(response: str) -> bool:
    """The whole response is JSON, optionally inside one ```json fence."""
    text = response.strip()
    fenced = _JSON_FENCE.match(text)
    try:
        json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return False
    return True


@_checker
def bullet_count(response: str, exactly: int) -> bool:
    """Markdown bullets: lines starting with `* ` or `- `."""
    return len(_BULLET.findall(response)) == exactly


@_checker
def title(response: str) -> bool:
    """A title in double angular brackets, <<like this>>."""
    return any(m.strip() for m in _TITLE.findall(response))


@_checker
def all_lowercase(response: str) -> bool:
    return response == response.lower() and response != response.upper()  # some cased letter, all lower


@_checker
def all_uppercase(response: str) -> bool:
    return response == response.upper() and response != response.lower()


@_checker
def starts_with(response: str, phrase: str) -> bool:
    return response.strip().casefold().startswith(phrase.strip().casefold())


@_checker
def ends_with(response: str, phrase: str) -> bool:
    return response.strip().casefold().endswith(phrase.strip().casefold())


@_checker
def placeholders(response: str, at_least: int) -> bool:
    """Square-bracket placeholders such as [name] or [地址]."""
    return len(_PLACEHOLDER.findall(response)) >= at_least


@_checker
def no_commas(response: str) -> bool:
    return "," not in response and "，" not in response


@_checker
def response_language(response: str, language: str) -> bool:
    """A script rule, no language detection: the share of Han characters among all letters. A Latin word
    weighs about five letters against one character, so Chinese prose with English terms still reaches 30%,
    and an English answer that quotes a Chinese name stays under 10%."""
    if language not in LANGUAGES:
        raise PacosError(
            f"response_language: language must be one of {', '.join(LANGUAGES)}, not {language!r}"
        )
    letters = sum(1 for c in response if c.isalpha())
    if not letters:
        return False
    han = len(HAN.findall(response)) / letters
    if language == "zh":
        return han >= 0.3
    return han < 0.1 and len(_LATIN.findall(response)) / letters >= 0.5


def loose_variants(response: str) -> list[str]:
    """IFEval's eight loose variants: the response, without its first line, its last line or both, and each
    of these with markdown `*` removed."""
    lines = response.split("\n")
    cut = [response, "\n".join(lines[1:]), "\n".join(lines[:-1]), "\n".join(lines[1:-1])]
    return cut + [text.replace("*", "") for text in cut]


def _check(response: str, check: dict[str, Any]) -> bool:
    name = check.get("type")
    if name not in CHECKERS:
        raise PacosError(f"unknown instruction check {name!r} (known: {', '.join(sorted(CHECKERS))})")
    return CHECKERS[name](response, **check.get("kwargs", {}))


def check_prompt(response: str, instructions: list[dict[str, Any]]) -> dict[str, Any]:
    """Each instruction ({"type", "kwargs"}) checked strictly and loosely; a prompt passes when all do."""
    variants = loose_variants(response)
    per = []
    for check in instructions:
        strict = _check(response, check)
        loose = strict or any(_check(v, check) for v in variants[1:])
        per.append(
            {"type": check["type"], "kwargs": check.get("kwargs", {}), "strict": strict, "loose": loose}
        )
    return {
        "strict": all(p["strict"] for p in per),
        "loose": all(p["loose"] for p in per),
        "instructions": per,
    }


def score(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Prompt-level and instruction-level accuracy, strict and loose, and instruction accuracy by checker."""
    per = [p for r in results for p in r["instructions"]]

    def share(items: list[dict[str, Any]], key: str) -> float:
        return sum(bool(i[key]) for i in items) / len(items) if items else 0.0

    by_type: dict[str, list[dict[str, Any]]] = {}
    for p in per:
        by_type.setdefault(p["type"], []).append(p)
    return {
        "prompts": len(results),
        "prompt_strict": share(results, "strict"),
        "prompt_loose": share(results, "loose"),
        "instructions": len(per),
        "instruction_strict": share(per, "strict"),
        "instruction_loose": share(per, "loose"),
        "by_type": {
            name: {"count": len(items), "strict": share(items, "strict"), "loose": share(items, "loose")}
            for name, items in sorted(by_type.items())
        },
    }


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


# What a kwarg must hold, since a string where a list belongs would still "work" (as its characters).
_KWARG_TYPES: dict[str, Callable[[Any], bool]] = {
    "at_least": _count,
    "at_most": _count,
    "exactly": _count,
    "keyword": _text,
    "phrase": _text,
    "language": _text,
    "keywords": lambda v: isinstance(v, list) and bool(v) and all(_text(k) for k in v),
}
_KWARG_NEEDS = {"keywords": "a non-empty list of words", "keyword": "a word", "phrase": "a phrase"}
_KWARG_NEEDS |= {"at_least": "a count", "at_most": "a count", "exactly": "a count", "language": "en or zh"}


def validate_check(prompt_id: str, check: Any) -> None:
    if not isinstance(check, dict) or not isinstance(check.get("kwargs", {}), dict):
        raise PacosError(f"prompt {prompt_id}: a check must be {{'type': name, 'kwargs': {{...}}}}")
    name = check.get("type")
    if name not in CHECKERS:
        raise PacosError(f"prompt {prompt_id}: unknown check type {name!r}")
    kwargs = check.get("kwargs", {})
    for key, value in kwargs.items():
        if not _KWARG_TYPES.get(key, lambda v: True)(value):
            raise PacosError(f"prompt {prompt_id}: check {name}: {key}={value!r} is not {_KWARG_NEEDS[key]}")
    try:
        inspect.signature(CHECKERS[name]).bind("response", **kwargs)
        CHECKERS[name]("a trial response", **kwargs)  # catches a count check with no bound, a bad language
    except (TypeError, PacosError) as e:
        raise PacosError(f"prompt {prompt_id}: check {name} kwargs {kwargs}: {e}") from None
