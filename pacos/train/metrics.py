"""Training metrics: append-only JSONL, TensorBoard when installed, and a loss-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pacos.fileio import atomic_open


class MetricsLog:
    def __init__(self, output_dir: Path, tensorboard: bool, resume_step: int | None = None):
        self.path = output_dir / "metrics.jsonl"
        output_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            # Lines a killed run wrote after its last checkpoint would repeat: keep only those before it.
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            with atomic_open(self.path) as f:
                f.write("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.unlink(missing_ok=True)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional: the JSONL log has everything
                self.writer = None

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def plot_loss(metrics_path: Path, out: Path) -> Path | None:
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train:
        return None
    from pacos.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train loss", color="#5b8def", linewidth=1.0, alpha=0.45)
    if len(train) >= 5:  # small batches make a noisy curve: show its exponential moving average too
        smooth, value = [], train[0][1]
        for step, loss in train:
            value = 0.8 * value + 0.2 * loss
            smooth.append((step, value))
        ax.plot(*zip(*smooth), label="train loss (EMA)", color="#1f4fbf", linewidth=1.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="#e4572e")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per response token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
