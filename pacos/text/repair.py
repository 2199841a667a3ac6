"""Edits that make an answer follow the verifiable instructions it missed, for preference pairs.

A small model rarely writes ALL CAPITALS, a <<title>> or exactly three bullets on its own, so its sampled
answers seldom contain a positive example of the very instructions it fails most; pairs built only from
its samples cannot teach them. `repair` edits the model's own answer (its words, its length, its voice)
until every check passes: upper- or lower-case it, prepend the asked-for phrase, regroup its sentences
into n bullets or paragraphs, cut it to the word or sentence limit, wrap it as JSON. The content is the
model's, so a pair (repaired answer, failing answer) differs mainly in what the instruction asked for.

It never invents content: an answer too short for "at least 200 words", a missing keyword, a language
switch, are not repairable and give None. `repair` returns text only when `check_prompt` passes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from pacos.text.checks import CHECKERS, SENTENCE_END, check_prompt, count_sentences, keyword_pattern
from pacos.text.cjk import count_words, has_cjk, language_of
from pacos.text.ngrams import repeated_ngram_share
from pacos.text.rouge import rouge_l_f1, tokenize

_LIST_MARK = re.compile(r"^[ \t]*(?:[*\-•]|\d+[.)、])[ \t]+", re.MULTILINE)
_PLACEHOLDERS = {
    "en": ["[name]", "[date]", "[place]", "[amount]", "[contact]", "[detail]"],
    "zh": ["[姓名]", "[日期]", "[地点]", "[金额]", "[联系方式]", "[细节]"],
}


def sentences(text: str) -> list[str]:
    """The text's sentences with their end punctuation, list markers and line breaks removed."""
    flat = _LIST_MARK.sub("", text)
    flat = re.sub(r"\s*\n\s*", " ", flat).strip()
    pieces, start = [], 0
    for m in SENTENCE_END.finditer(flat):
        pieces.append(flat[start : m.end()].strip())
        start = m.end()
    pieces.append(flat[start:].strip())
    return [p for p in pieces if re.search(r"\w", p)]


def _join(parts: list[str]) -> str:
    return "".join(parts) if all(has_cjk(p) for p in parts) else " ".join(parts)


def _groups(items: list[str], n: int) -> list[list[str]] | None:
    """`items` cut into n contiguous, non-empty groups of near-equal size (None if too few)."""
    if n < 1 or len(items) < n:
        return None
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def _bullets(text: str, exactly: int) -> str | None:
    groups = _groups(sentences(text), exactly)
    return None if groups is None else "\n".join(f"* {_join(g)}" for g in groups)


def _paragraphs(
    text: str, exactly: int | None = None, at_least: int | None = None, at_most: int | None = None
) -> str | None:
    found = sentences(text)
    n = exactly or at_least or min(at_most or 1, len(found))
    groups = _groups(found, n)
    return None if groups is None else "\n\n".join(_join(g) for g in groups)


def _cut(text: str, fits: Callable[[str], bool]) -> str | None:
    """The longest run of whole leading sentences that `fits`."""
    found = sentences(text)
    for end in range(len(found), 0, -1):
        candidate = _join(found[:end])
        if fits(candidate):
            return candidate
    return None


def _title(text: str) -> str:
    first = sentences(text)[:1] or [text]
    words = re.sub(r"[^\w\s\u3400-\u9fff-]", "", first[0]).split()
    name = first[0][:12] if language_of(text) == "zh" else " ".join(words[:6])
    name = re.sub(r"[<>\n。，,.!?！？]", "", name).strip() or "Answer"
    return f"<<{name}>>\n\n{text.strip()}"


def _placeholders(text: str, at_least: int) -> str:
    marks = _PLACEHOLDERS[language_of(text)]
    needed = [marks[i % len(marks)] for i in range(at_least)]
    return f"{text.rstrip()}\n\n{' '.join(needed)}"


def _without_keywords(text: str, keywords: list[str]) -> str:
    for keyword in keywords:
        text = keyword_pattern(keyword).sub("", text)
    return re.sub(r"[ \t]+(?=[.,!?;:])", "", re.sub(r"[ \t]{2,}", " ", text))


def _starting(text: str, phrase: str) -> str:
    return f"{phrase.strip()}{'' if language_of(phrase) == 'zh' else ' '}{text.strip()}"


def _ending(text: str, phrase: str) -> str:
    return f"{text.rstrip()}\n{phrase.strip()}"


