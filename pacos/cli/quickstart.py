"""`pacos quickstart`: the whole loop on embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pacos.cli.app import (
    SetOption,
    app,
)


@app.command("quickstart")
def quickstart(
    config: Annotated[
        Path | None,
        typer.Option(help="Recipe YAML [default: the built-in copy of recipes/quickstart.yaml]."),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where every stage writes.")] = Path(
        "runs/quickstart"
    ),
    overrides: SetOption = None,
) -> None:
    """The whole loop on embedded defaults: generate data with an embedded teacher, mix it with the seed
    tasks, LoRA-tune Gemma 3 270M, evaluate base vs tuned on held-out tasks and write a report.

    Rerun it after a kill or a change: finished stages whose inputs did not change are skipped."""
    from pacos.config import load_config
    from pacos.pipeline.quickstart import run_quickstart
    from pacos.pipeline.quickstart_config import QUICKSTART, QuickstartConfig

    settings = load_config(QuickstartConfig, config, overrides, defaults=QUICKSTART)
    run_quickstart(settings, out_dir)
