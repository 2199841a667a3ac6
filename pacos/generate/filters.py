"""Alpaca's filters on generated candidates, as named rules, plus `pacos data clean`'s rules.

Alpaca dropped an instruction of <= 3 or > 150 words, one with a blacklisted word (image, graph, file,
draw, plot, ...), one starting with "Write a program", with punctuation, or with a non-ASCII character
(which also dropped every Chinese instruction). Here each is a rule with a name, counted in the summary;
the non-ASCII rule applies to English generation only, and Chinese counts characters instead of words.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pacos.data.clean import CleanConfig, RecordCleaner
from pacos.generate.config import DEFAULT_BLACKLIST, DEFAULT_BLACKLIST_ZH, GenerateConfig
from pacos.text.cjk import CJK, count_words

_PUNCTUATION = set(string.punctuation) | set("，。、；：？！“”‘’（）《》【】…—·「」『』")
DEFAULT_PREFIXES = {"en": ["Write a program"], "zh": ["编写一个程序", "写一个程序"]}


@dataclass(frozen=True)
class FilterRule:
    name: str
    description: str
    check: Callable[[dict[str, Any]], str | None]  # the reason to drop, or None


# Whoever says these speaks about itself, not the task: dropped at any length.
_IDENTITY = ("as an ai", "as a language model", "as an artificial intelligence", "作为一个ai", "作为ai",
             "作为一个人工智能", "作为人工智能", "作为语言模型", "作为一个语言模型")  # fmt: skip
# Apologies and inability: a refusal when the answer is short (WizardLM: "sorry" and under 80 words).
_APOLOGY = ("sorry", "i apologize", "i cannot", "i can't", "i am unable", "i'm unable", "i am not able",
            "i'm not able", "抱歉", "对不起", "我无法", "我不能")  # fmt: skip
REFUSAL_WORDS = 80


def _phrases(phrases: tuple[str, ...]) -> re.Pattern[str]:
    # Latin phrases as whole words ("Wi-Fi cannot" holds no "I cannot"); Chinese ones as substrings.
    return re.compile("|".join(re.escape(p) if CJK.search(p) else rf"\b{re.escape(p)}\b" for p in phrases))


_IDENTITY_RE, _APOLOGY_RE = _phrases(_IDENTITY), _phrases(_APOLOGY)


def refusal(answer: str) -> str | None:
    """Why the answer is a refusal or speaks about being an AI, or None."""
    text = answer.casefold().replace("\u2019", "'")  # I can’t = I can't
    if found := _IDENTITY_RE.search(text):
        return f"speaks as an AI ({found.group(0)!r})"
    found = _APOLOGY_RE.search(text)
    hit = found.group(0) if found else None
    words = count_words(answer)
    if hit and words < REFUSAL_WORDS:
        return f"{hit!r} in a {words}-word answer"
    return None


def _contamination_rule(eval_sets: list[str]) -> FilterRule:
    """`exclude`: candidates that overlap an evaluation prompt (a 13-gram, or ROUGE-L > 0.7) are dropped."""
    from pacos.data.contamination import ContaminationIndex, load_eval_sets

    index = ContaminationIndex(load_eval_sets(eval_sets))

    def contaminated(r: dict[str, Any]) -> str | None:
        found = index.check(r)
        return found[0].describe() if found else None

    return FilterRule(
        "contaminated", f"overlaps an evaluation prompt of {', '.join(eval_sets)}", contaminated
    )


class CandidateFilter:
    """Every enabled rule, in order; the first that fires names the reason."""

    def __init__(self, config: GenerateConfig) -> None:
        f, language = config.filters, config.language
        blacklist = f.blacklist if f.blacklist is not None else (
            DEFAULT_BLACKLIST_ZH if language == "zh" else DEFAULT_BLACKLIST
        )  # fmt: skip
        # Whole words for Latin text (Alpaca's \bword\b, any case); substrings for Chinese words.
        parts = [re.escape(w) if CJK.search(w) else rf"\b{re.escape(w)}\b" for w in blacklist]
        banned = re.compile("|".join(parts), re.IGNORECASE) if parts else None
        prefixes = f.banned_prefixes if f.banned_prefixes is not None else DEFAULT_PREFIXES[language]

        def too_short(r: dict[str, Any]) -> str | None:
            n = count_words(r["instruction"])
            return f"{n} words < {f.min_words}" if n < f.min_words else None

        def too_long(r: dict[str, Any]) -> str | None:
            n = count_words(r["instruction"])
            return f"{n} words > {f.max_words}" if n > f.max_words else None

        def blacklisted(r: dict[str, Any]) -> str | None:
            m = banned.search(r["instruction"]) if banned else None
            return f"mentions {m.group(0)!r}" if m else None

        def banned_prefix(r: dict[str, Any]) -> str | None:
            text = r["instruction"].casefold()
            hit = next((p for p in prefixes if text.startswith(p.casefold())), None)
            return f"starts with {hit!r}" if hit else None

        def leading_punctuation(r: dict[str, Any]) -> str | None:
            first = r["instruction"][:1]
            return f"starts with {first!r}" if first in _PUNCTUATION else None

        def leading_non_ascii(r: dict[str, Any]) -> str | None:
            first = r["instruction"][:1]
            return f"starts with {first!r}" if first and not first.isascii() else None

        def wrong_language(r: dict[str, Any]) -> str | None:
            return None if CJK.search(r["instruction"]) else "no Chinese in a Chinese instruction"

        def refuses(r: dict[str, Any]) -> str | None:
            return refusal(r["output"]) if r["output"] else None

        def input_is_output(r: dict[str, Any]) -> str | None:
            same = r["input"] and r["input"].strip() == r["output"].strip()
            return "the output repeats the input" if same else None

        rules = [
            FilterRule("too_short", f"instruction of fewer than {f.min_words} words", too_short),
            FilterRule("too_long_instruction", f"instruction of more than {f.max_words} words", too_long),
            FilterRule(
                "blacklisted_word", "a word a text model cannot act on (image, draw ...)", blacklisted
            ),
            FilterRule("banned_prefix", "starts with a banned phrase (Write a program)", banned_prefix),
            FilterRule("leading_punctuation", "starts with punctuation", leading_punctuation),
            FilterRule("input_is_output", "the output only repeats the input", input_is_output),
            FilterRule("refusal", "the output refuses (sorry, I cannot ...) or speaks as an AI", refuses),
        ]
        if language == "en":
            rules.append(
                FilterRule("leading_non_ascii", "starts with a non-ASCII character", leading_non_ascii)
            )
        else:
            rules.append(FilterRule("wrong_language", "no Chinese in the instruction", wrong_language))
        if config.exclude:
            rules.append(_contamination_rule(config.exclude))
        self.rules = [r for r in rules if r.name not in f.disable]
        self.cleaner = RecordCleaner(CleanConfig(fix=True)) if config.clean else None

    def check_instruction(self, instruction: str) -> tuple[str | None, str | None]:
        """Only the rules that read the instruction (Self-Instruct filters instructions before instances)."""
        record = {"instruction": instruction, "input": "", "output": ""}
        for rule in self.rules:
            if rule.name != "input_is_output" and (reason := rule.check(record)):
                return rule.name, reason
        return None, None

    def __call__(self, record: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
        """(the record, cleaned; the rule that drops it or None; the reason)."""
        if self.cleaner is not None:
            verdict = self.cleaner(record)
            if verdict.rule:
                return verdict.record, verdict.rule, verdict.reason
            record = verdict.record
        for rule in self.rules:
            reason = rule.check(record)
            if reason:
                return record, rule.name, reason
        return record, None, None
