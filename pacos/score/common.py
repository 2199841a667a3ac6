"""What both kinds of scoring share: the tally behind the summary, progress bars, and how a score is put
on a record."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pacos.data.records import Record

PROMPT_VERSION = "pacos-score-1"  # part of every cache key: a change of prompt or method invalidates it


@dataclass
class ScoreTally:
    records: int = 0
    calls: int = 0
    cache_hits: int = 0
    failed: Counter = field(default_factory=Counter)  # request errors (not cached: a rerun asks again)
    read_from: Counter = field(default_factory=Counter)  # logprobs / text / unparseable
    too_long: int = 0  # records whose prompt fills the reference model's context: no ppl or ifd
    signal_hits: int = 0
    seconds: float = 0.0


class QuietScoreProgress:
    def start(self, label: str, total: int, done: int = 0) -> None:
        pass

    def advance(self, n: int = 1, info: str = "") -> None:
        pass

    def stop(self) -> None:
        pass


class ScoreProgress(QuietScoreProgress):
    """A bar on stderr per stage (judging, reference model), with calls / hits / failures beside it."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.progress: Any = None

    def start(self, label: str, total: int, done: int = 0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}", markup=False), console=self.console, transient=True,
        )  # fmt: skip
        self.task = self.progress.add_task("", total=total, completed=done, info="")
        self.progress.start()

    def advance(self, n: int = 1, info: str = "") -> None:
        self.progress.update(self.task, advance=n, info=info)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def apply_scores(record: Record, scores: dict[str, float], info: dict[str, Any]) -> None:
    """Numbers into `record["scores"]` (what `pacos data select --by KEY` reads), the how into
    `record["scoring"]`; earlier keys of both are kept."""
    record["scores"] = {**(record.get("scores") or {}), **scores}
    record["scoring"] = {**(record.get("scoring") or {}), **info}
