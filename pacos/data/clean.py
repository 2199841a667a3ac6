"""Named cleaning rules for instruction data, covering the defects found in the original Alpaca 52K.

Two kinds of rule:
- `fix` rules repair a record (strip whitespace, remove control characters, normalise no-input
  markers). Without `fix=True` they only flag: the record is counted and kept unchanged.
- `drop` rules remove a record. The first drop rule that matches names the reason; every dropped
  record goes to the rejected list with that rule, so nothing is lost silently.
Rules work on any language: nothing here assumes ASCII, so Chinese records pass through intact.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from pacos.config import known_names
from pacos.data.records import Record
from pacos.text.cjk import HAN

TEXT_FIELDS = ("instruction", "input", "output")

# Requests a text-only model cannot satisfy: producing or perceiving images, audio, video, drawings or
# web pages. Alpaca's generation filter dropped any instruction *mentioning* such words (so "the plot of
# Hamlet" or "a shell command that lists files" went too); these patterns need the request itself.
_MEDIA = (
    r"(?:image|picture|photo|photograph|video|audio|recording|clip|drawing|painting|diagram|flowchart"
    r"|graph|chart|map|figure|screenshot|logo|animation|gif|meme|sketch)s?"
)
DEFAULT_MODALITY_PATTERNS = [
    r"\b(?:draw|sketch|paint|illustrate)\b(?!\s+(?:a\s+|the\s+|any\s+)?(?:conclusions?|comparisons?"
    r"|inferences?|parallels?|analog(?:y|ies)|attention|distinctions?|lessons?|on\b|from\b|upon\b))",
    rf"\b(?:generate|create|make|design|produce|render|take|edit|upload|record|show me)\s+"
    rf"(?:(?:an?|the|some|this|that|my|your|\w+)\s+){{0,2}}{_MEDIA}\b",
    rf"\b(?:this|these|the following|the given|the attached|attached|the above|the below|the provided"
    rf"|given|provided|below|above)\s+{_MEDIA}\b",
    r"\b(?:watch|listen to|look at)\s+(?:the|this|that|these)\s+"
    r"(?:video|clip|song|recording|audio|movie|image|picture|photo)s?\b",
    r"\bplot\s+(?:the\s+|a\s+|an\s+|this\s+)?(?:graph|data|function|points?|curve|chart|line|equation"
    r"|results?|values?|distribution)\b",
    r"\b(?:go to|visit|open|browse)\s+(?:the\s+|this\s+|that\s+|a\s+|our\s+)?(?:website|web\s?page|page"
    r"|link|url|site)\b",
    r"画(?:一|几|两)(?:幅|张)|(?:画|绘制|生成|制作|创建|设计|拍)(?:一|几|两)?(?:幅|张|个|段|份)?(?:图片|图像|照片|图画|画|视频|音频|流程图"
    r"|示意图|图表|海报|动画|地图)",
    r"(?:这|该|下面的?|以下的?|附件中?的|上面的?|所给的?|给定的?)(?:张|幅|段|个)?(?:图片|图像|照片|视频|音频|图表|地图"
    r"|录音)",
    r"(?:观看|收听|看|听)(?:这|该|下面)(?:段|个|张)?(?:视频|音频|图片|录音)",
]

# Outputs that say "there is no answer" (compared after lower-casing and trimming . and whitespace).
DEFAULT_NA_OUTPUTS = [
    "n/a", "n.a", "na", "<n/a>", "<na>", "no output", "<no output>", "<nooutput>", "nooutput",
    "<noinput>", "noinput", "no input", "<no input>", "not applicable", "nil", "null", "<null>",
    "-", "--", "...", "…", "?", "无", "无输出", "不适用", "无法回答",
]  # fmt: skip

# Inputs that mean "no input" and should be the empty string.
DEFAULT_NO_INPUT_MARKERS = [
    "<noinput>", "<no input>", "noinput", "no input", "no input.", "<none>", "none", "none.", "n/a",
    "<n/a>", "null", "nil", "nan", "-", "not applicable", "no input required", "<empty>", "empty",
    "无", "无输入", "空",
]  # fmt: skip


class CleanConfig(BaseModel):
    """Settings of `pacos data clean` (YAML keys or `--set key=value`)."""

    model_config = ConfigDict(extra="forbid")

    fix: bool = False
    max_chars: int = 20_000
    disable: list[str] = []
    modality_patterns: list[str] = DEFAULT_MODALITY_PATTERNS
    na_outputs: list[str] = DEFAULT_NA_OUTPUTS
    no_input_markers: list[str] = DEFAULT_NO_INPUT_MARKERS
    examples_per_rule: int = 3

    @field_validator("disable")
    @classmethod
    def _known_rules(cls, names: list[str]) -> list[str]:
        return known_names(names, RULES_BY_NAME)

    @field_validator("modality_patterns")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"not a valid regular expression {pattern!r}: {e}") from None
        return patterns

    @field_validator("max_chars")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be a positive number of characters")
        return value


@dataclass(frozen=True)
class CleanRule:
    name: str
    kind: Literal["fix", "drop"]
    description: str
    # fix rules: return the repaired record, or None when nothing changes.
    # drop rules: return the reason for dropping, or None to keep.
    apply: Callable[[Record, _Compiled], Any]


@dataclass
class _Compiled:
    """Config turned into matchers once, so the per-record work is only regex scans."""

    config: CleanConfig
    modality: re.Pattern[str]
    na_outputs: frozenset[str]
    no_input_markers: frozenset[str]

    @classmethod
    def build(cls, config: CleanConfig) -> _Compiled:
        pattern = "|".join(f"(?:{p})" for p in config.modality_patterns) or r"(?!x)x"
        return cls(
            config=config,
            modality=re.compile(pattern, re.IGNORECASE),
            na_outputs=frozenset(_marker_key(s) for s in config.na_outputs),
            no_input_markers=frozenset(_marker_key(s) for s in config.no_input_markers),
        )


def _marker_key(text: str) -> str:
    return text.strip().strip(".。").strip().casefold()


def _replace(record: Record, changes: dict[str, Any]) -> Record | None:
    changed = {k: v for k, v in changes.items() if record.get(k) != v}
    return {**record, **changed} if changed else None


# --- fix rules ------------------------------------------------------------------------------------

# C0/C1 controls except tab and newline, zero-width characters, BOM, and lone surrogates (which
# cannot be written as UTF-8 at all).
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff\ud800-\udfff]")


def _fixed_text(record: Record, fix: Callable[[str], str]) -> dict[str, Any]:
    """`fix` applied to the text fields and, in a conversation, to every turn (what training reads)."""
    changes: dict[str, Any] = {k: fix(record[k]) for k in TEXT_FIELDS if isinstance(record.get(k), str)}
    if isinstance(record.get("messages"), list):
        changes["messages"] = [
            {**m, "content": fix(m["content"])} if isinstance(m.get("content"), str) else m
            for m in record["messages"]
        ]
    return changes


def _without_control_chars(value: str) -> str:
    return _BAD_CHARS.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))


def _fix_control_chars(record: Record, c: _Compiled) -> Record | None:
    return _replace(record, _fixed_text(record, _without_control_chars))


def _fix_whitespace(record: Record, c: _Compiled) -> Record | None:
    return _replace(record, _fixed_text(record, str.strip))


def _fix_no_input_marker(record: Record, c: _Compiled) -> Record | None:
    value = record.get("input") or ""
    if value and _marker_key(value) in c.no_input_markers:
        return {**record, "input": ""}
    return None


# --- drop rules -----------------------------------------------------------------------------------


def _empty_instruction(record: Record, c: _Compiled) -> str | None:
    return "instruction is empty" if not record["instruction"].strip() else None


def _empty_output(record: Record, c: _Compiled) -> str | None:
    return "output is empty" if not (record.get("output") or "").strip() else None


def _na_output(record: Record, c: _Compiled) -> str | None:
    output = record.get("output") or ""
    return f"output is a placeholder: {output.strip()!r}" if _marker_key(output) in c.na_outputs else None


# A following task glued onto an output: "##", "18. Instruction:", "### Input:" and similar lines.
_MERGED = re.compile(
    r"^[ \t]*(?:#{2,}[ \t]*$|(?:#{1,}[ \t]*)?\d{1,3}[.)][ \t]*(?:Instruction|Input|Output)[ \t]*:"
    r"|#{2,}[ \t]*(?:Instruction|Input|Output|Response)[ \t]*:?)",
    re.MULTILINE,
)


def _merged_items(record: Record, c: _Compiled) -> str | None:
    for key in ("output", "input"):
        m = _MERGED.search(record.get(key) or "")
        if m:
            return f"{key} carries another task: {m.group(0).strip()!r}"
    return None


_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_ATTACHMENT = re.compile(
    r"<\s*(?:picture|image|img|photo|video|audio|file|attachment|insert|link|url)\b[^>]*>"
    r"|\[\s*(?:picture|image|img|photo|video|audio|attachment|file)[^\]]*\]"
    r"|\bpicture attached\b|\bimage attached\b|\battached (?:image|photo|picture|file)\b",
    re.IGNORECASE,
)


# A teacher stuck in a loop writes the same line or sentence again and again; trained on, that teaches
# the loop. Code blocks are skipped (lines such as `return None` repeat legitimately), list markers are
# ignored ("3. X" and "4. X" are the same item), and short pieces ("Yes.", "}") never count.
_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_LIST_MARKER = re.compile(r"^\s*(?:\d{1,3}[.)、]|[-*•])\s*")
_PIECES = re.compile(r"\n|(?<=[.!?])\s+|(?<=[。！？；])")
_MIN_PIECE_CHARS = 8
_MAX_REPEATS = 2


def _repetitive_output(record: Record, c: _Compiled) -> str | None:
    text = _CODE_BLOCK.sub("\n", record.get("output") or "")
    pieces = (_LIST_MARKER.sub("", p).strip().lower() for p in _PIECES.split(text))
    counts = Counter(p for p in pieces if len(p) >= _MIN_PIECE_CHARS)
    if not counts:
        return None
    piece, n = counts.most_common(1)[0]
    return f"output repeats {piece[:60]!r} {n} times" if n > _MAX_REPEATS else None


def _url_or_attachment(record: Record, c: _Compiled) -> str | None:
    text = (record.get("input") or "").strip()
    if text and _URL.fullmatch(text):
        return "input is only a URL (the model cannot open it)"
    m = _ATTACHMENT.search(text) or _ATTACHMENT.search(record["instruction"])
    if m:
        return f"refers to an attachment or placeholder: {m.group(0)!r}"
    if not text and _URL.search(record["instruction"]):
        return "instruction depends on the content of a URL"
    return None


def _non_text_modality(record: Record, c: _Compiled) -> str | None:
    m = c.modality.search(record["instruction"])
    return f"instruction needs non-text input or output: {m.group(0)!r}" if m else None


def _too_long(record: Record, c: _Compiled) -> str | None:
    size = sum(len(record.get(k) or "") for k in TEXT_FIELDS)
    return f"{size} characters > max_chars {c.config.max_chars}" if size > c.config.max_chars else None


# --- arithmetic check -----------------------------------------------------------------------------
# Alpaca's teacher got most arithmetic wrong. This rule checks only what it can check exactly: a
# request with one arithmetic expression (or "P% of N") whose output states a different final number.

_ASK = re.compile(
    r"\b(?:calculate|compute|evaluate|what is|what's|solve|find the (?:value|result)|how much is)"
    r"\b|计算|等于|多少|=\s*\?",
    re.IGNORECASE,
)
_NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
_EXPR = re.compile(rf"[(\s]*-?{_NUM}[)\s]*(?:(?:[-+*/×÷^]|\bx\b)[(\s]*-?{_NUM}[)\s]*)+")
_PERCENT = re.compile(rf"({_NUM})\s*%\s*of\s*({_NUM})", re.IGNORECASE)
_OUT_NUM = re.compile(rf"-?{_NUM}")
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 1e6):
            raise ValueError("too large")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError("not arithmetic")


def expected_arithmetic(text: str) -> float | None:
    """The value of the single arithmetic expression a request asks for, or None if unsure."""
    if not _ASK.search(text):
        return None
    percents = _PERCENT.findall(text)
    expressions = [m.group(0) for m in _EXPR.finditer(text)]
    if len(percents) + len(expressions) != 1:
        return None
    # Only a request that is little more than the expression: this keeps dates, ranges and phone
    # numbers inside longer questions out of reach.
    rest = _ASK.sub(" ", _PERCENT.sub(" ", _EXPR.sub(" ", text)))
    if len(re.findall(r"[A-Za-z]+", rest)) + len(HAN.findall(rest)) / 2 > 6:
        return None
    if re.search(r"\d+\s*[/-]\s*\d+\s*[/-]\s*\d+|\b0\d", expressions[0] if expressions else ""):
        return None  # dates and zero-padded codes, not arithmetic
    if percents:
        p, n = (float(x.replace(",", "")) for x in percents[0])
        return p * n / 100
    expr = expressions[0].replace(",", "").replace("×", "*").replace("÷", "/").replace("^", "**")
    expr = re.sub(r"\bx\b", "*", expr)
    try:
        value = _eval(ast.parse(expr.strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _matches(stated: str, expected: float) -> bool:
    value = float(stated.replace(",", ""))
    decimals = len(stated.split(".")[1]) if "." in stated else 0
    tolerance = max(0.5 * 10**-decimals, 1e-9 * abs(expected))  # the output may round
    return abs(value - expected) <= tolerance


def _wrong_arithmetic(record: Record, c: _Compiled) -> str | None:
    expected = expected_arithmetic(f"{record['instruction']}\n{record.get('input') or ''}")
    if expected is None:
        return None
    stated = _OUT_NUM.findall(record.get("output") or "")
    if not stated or any(_matches(s, expected) for s in stated):
        return None
    shown = int(expected) if expected.is_integer() else round(expected, 6)
    return f"output says {stated[-1]}, the arithmetic gives {shown}"


RULES: list[CleanRule] = [
    CleanRule(
        "control_chars",
        "fix",
        "control characters, zero-width characters, lone surrogates, CR line ends",
        _fix_control_chars,
    ),
    CleanRule(
        "whitespace",
        "fix",
        "leading or trailing whitespace in instruction, input, output or a conversation's turns",
        _fix_whitespace,
    ),
    CleanRule(
        "no_input_marker",
        "fix",
        "input is a no-input marker (<noinput>, No input, N/A, ...): set to ''",
        _fix_no_input_marker,
    ),
    CleanRule("empty_instruction", "drop", "instruction is empty or whitespace", _empty_instruction),
    CleanRule("empty_output", "drop", "output is empty or whitespace", _empty_output),
    CleanRule("na_output", "drop", "output is a placeholder such as N/A or <No Output>", _na_output),
    CleanRule(
        "merged_items",
        "drop",
        "output or input carries a following task (## / 18. Instruction: ...)",
        _merged_items,
    ),
    CleanRule(
        "repetitive_output",
        "drop",
        "output repeats a line or sentence 3 or more times (a looping teacher)",
        _repetitive_output,
    ),
    CleanRule(
        "url_or_attachment",
        "drop",
        "input is a URL, or refers to an attachment or placeholder",
        _url_or_attachment,
    ),
    CleanRule(
        "non_text_modality",
        "drop",
        "instruction asks to make or perceive images, drawings, audio, video or web pages",
        _non_text_modality,
    ),
    CleanRule(
        "wrong_arithmetic",
        "drop",
        "output's number disagrees with the arithmetic the instruction asks for",
        _wrong_arithmetic,
    ),
    CleanRule("too_long", "drop", "instruction + input + output longer than max_chars", _too_long),
]
DUPLICATE_RULE = "exact_duplicate"
RULES_BY_NAME = {r.name: r for r in RULES} | {DUPLICATE_RULE: None}


def dedup_key(record: Record) -> tuple[str, ...]:
    """What makes two records exact duplicates: their text fields, Unicode-normalised, case and runs of
    whitespace ignored (shared with `pacos data dedup`, so both agree on what an exact copy is)."""
    return tuple(
        " ".join(unicodedata.normalize("NFKC", record.get(k) or "").casefold().split()) for k in TEXT_FIELDS
    )


def _example(record: Record, reason: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"instruction": record.get("instruction", "")[:160]}
    if record.get("input"):
        out["input"] = record["input"][:160]
    out["output"] = (record.get("output") or "")[:160]
    if reason:
        out["reason"] = reason
    return out


@dataclass
class CleanResult:
    kept: list[Record]
    rejected: list[Record]
    report: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class CleanVerdict:
    """One record through the rules: the record (fixed when `fix` is on), the fix rules that fired, and the
    drop rule that removes it (None: kept)."""

    record: Record
    fixes: list[str]
    rule: str | None = None
    reason: str | None = None


class RecordCleaner:
    """The enabled rules, compiled once, for one record at a time (`pacos generate` checks candidates)."""

    def __init__(self, config: CleanConfig | None = None) -> None:
        self.config = config or CleanConfig()
        self.compiled = _Compiled.build(self.config)
        enabled = [r for r in RULES if r.name not in self.config.disable]
        self.fixes = [r for r in enabled if r.kind == "fix"]
        self.drops = [r for r in enabled if r.kind == "drop"]

    def __call__(self, record: Record) -> CleanVerdict:
        fired = []
        for rule in self.fixes:
            fixed = rule.apply(record, self.compiled)
            if fixed is not None:
                fired.append(rule.name)
                if self.config.fix:
                    record = fixed
        for rule in self.drops:
            reason = rule.apply(record, self.compiled)
            if reason:
                return CleanVerdict(record, fired, rule.name, reason)
        return CleanVerdict(record, fired)


def clean_records(
    records: Iterable[Record],
    config: CleanConfig | None = None,
    progress: Callable[[Iterable[Record]], Iterable[Record]] | None = None,
) -> CleanResult:
    """Apply every enabled rule; return kept records, rejected records (with `_rejected`) and a report."""
    config = config or CleanConfig()
    cleaner = RecordCleaner(config)
    dedup = DUPLICATE_RULE not in config.disable
    counts = {r.name: 0 for r in RULES} | {DUPLICATE_RULE: 0}
    examples: dict[str, list[dict[str, Any]]] = {name: [] for name in counts}
    seen: dict[tuple[str, ...], int] = {}
    kept: list[Record] = []
    rejected: list[Record] = []
    total = 0

    def note(name: str, record: Record, reason: str | None = None) -> None:
        counts[name] += 1
        if len(examples[name]) < config.examples_per_rule:
            examples[name].append(_example(record, reason))

    for original in progress(records) if progress else records:
        total += 1
        verdict = cleaner(original)
        for name in verdict.fixes:
            note(name, original)
        record, rule_name, reason = verdict.record, verdict.rule, verdict.reason
        if rule_name is None and dedup:
            key = dedup_key(record)
            if key in seen:
                rule_name, reason = DUPLICATE_RULE, f"same as kept record #{seen[key] + 1}"
            else:
                seen[key] = len(kept)
        if rule_name is None:
            kept.append(record)
            continue
        note(rule_name, original, reason)
        rejected.append({**original, "_rejected": {"rule": rule_name, "reason": reason}})

    descriptions = {r.name: (r.kind, r.description) for r in RULES}
    descriptions[DUPLICATE_RULE] = (
        "drop",
        "same instruction, input and output as an earlier record "
        "(after Unicode, case and whitespace normalisation)",
    )
    report = {
        "records_in": total,
        "records_kept": len(kept),
        "records_dropped": len(rejected),
        "fix_applied": config.fix,
        "rules": [
            {
                "name": name,
                "kind": kind,
                "action": (
                    "disabled"
                    if name in config.disable
                    else "drop"
                    if kind == "drop"
                    else "fix"
                    if config.fix
                    else "flag"
                ),
                "description": description,
                "count": counts[name],
                "examples": examples[name],
            }
            for name, (kind, description) in descriptions.items()
        ],
    }
    return CleanResult(kept=kept, rejected=rejected, report=report, counts=counts)
