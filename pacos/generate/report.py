"""What a person watches during and after `pacos generate`: a live bar and a summary table."""

from __future__ import annotations

from typing import Any

from pacos.generate.generator import GenerateTally


def _tokens(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def tally_line(tally: GenerateTally, pending: int = 0) -> str:
    """`pending`: requests finished in the round under way, not yet in the tally."""
    failed = sum(tally.failed.values())
    reasons = ", ".join(f"{name} {count}" for name, count in tally.rejected.most_common(4))
    parts = [
        f"requests {tally.requests + pending}" + (f" ({failed} failed)" if failed else ""),
        f"rejected {sum(tally.rejected.values())}" + (f" ({reasons})" if reasons else ""),
        f"tokens {_tokens(tally.prompt_tokens + tally.completion_tokens)}",
    ]
    if tally.cost:
        parts.append(f"${tally.cost:.4f}")
    return " · ".join(parts)


class GenerateProgress:
    """Kept / target as a bar, with requests, rejections by reason, tokens and cost beside it. Off a
    terminal (a log file, CI) a line per finished request and per round instead: a slow teacher's
    first request can take minutes, and a silent log looks like a hang."""

    def __init__(self, target: int, console: Any) -> None:
        self.target, self.console = target, console
        self.progress: Any = None
        self.tally: GenerateTally | None = None
        self.in_round = 0  # replies heard of since the tally last counted them
        self.last_line: str | None = None

    def note(self, message: str) -> None:
        self.console.print(f"[generate] {message}", markup=False, highlight=False)

    def reply(self, reply: Any) -> None:
        """A request finished (before its round is judged)."""
        self.in_round += 1
        tally = self.tally
        if tally is None:
            return
        done = tally.requests + self.in_round
        if not self.console.is_terminal:
            status = reply.error or reply.finish_reason
            self.console.print(
                f"[generate] request {done} ({reply.request_id}): {status}, {reply.completion_tokens} tokens "
                f"in {reply.seconds:.1f} s · kept {len(tally.accepted)}/{self.target}",
                markup=False,
                highlight=False,
            )
        elif self.progress is not None:
            self.progress.update(self.task, stats=tally_line(tally, pending=self.in_round))

    def start(self, tally: GenerateTally) -> None:
        self.tally = tally
        if not self.console.is_terminal:
            self.update(tally)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("kept"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}", markup=False),
            console=self.console,
        )
        self.task = self.progress.add_task("", total=self.target, completed=len(tally.accepted), stats="")
        self.update(tally)
        self.progress.start()

    def update(self, tally: GenerateTally) -> None:
        self.tally, self.in_round = tally, 0
        if self.progress is None:
            line = (
                f"[generate] kept {min(len(tally.accepted), self.target)}/{self.target} · {tally_line(tally)}"
            )
            if line != self.last_line:  # a round that changed nothing says nothing
                self.console.print(line, markup=False, highlight=False)
                self.last_line = line
            return
        self.progress.update(
            self.task, completed=min(len(tally.accepted), self.target), stats=tally_line(tally)
        )

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def summary_table(summary: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"pacos generate: {summary['stopped']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("teacher", f"{summary['teacher']} ({summary['model']})")
    table.add_row("accepted", f"{summary['accepted']} of {summary['target']}")
    table.add_row("rejected", str(summary["rejected"]))
    for reason, count in summary["rejected_by_reason"].items():
        table.add_row(f"  {reason}", str(count))
    failed = ", ".join(f"{k} {v}" for k, v in summary["failed_requests"].items())
    table.add_row("requests", f"{summary['requests']}" + (f" (failed: {failed})" if failed else ""))
    table.add_row("tokens", f"{summary['prompt_tokens']} prompt + {summary['completion_tokens']} completion")
    table.add_row("cost", f"${summary['cost_usd']:.4f}")
    per = summary["seconds_per_accepted"]
    table.add_row(
        "time",
        f"{summary['seconds']:.0f} s"
        + (
            f" ({per:.1f} s and {summary['requests_per_accepted']:.2f} requests per accepted example)"
            if per
            else ""
        ),
    )
    return table
