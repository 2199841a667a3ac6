"""Training records that overlap evaluation prompts (contamination), found two ways.

1. n-gram overlap, as lm-evaluation-harness's decontamination (its "janitor", after GPT-3): both sides are
   normalized to units, lower-cased with punctuation stripped, and a training record is contaminated when
   it holds any n consecutive units (n = 13) of an evaluation prompt. Units are the ROUGE tokens of
   pacos.text.rouge's "cjk" tokenizer: Latin text gives words, and every Chinese (CJK) character is a unit
   of its own, since those scripts do not separate words (letters outside a-z, such as é, split words
   there as in rouge_score; both sides alike). An evaluation prompt shorter than n units is
   compared whole (its whole unit sequence must occur in the record, as lm-eval does for short
   documents), but only from MIN_UNITS units on: a prompt of a few words occurs inside unrelated text by
   chance, so such prompts are left to the ROUGE-L check alone (the report counts them).
   Compared: the training record's whole text (instruction, input, output, every turn of a conversation),
   like lm-eval, which checks whole training documents: a record that quotes a prompt in its answer is
   contaminated too.
2. ROUGE-L F1 > 0.7 between the training record's prompt (instruction + input) and an evaluation prompt,
   through the novelty filter's exact index (pacos.text.rouge.NoveltyFilter, Alpaca's rule): this catches
   near-copies with a few words changed, which break every long n-gram. Prompt against prompt, because
   the F1 punishes length: a long answer would hide a copied prompt.

The evaluation side is always the prompt (instruction + input), never a reference answer, as lm-eval's
decontamination queries are the questions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pacos.data.records import Record
from pacos.errors import PacosError
from pacos.text.cjk import CJK
from pacos.text.rouge import NoveltyFilter, tokenize

RULE = "contaminated"
NGRAM = 13  # lm-eval's decontamination and GPT-3's n
ROUGE = 0.7  # Alpaca's novelty threshold
MIN_UNITS = 8  # GPT-3's smallest n: shorter prompts are too common as phrases to match whole
TOKENIZER = "cjk"
IFEVAL = "ifeval"  # the name of the bundled verifiable-instruction prompts (pacos eval --ifeval)
REASONS = {"ngram": "n-gram overlap", "rouge_l": "ROUGE-L"}


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt: its text (instruction + input), id, and the set it comes from."""

    text: str
    id: Any
    source: str  # the evaluation set as named by the user: a path, or "ifeval"
    where: str = ""  # file:line, when known

    @property
    def label(self) -> str:
        return f"{self.source} {self.id}" if self.id is not None else f"{self.source} ({self.where})"


@dataclass(frozen=True, kw_only=True)
class Match:
    """A training record found to overlap one evaluation prompt, by one of the two checks."""

    record: int  # the training record's position among the inputs
    by: str  # "ngram" or "rouge_l"
    prompt: EvalPrompt
    record_id: Any = None
    where: str = ""  # the training record's file:line, when known
    ngram: str = ""  # by n-gram: the first shared n-gram (or the whole short prompt), as text
    shared: int = 0  # by n-gram: how many of the prompt's n-grams the record holds
    of: int = 0  # by n-gram: how many n-grams the prompt has
    score: float = 0.0  # by ROUGE-L: the F1

    def describe(self) -> str:
        if self.by == "ngram":
            many = f" ({self.shared} of its {self.of} n-grams)" if self.of > 1 else " (the whole prompt)"
            return f"shares {self.ngram!r} with {self.prompt.label}{many}"
        return f"ROUGE-L F1 {self.score:.3f} with {self.prompt.label}"

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"by": self.by, "record": self.record}
        if self.record_id is not None:
            row["record_id"] = self.record_id
        if self.where:
            row["where"] = self.where
        row.update(
            {"eval_set": self.prompt.source, "eval_id": self.prompt.id, "eval_prompt": self.prompt.text}
        )
        if self.by == "ngram":
            row.update({"ngram": self.ngram, "shared_ngrams": self.shared, "prompt_ngrams": self.of})
        else:
            row["rouge_l"] = round(self.score, 4)
        row["reason"] = self.describe()
        return row


def prompt_text(record: Record) -> str:
    """What a record asks: instruction and input; for a conversation, every user turn."""
    turns = _turns(record)
    asks = (
        [m["content"] for m in turns if m.get("role") == "user"]
        if turns
        else [record.get("instruction") or ""]
    )
    # A newline joins the parts: a token boundary, so words of two fields never merge.
    return "\n".join([*asks, record.get("input") or ""]).strip()


def document_text(record: Record) -> str:
    """Everything a record would teach: instruction, input and output, or every turn of a conversation."""
    turns = _turns(record)
    if turns:
        return "\n".join([*(m["content"] for m in turns), record.get("input") or ""])
    return "\n".join(record.get(f) or "" for f in ("instruction", "input", "output"))


def _turns(record: Record) -> list[dict[str, str]]:
    messages = record.get("messages")
    if not isinstance(messages, list):
        return []
    return [m for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)]


