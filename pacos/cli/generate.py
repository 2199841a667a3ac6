"""`pacos generate`: new instruction data from a teacher (Self-Instruct, Evol-Instruct, Magpie)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pacos.cli.app import (
    SetOption,
    app,
    stderr_console,
)


@app.command("generate")
def generate(
    teacher: Annotated[
        str | None,
        typer.Option(
            help="http(s)://HOST:PORT/v1 (OpenAI-compatible: OpenAI, vLLM, llama.cpp, pacos serve; key from "
            "$OPENAI_API_KEY), local:NAME_OR_PATH (pacos engine) or llama.cpp:FILE.gguf."
        ),
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", help="Run directory: data.json, accepted/rejected/requests.jsonl.")
    ] = None,
    num: Annotated[int | None, typer.Option(help="Accepted examples to end with [default: 100].")] = None,
    model: Annotated[
        str | None, typer.Option(help="The endpoint's model name [default: the only one it serves].")
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Seed tasks: file or built-in name [default: seed-tasks-LANGUAGE].")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="alpaca [default], self-instruct, evol (Evol-Instruct) or magpie.")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="evol: rounds of evolution [default: 3].")] = None,
    language: Annotated[str | None, typer.Option(help="en [default] or zh.")] = None,
    api: Annotated[
        str | None, typer.Option(help="chat or completions [default: chat; local: by the model].")
    ] = None,
    budget: Annotated[float | None, typer.Option(help="Stop cleanly once this many USD are spent.")] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            help="Evaluation set to keep out (repeatable): a record file or ifeval; examples that overlap "
            "its prompts (a 13-gram, or ROUGE-L > 0.7) are rejected as contaminated.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Continue a run directory made with other settings.")
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(help="Recipe YAML, or a bundled recipe by name (generate-local, generate-vllm, ...)."),
    ] = None,
    overrides: SetOption = None,
) -> None:
    """Self-Instruct data generation: a teacher continues lists of tasks; filters keep the good, novel ones.

    Rerun the same command after a crash or a kill: it resumes, keeping every accepted example.
    """
    from pacos.config import load_config
    from pacos.generate.config import GenerateConfig
    from pacos.generate.report import GenerateProgress, summary_table
    from pacos.generate.run import generate as run_generation

    flags = {"teacher": teacher, "out_dir": out, "num": num, "model": model, "seeds": seeds, "mode": mode,
             "language": language, "budget": budget, "client.api": api, "evol.rounds": rounds}  # fmt: skip
    extra = [f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in flags.items() if v is not None]
    if exclude:
        extra.append(f"exclude={json.dumps(exclude)}")
    settings = load_config(GenerateConfig, config, [*(overrides or []), *extra])
    console = stderr_console()
    summary = run_generation(settings, force=force, progress=GenerateProgress(settings.num, console))
    console.print(summary_table(summary))
    print(
        f"{summary['accepted']} examples in {Path(settings.out_dir or '.') / 'data.json'} "
        f"({summary['stopped']})"
    )
    if summary["accepted"] == 0 or (summary["accepted"] < settings.num and not summary["exhausted"]):
        raise typer.Exit(1)  # a mode may run out of work below --num (evol's rounds), but not empty