# In the order they are tried: content first, then structure, wrapping, and case last (it keeps the rest).
FIXERS: dict[str, Callable[..., str | None]] = {
    "keywords_excluded": lambda t, keywords: _without_keywords(t, keywords),
    "no_commas": lambda t: t.replace(", ", " ").replace(",", " ").replace("，", " "),
    "word_count": lambda t, at_least=None, at_most=None: (
        None
        if at_least is not None and count_words(t) < at_least
        else _cut(t, lambda c: CHECKERS["word_count"](c, at_least=at_least, at_most=at_most))
    ),
    "sentence_count": lambda t, at_least=None, at_most=None: (
        None
        if at_least is not None and count_sentences(t) < at_least
        else _cut(t, lambda c: CHECKERS["sentence_count"](c, at_least=at_least, at_most=at_most))
    ),
    "placeholders": _placeholders,
    "bullet_count": _bullets,
    "paragraph_count": _paragraphs,
    "json_format": lambda t: json.dumps({"answer": t.strip()}, ensure_ascii=False),
    "title": _title,
    "starts_with": _starting,
    "ends_with": _ending,
    "all_lowercase": lambda t: t.lower(),
    "all_uppercase": lambda t: t.upper(),
}


def repair(response: str, checks: list[dict[str, Any]]) -> str | None:
    """`response` edited until every check passes strictly, or None when some check cannot be repaired."""
    if not response.strip():
        return None
    text = response
    by_type = {c["type"]: c.get("kwargs", {}) for c in checks}
    for name, fix in FIXERS.items():
        if name in by_type and not CHECKERS[name](text, **by_type[name]):
            fixed = fix(text, **by_type[name])
            if fixed is None:
                return None
            text = fixed
    return text if text != response and check_prompt(text, checks)["strict"] else None


# A segment ends after end punctuation (a period only before a space or the end: not "2.5") or a line.
_DIGITS = re.compile(r"\d+")
_SEGMENT_END = re.compile(r"(?<=[.!?])(?=\s)|(?<=[。！？\n])")
_MARK = re.compile(r"(?:[ \t]*(?:[*\-•]|\d+[.)、])[ \t]+)+")  # nested too: "* 3. "


def _segments(text: str) -> list[str]:
    """Sentences and lines, each with its trailing line break; a list marker ("2. ", "* 2. ") stays with the
    sentence it starts instead of ending a segment of its own."""
    out = []
    for line in text.splitlines(keepends=True):
        mark = m.group(0) if (m := _MARK.match(line)) else ""
        parts = [p for p in _SEGMENT_END.split(line[len(mark) :]) if p]
        out += [mark + parts[0], *parts[1:]] if parts else [mark] if mark else []
    return out


def cut_loop(
    response: str, max_repeated: float = 0.1, min_chars: int = 20, similar: float = 0.8, min_tokens: int = 6
) -> str | None:
    """An answer that ran out of tokens, cut where it starts to loop: kept up to the last whole sentence
    or line before the first one that repeats an earlier one, nearly repeats it (ROUGE-L >= `similar`,
    for segments of `min_tokens` or more: "Use empty containers that are too small for X" again and again
    with another X), or makes repeated 4-grams pass `max_repeated` of the text. None when less than
    `min_chars` would be left (the answer loops from its start). The last piece, cut by the token limit,
    is never kept. For preference pairs: the cut answer, ended, is preferred to the whole loop."""
    pieces = _segments(response)
    seen: set[str] = set()
    earlier: list[list[str]] = []
    kept = ""
    for piece in pieces[:-1]:
        # Numbers masked: a line that differs from an earlier one only in its numbers counts on, not
        # forward ("The opposite of 22 is -22." after "... 21 is -21."; "从1918年到1919年，从1919年到...").
        key = re.sub(r"\W+", "", _DIGITS.sub("0", piece.lower()))
        tokens = tokenize(piece, "cjk")
        near = len(tokens) >= min_tokens and any(rouge_l_f1(e, tokens) >= similar for e in earlier)
        text = kept + piece
        counting = repeated_ngram_share(_DIGITS.sub("0", text)) > 3 * max_repeated  # lists share markers
        if (key and key in seen) or near or counting or repeated_ngram_share(text) > max_repeated:
            break
        seen.add(key)
        if len(tokens) >= min_tokens:
            earlier.append(tokens)
        kept += piece
    kept = kept.strip()
    return kept if len(kept) >= min_chars else None