def _show(tokens: Sequence[str]) -> str:
    # Units back into readable text: spaces between Latin words only (Chinese characters touch).
    text = ""
    for token in tokens:
        if text and not CJK.match(token) and not CJK.match(text[-1]):
            text += " "
        text += token
    return text


def read_located(source: str, *, require_output: bool = False) -> tuple[list[Record], list[str]]:
    """A record file's records and where each is (file:line); the first bad row is a one-line error."""
    from pacos.data.io import Problem, scan

    records: list[Record] = []
    where: list[str] = []
    for item in scan(source, require_output=require_output):
        if isinstance(item, Problem):
            raise PacosError(str(item))
        records.extend(item[1])
        where.extend([item[0]] * len(item[1]))
    return records, where


def eval_prompts_of(records: Iterable[Record], source: str, where: Sequence[str] = ()) -> list[EvalPrompt]:
    """Records of an evaluation set as prompts (their instruction + input)."""
    return [
        EvalPrompt(
            text=prompt_text(r), id=r.get("id"), source=source, where=where[i] if i < len(where) else ""
        )
        for i, r in enumerate(records)
    ]


def load_eval_set(spec: str) -> list[EvalPrompt]:
    """An evaluation set: `ifeval` (the bundled 105 verifiable-instruction prompts, as `pacos eval --ifeval`
    reads them), or any record file pacos reads (JSON, JSON Lines, CSV, Parquet, chats, a dataset)."""
    if spec == IFEVAL:
        from pacos.data.verifiable import load_ifeval_prompts

        prompts = load_ifeval_prompts()
        return [EvalPrompt(text=p["instruction"], id=p["id"], source=IFEVAL) for p in prompts]
    records, where = read_located(spec)
    return eval_prompts_of(records, spec, where)


def load_eval_sets(specs: Iterable[str]) -> list[EvalPrompt]:
    prompts: list[EvalPrompt] = []
    for spec in dict.fromkeys(specs):  # a set named twice counts once
        prompts += load_eval_set(spec)
    return prompts


@dataclass
class ContaminationIndex:
    """The evaluation prompts, indexed for both checks; `check` tells what a training record overlaps.

    `ngram=None` or 0 turns the n-gram check off, `rouge=None` the ROUGE-L one."""

    prompts: Sequence[EvalPrompt]
    ngram: int | None = NGRAM
    rouge: float | None = ROUGE
    min_units: int = MIN_UNITS
    short: int = field(init=False, default=0)  # prompts below min_units: ROUGE-L only

    def __post_init__(self) -> None:
        if self.ngram is not None and (not isinstance(self.ngram, int) or self.ngram < 0):
            raise PacosError(
                f"ngram must be a positive number of words (0: no n-gram check), got {self.ngram}"
            )
        if self.rouge is not None and not 0 <= self.rouge <= 1:
            raise PacosError(
                f"the ROUGE-L threshold is between 0 and 1 (1: no ROUGE-L check), got {self.rouge:g}"
            )
        if self.min_units < 1:
            raise PacosError(f"min_units must be at least 1, got {self.min_units}")
        n = self.ngram or 0
        shortest = min(self.min_units, n)
        self._grams: dict[tuple[str, ...], list[int]] = {}  # n-gram (or whole short prompt) -> prompts
        self._counts: list[int] = []  # per prompt: its distinct n-grams
        lengths: set[int] = set()
        for i, prompt in enumerate(self.prompts):
            units = tokenize(prompt.text, TOKENIZER) if n else []
            if len(units) >= n > 0:
                grams = {tuple(units[j : j + n]) for j in range(len(units) - n + 1)}
                lengths.add(n)
            elif n and len(units) >= shortest:
                grams = {tuple(units)}
                lengths.add(len(units))
            else:
                grams = set()
                self.short += bool(n)
            for gram in grams:
                self._grams.setdefault(gram, []).append(i)
            self._counts.append(len(grams))
        self._lengths = sorted(lengths)
        self._vocab = {unit for gram in self._grams for unit in gram}
        self._rouge: NoveltyFilter | None = None
        if self.rouge is not None:
            self._rouge = NoveltyFilter(self.rouge, TOKENIZER, top_k=1)  # validates the threshold
            for i, prompt in enumerate(self.prompts):
                self._rouge.add(prompt.text, key=i)

    def check(self, record: Record, position: int = 0, where: str = "") -> list[Match]:
        """What `record` overlaps: at most one match per check (the prompt it shares the most n-grams
        with, the prompt with the highest ROUGE-L F1)."""
        found: list[Match] = []
        common = {"record": position, "record_id": record.get("id"), "where": where}
        if self._grams:
            best = self._ngram_hit(tokenize(document_text(record), TOKENIZER))
            if best is not None:
                i, shared, first = best
                found.append(
                    Match(by="ngram", prompt=self.prompts[i], ngram=_show(first), shared=shared,
                          of=self._counts[i], **common)
                )  # fmt: skip
        if self._rouge is not None and len(self._rouge):
            verdict = self._rouge.check(prompt_text(record))
            if not verdict.novel:
                i, score = verdict.most_similar[0]
                found.append(Match(by="rouge_l", prompt=self.prompts[i], score=score, **common))
        return found

    def _ngram_hit(self, units: list[str]) -> tuple[int, int, tuple[str, ...]] | None:
        """(prompt, shared n-grams, the first shared one) of the prompt the units share most with."""
        # Only runs of units that occur in some prompt can hold a shared n-gram: most text breaks into
        # short runs at its first rare word, which skips most windows.
        vocab, shortest = self._vocab, self._lengths[0]
        runs: list[list[str]] = []
        start = 0
        for j, unit in enumerate([*units, ""]):
            if unit not in vocab:
                if j - start >= shortest:
                    runs.append(units[start:j])
                start = j + 1
        shared: dict[int, list[Any]] = {}  # prompt -> [count, first gram]
        grams = self._grams
        for length in self._lengths:
            seen: set[tuple[str, ...]] = set()
            for run in runs:
                for j in range(len(run) - length + 1):
                    gram = tuple(run[j : j + length])
                    owners = grams.get(gram)
                    if owners is None or gram in seen:
                        continue
                    seen.add(gram)
                    for i in owners:
                        if i in shared:
                            shared[i][0] += 1
                        else:
                            shared[i] = [1, gram]
        if not shared:
            return None
        i = min(shared, key=lambda k: (-shared[k][0], k))  # the most shared; ties: the earlier prompt
        return i, shared[i][0], shared[i][1]


