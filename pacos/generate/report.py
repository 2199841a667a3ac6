"""What a person watches during and after `pacos generate`: a live bar and a summary table."""

from __future__ import annotations

from typing import Any

from pacos.generate.generator import GenerateTally


def _tokens(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def tally_line(tally: GenerateTally) -> str:
    failed = sum(tally.failed.values())
    reasons = ", ".join(f"{name} {count}" for name, count in tally.rejected.most_common(4))
    parts = [
        f"requests {tally.requests}" + (f" ({failed} failed)" if failed else ""),
        f"rejected {sum(tally.rejected.values())}" + (f" ({reasons})" if reasons else ""),
        f"tokens {_tokens(tally.prompt_tokens + tally.completion_tokens)}",
    ]
    if tally.cost:
        parts.append(f"${tally.cost:.4f}")
    return " · ".join(parts)


class GenerateProgress:
    """Kept / target as a bar, with requests, rejections by reason, tokens and cost beside it."""

    def __init__(self, target: int, console: Any) -> None:
        self.target, self.console = target, console
        self.progress: Any = None

    def start(self, tally: GenerateTally) -> None:
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
