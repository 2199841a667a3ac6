"""`pacos quickstart`: every stage available in this version, on the embedded defaults.

Today that is the data stage: the bundled seed tasks are cleaned, split and described. Later stages
(generate, train, eval, chat) join this loop as they become available.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pacos.data.clean import CleanConfig, clean_records
from pacos.data.io import read_records, write_records
from pacos.data.split import split_records
from pacos.data.stats import compute_stats, plot_stats
from pacos.data.templates import get_template
from pacos.fileio import atomic_open


class DataSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = "seed-tasks"
    template: str = "alpaca"
    clean: CleanConfig = CleanConfig(fix=True)
    val: float = 0.05
    test: float = 0.0
    seed: int = 0


class QuickstartConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: DataSection = DataSection()


def run_quickstart(config: QuickstartConfig, out_dir: Path) -> dict[str, int]:
    data_dir = out_dir / "data"
    records = read_records(config.data.source, allow_empty=True)
    print(f"[data] read {len(records)} records from {config.data.source}")
    result = clean_records(records, config.data.clean)
    write_records(result.kept, data_dir / "clean.jsonl")
    write_records(result.rejected, data_dir / "rejected.jsonl")
    with atomic_open(data_dir / "clean_report.json") as f:
        json.dump(result.report, f, ensure_ascii=False, indent=2)
    hits = ", ".join(f"{r['name']}={r['count']}" for r in result.report["rules"] if r["count"])
    print(
        f"[data] clean: kept {len(result.kept)}, dropped {len(result.rejected)}"
        + (f" ({hits})" if hits else "")
    )
    splits = split_records(result.kept, config.data.val, config.data.test, config.data.seed)
    for name, part in splits.items():
        if part:
            write_records(part, data_dir / f"{name}.jsonl")
    print("[data] split: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items() if v))
    stats = compute_stats(result.kept)
    plots = plot_stats(stats, data_dir)
    stats.pop("_lengths")
    with atomic_open(data_dir / "stats.json") as f:
        json.dump(stats, f, ensure_ascii=False, indent=2)
    print(
        f"[data] stats: {stats['with_input_share']:.0%} with input, {stats['chinese_share']:.0%} Chinese, "
        f"{stats['distinct_verbs']} leading verbs -> {', '.join(str(p) for p in plots)}"
    )
    example = get_template(config.data.template).prompt(splits["train"][0])
    print(f"[data] first training prompt ({config.data.template} template):\n{example}")
    print(
        f"[done] data stage written to {data_dir}. Not available in this version yet: "
        "generate, train, eval, chat, serve, export."
    )
    return {name: len(part) for name, part in splits.items()}