def find_contamination(
    records: Sequence[Record],
    eval_prompts: Sequence[EvalPrompt] | Sequence[Record] | ContaminationIndex,
    ngram: int | None = NGRAM,
    rouge: float | None = ROUGE,
    *,
    min_units: int = MIN_UNITS,
    where: Sequence[str] = (),
) -> list[Match]:
    """Every overlap of a training record with an evaluation prompt, in record order (a record found by
    both checks has two matches, the n-gram one first). `eval_prompts`: EvalPrompts, plain evaluation
    records (set "eval", id: their own or their position), or a ready index. `where`: the records'
    locations, for the report."""
    if isinstance(eval_prompts, ContaminationIndex):
        index = eval_prompts
    else:
        prompts = [
            p
            if isinstance(p, EvalPrompt)
            else EvalPrompt(text=prompt_text(p), id=p.get("id", i), source="eval")
            for i, p in enumerate(eval_prompts)
        ]
        index = ContaminationIndex(prompts, ngram=ngram, rouge=rouge, min_units=min_units)
    matches: list[Match] = []
    for position, record in enumerate(records):
        matches += index.check(record, position, where[position] if position < len(where) else "")
    return matches


def split_clean(records: Sequence[Record], matches: Iterable[Match]) -> tuple[list[Record], list[Record]]:
    """(the records without a match, the others), each reject with `_rejected`: the rule, the reason and
    the evaluation prompt it overlaps (every match under `matches`)."""
    by_record: dict[int, list[Match]] = {}
    for match in matches:
        by_record.setdefault(match.record, []).append(match)
    clean: list[Record] = []
    rejects: list[Record] = []
    for position, record in enumerate(records):
        found = by_record.get(position)
        if not found:
            clean.append(record)
            continue
        first = found[0]
        rejects.append(
            {
                **record,
                "_rejected": {
                    "rule": RULE,
                    "reason": first.describe(),
                    "eval_set": first.prompt.source,
                    "eval_id": first.prompt.id,
                    "eval_prompt": first.prompt.text,
                    "matches": [m.as_dict() for m in found],
                },
            }
        )
    return clean, rejects


def contamination_report(
    records: int, index: ContaminationIndex, matches: Sequence[Match], examples: int | None = None
) -> dict[str, Any]:
    """Counts per check and per evaluation set, and the matches (the first `examples`, or all)."""
    sets: dict[str, int] = {}
    for prompt in index.prompts:
        sets[prompt.source] = sets.get(prompt.source, 0) + 1
    by_reason: dict[str, Any] = {}
    for by in REASONS:
        found = [m for m in matches if m.by == by]
        per_set: dict[str, int] = {}
        for m in found:
            per_set[m.prompt.source] = per_set.get(m.prompt.source, 0) + 1
        by_reason[by] = {"records": len(found), "by_eval_set": per_set}
    contaminated = len({m.record for m in matches})
    checks = []
    if index.ngram:
        checks.append(
            f"{index.ngram}-gram overlap of the whole record with an evaluation prompt (prompts shorter "
            f"than {index.ngram} units compared whole, from {min(index.min_units, index.ngram)} units on)"
        )
    if index.rouge is not None:
        checks.append(f"ROUGE-L F1 > {index.rouge:g} of instruction + input with an evaluation prompt")
    return {
        "records_in": records,
        "records_kept": records - contaminated,
        "records_dropped": contaminated,
        "rule": RULE,
        "description": "; ".join(checks) + f" ({TOKENIZER} units: words, and each CJK character)",
        "ngram": index.ngram or None,
        "rouge": index.rouge,
        "min_units": index.min_units,
        "eval_sets": [{"name": name, "prompts": count} for name, count in sets.items()],
        "eval_prompts_rouge_only": index.short,
        "by_reason": by_reason,
        "matches": [m.as_dict() for m in (matches if examples is None else matches[:examples])],
    }
