"""The `pacos` command line: a thin layer over the pipeline modules.

Every user-facing failure is a PacosError, printed as one line on stderr with exit code 1.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from pacos import __version__
from pacos.errors import PacosError
from pacos.fileio import write_json

app = typer.Typer(
    help="pacos: Stanford Alpaca end to end. Generate, clean, fine-tune, evaluate, chat, serve, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts say "[default: ...]" literally; rich markup would swallow it
)
data_app = typer.Typer(
    help="Read, validate, clean, mix, split and describe instruction data.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(data_app, name="data")

SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a setting: KEY=VALUE (repeatable).")
]


# Loading a model to generate with: shared by `chat` and `serve`.
ModelOption = Annotated[str, typer.Option(help="Embedded name, .gguf file, directory, hub id or adapter.")]
BackendOption = Annotated[
    str, typer.Option(help="torch, or llama.cpp for GGUF files (pacos[llama]; one request at a time).")
]
DtypeOption = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")]
QuantizeOption = Annotated[str, typer.Option(help="none, or int8: int8 weights, faster on CPU.")]
CompileOption = Annotated[
    bool, typer.Option("--compile", help="torch.compile decode steps (a minute once, cached on disk).")
]
TemplateOption = Annotated[str | None, typer.Option(help="Prompt format [default: the model's own].")]


def _load_engine(
    model: str, backend: str, dtype: str, device: str, quantize: str, compile: bool, template: str | None
) -> Any:
    from pacos.infer.loading import load_engine

    if compile:
        print(
            "pacos: compiling the decode step (about a minute the first time; cached after)", file=sys.stderr
        )
    return load_engine(
        model,
        backend=backend,
        dtype=dtype,
        device=device,
        quantize=quantize,
        compile=compile,
        template=template,
    )


def _version(value: bool) -> None:
    if value:
        print(f"pacos {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _progress(items: list[Any], description: str) -> Iterable[Any]:
    """A progress bar on stderr for long loops (hidden for small inputs and when not a terminal)."""
    if len(items) < 2000:
        return items
    from rich.progress import track

    return track(items, description=description, console=_console(), transient=True)


# --- pacos data -------------------------------------------------------------------------------------


@data_app.command("validate")
def data_validate(
    files: Annotated[
        list[str],
        typer.Argument(
            help="Files, dataset directories, hub ids or built-in names "
            "(seed-tasks, seed-tasks-en, seed-tasks-zh)."
        ),
    ],
    no_output: Annotated[
        bool, typer.Option("--no-output", help="Do not require an 'output' field (prompt-only files).")
    ] = False,
) -> None:
    """Check files against the record schema: one line per problem, exit 1 if any."""
    from pacos.data.io import Problem, scan

    problems = 0
    for source in files:
        count = found = 0
        try:
            for item in scan(source, require_output=not no_output):
                if isinstance(item, Problem):
                    found += 1
                    print(item)
                else:
                    count += len(item[1])
        except PacosError as e:  # unreadable as a whole (encoding, unknown type, hub failure): next file
            found += 1
            print(e)
        problems += found
        if not found:
            print(f"{source}: {count} records OK")
    if problems:
        print(f"{problems} problem(s) found", file=sys.stderr)
        raise typer.Exit(1)


@data_app.command("convert")
def data_convert(
    source: Annotated[str, typer.Argument(help="Input file, dataset directory, hub id or built-in name.")],
    out: Annotated[Path, typer.Argument(help="Output path; the format follows its suffix.")],
    fmt: Annotated[str | None, typer.Option("--format", help="json, jsonl, csv, tsv, parquet or hf.")] = None,
) -> None:
    """Convert between formats (and from chats or seed tasks into instruction records)."""
    from pacos.data.io import read_records, write_records

    records = read_records(source)
    write_records(records, out, fmt)
    print(f"wrote {len(records)} records to {out}")


@data_app.command("clean")
def data_clean(
    source: Annotated[str, typer.Argument(help="Input file, dataset directory, hub id or built-in name.")],
    out: Annotated[Path, typer.Option("--out", help="Cleaned records; the format follows the suffix.")],
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    rejected: Annotated[
        Path | None,
        typer.Option(help="Dropped records, each with its rule [default: OUT's name + .rejected.jsonl]."),
    ] = None,
    fix: Annotated[
        bool | None, typer.Option("--fix", help="Repair what fix rules find instead of only flagging it.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of clean settings.")] = None,
    overrides: SetOption = None,
) -> None:
    """Apply the named cleaning rules; report counts per rule; never lose a record silently."""
    from rich.table import Table

    from pacos.config import load_config
    from pacos.data.clean import CleanConfig, clean_records
    from pacos.data.io import read_records, write_records

    extra = [*(overrides or []), *([f"fix={str(fix).lower()}"] if fix is not None else [])]
    settings = load_config(CleanConfig, config, extra)
    records = read_records(source, allow_empty=True)
    result = clean_records(records, settings, progress=lambda rs: _progress(rs, "cleaning"))
    rejected = rejected or out.with_name(out.name.split(".")[0] + ".rejected.jsonl")
    write_records(result.kept, out)
    write_records(result.rejected, rejected, "jsonl")
    payload = {"input": source, "output": str(out), "rejected": str(rejected), **result.report}
    if report:
        write_json(report, payload)
    table = Table("rule", "action", "count", title=f"pacos data clean: {source}")
    for rule in result.report["rules"]:
        table.add_row(rule["name"], rule["action"], str(rule["count"]))
    from rich.console import Console

    Console().print(table)
    print(
        f"kept {len(result.kept)} of {len(records)} records -> {out}; dropped {len(result.rejected)} -> "
        f"{rejected}" + (f"; report -> {report}" if report else "")
    )


@data_app.command("mix")
def data_mix(
    sources: Annotated[
        list[str], typer.Argument(help="PATH:WEIGHT or NAME=PATH:WEIGHT, e.g. a.json:0.7 b.jsonl:0.3.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Mixed records; the format follows the suffix.")],
    n: Annotated[
        int | None, typer.Option("--n", help="Records to draw [default: the most that needs no repeats].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """Draw a weighted mixture of several instruction sets, each record tagged with its source."""
    from pacos.data.io import read_records, write_records
    from pacos.data.mix import mix_records, parse_source

    specs = [parse_source(s) for s in sources]
    mixed, summary = mix_records([(s, read_records(s.path)) for s in specs], n, seed)
    write_records(mixed, out)
    if report:
        write_json(report, summary)
    for s in summary["sources"]:
        note = f" ({s['repeated']} repeated: only {s['available']} available)" if s["repeated"] else ""
        print(f"{s['name']}: {s['drawn']} records (weight {s['weight']:g}){note}")
    print(f"wrote {len(mixed)} records to {out}")


@data_app.command("split")
def data_split(
    source: Annotated[str, typer.Argument(help="Input file, dataset directory, hub id or built-in name.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Directory for train/val/test files.")],
    val: Annotated[float, typer.Option(help="Fraction for validation.")] = 0.05,
    test: Annotated[float, typer.Option(help="Fraction for test.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    fmt: Annotated[
        str | None, typer.Option("--format", help="Output format [default: the input's, or jsonl].")
    ] = None,
) -> None:
    """Deterministic train/val/test splits; identical prompts never straddle two splits."""
    from pacos.data.io import FORMATS, read_records, write_records
    from pacos.data.split import split_records

    records = read_records(source)
    splits = split_records(records, val, test, seed)
    suffix = Path(source).suffix.lower().lstrip(".")
    fmt = fmt or (suffix if suffix in FORMATS else "jsonl")
    for name, part in splits.items():
        if part or name == "train":
            path = out_dir / (name if fmt == "hf" else f"{name}.{fmt}")
            write_records(part, path, fmt)
            print(f"{name}: {len(part)} records -> {path}")


@data_app.command("stats")
def data_stats(
    source: Annotated[str, typer.Argument(help="Input file, dataset directory, hub id or built-in name.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where stats.json and the PNG plots go.")],
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer (directory or hub id) for token lengths.")
    ] = None,
    top: Annotated[int, typer.Option(help="How many leading verbs to report.")] = 20,
    clusters: Annotated[
        int, typer.Option(help="Map the MiniLM embeddings in 2-D, in this many k-means clusters (0: no map).")
    ] = 0,
    map_sample: Annotated[int, typer.Option(help="Embed at most this many records for the map.")] = 5000,
) -> None:
    """Counts, lengths, the leading verb/object diversity, score histograms and (--clusters K) a map of the
    embedding clusters of a dataset, as JSON and PNG plots."""
    from pacos.data.io import read_records
    from pacos.data.stats import compute_stats, embedding_map, plot_stats
    from pacos.models import load_tokenizer

    records = read_records(source, require_output=False)
    stats = compute_stats(records, load_tokenizer(tokenizer) if tokenizer else None, top=top)
    if clusters > 0:
        stats["_map"] = embedding_map(records, clusters, map_sample, show_progress=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_stats(stats, out_dir)
    if clusters > 0:
        stats["clusters"] = {k: v for k, v in stats["_map"].items() if not k.startswith("_")}
        for c in stats["clusters"]["clusters"]:
            print(f"cluster {c['cluster']} ({c['size']}): " + " | ".join(c["examples"]))
    for key, summary in stats.get("scores", {}).items():
        print(f"scores.{key}: {summary['count']} records, mean {summary['mean']}, min {summary['min']}, "
              f"max {summary['max']}")  # fmt: skip
    stats = {k: v for k, v in stats.items() if not k.startswith("_")}
    write_json(out_dir / "stats.json", stats)
    verbs = ", ".join(f"{v['verb']} ({v['count']})" for v in stats["top_verbs"][:8])
    print(
        f"{stats['records']} records, {stats['with_input_share']:.0%} with input, "
        f"{stats['distinct_verbs']} distinct leading verbs; top: {verbs}"
    )
    print(f"wrote {out_dir / 'stats.json'}, " + ", ".join(str(p) for p in plots))


@data_app.command("dedup")
def data_dedup(
    files: Annotated[
        list[str], typer.Argument(help="Files, dataset directories, hub ids or built-in names, in order.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Kept records; the format follows the suffix.")],
    threshold: Annotated[
        float, typer.Option(help="Drop a record whose ROUGE-L F1 with an earlier kept one is above this.")
    ] = 0.7,
    rejected: Annotated[
        Path | None,
        typer.Option(help="Dropped records, each with its twin [default: OUT's name + .rejected.jsonl]."),
    ] = None,
    tokenizer: Annotated[
        str, typer.Option(help="cjk (CJK characters are tokens too) or rouge (rouge_score's; drops CJK).")
    ] = "cjk",
    fields: Annotated[
        str | None,
        typer.Option(
            help="What to compare: instruction (Alpaca's rule) or instruction,input "
            "[default: instruction; instruction,input with --semantic]."
        ),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    semantic: Annotated[
        float | None,
        typer.Option(
            help="Use MiniLM embedding cosine instead of ROUGE-L: drop a record whose cosine with an earlier "
            "kept one is above this (e.g. 0.9); exact duplicates always go."
        ),
    ] = None,
    index: Annotated[
        str, typer.Option(help="--semantic search: auto, exact, or hnsw (approximate; pacos[ann]).")
    ] = "auto",
) -> None:
    """Drop near-duplicates with Alpaca's novelty rule (ROUGE-L F1 > 0.7), or by MiniLM cosine with
    --semantic, keeping the first of each group."""
    import time

    from pacos.data.dedup import dedup_records, semantic_dedup_records
    from pacos.data.io import read_records, write_records

    start = time.perf_counter()
    records = [r for source in files for r in read_records(source, require_output=False, allow_empty=True)]
    default_fields = "instruction,input" if semantic is not None else "instruction"
    chosen = tuple(f.strip() for f in (fields or default_fields).split(",") if f.strip())
    if semantic is not None:
        result = semantic_dedup_records(records, semantic, chosen, index=index, show_progress=True)
    else:
        result = dedup_records(
            records, threshold, tokenizer, chosen, progress=lambda rs: _progress(rs, "deduplicating")
        )
    rejected = rejected or out.with_name(out.name.split(".")[0] + ".rejected.jsonl")
    write_records(result.kept, out)
    write_records(result.rejected, rejected, "jsonl")
    seconds = time.perf_counter() - start
    if report:
        paths = {"inputs": files, "output": str(out), "rejected": str(rejected)}
        write_json(report, {**paths, **result.report, "seconds": round(seconds, 2)})
    print(
        f"kept {len(result.kept)} of {len(records)} records -> {out}; dropped {len(result.rejected)} "
        f"near-duplicates -> {rejected} ({seconds:.1f} s)" + (f"; report -> {report}" if report else "")
    )


@data_app.command("select")
def data_select(
    files: Annotated[list[str], typer.Argument(help="Scored files (records with scores), in order.")],
    by: Annotated[str, typer.Option("--by", help="The score to rank by: record['scores'][BY].")],
    out: Annotated[Path, typer.Option("--out", help="Selected records; the format follows the suffix.")],
    top: Annotated[float | None, typer.Option(help="Keep this fraction of the records, best first.")] = None,
    min_score: Annotated[float | None, typer.Option("--min", help="Keep scores >= this.")] = None,
    max_score: Annotated[float | None, typer.Option("--max", help="Keep scores <= this.")] = None,
    lowest: Annotated[
        bool, typer.Option("--lowest", help="Lower is better (perplexity, say): rank lowest first.")
    ] = False,
    diverse: Annotated[
        float | None,
        typer.Option(help="Skip a record whose MiniLM cosine with an already selected one is above this."),
    ] = None,
    fields: Annotated[str, typer.Option(help="What --diverse embeds.")] = "instruction,input",
    drop_unscored: Annotated[
        bool, typer.Option("--drop-unscored", help="Drop records without the score instead of stopping.")
    ] = False,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """Keep the best records by a score (--top 0.2 or --min 4.5), optionally diversity-aware (Deita)."""
    from pacos.data.dedup import check_fields
    from pacos.data.io import write_records
    from pacos.data.select import read_scored, select_records

    scored = read_scored(files, by, drop_unscored)
    result = select_records(
        scored.records,
        scored.scores,
        top=top,
        min_score=min_score,
        max_score=max_score,
        lowest=lowest,
        diverse=diverse,
        fields=check_fields(f.strip() for f in fields.split(",") if f.strip()),
        show_progress=True,
    )
    write_records(result.records, out)
    summary = {"inputs": files, "output": str(out), "by": by, "unscored_dropped": scored.unscored}
    if report:
        write_json(report, {**summary, **result.report})
    r = result.report
    low_high = r["kept_score_range"]
    shown = f"{by} {low_high[0]:g}..{low_high[1]:g}" if low_high else "nothing kept"
    print(
        f"kept {r['records_kept']} of {r['records_in']} records ({shown}) -> {out}; "
        f"{r['skipped_for_diversity']} skipped for diversity, {r['outside_bounds']} outside --min/--max"
        + (f", {scored.unscored} without the score dropped" if scored.unscored else "")
    )


@data_app.command("score")
def data_score(
    files: Annotated[
        list[str], typer.Argument(help="Files, dataset directories, hub ids or built-in names, in order.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="The records with `scores`; the format follows the suffix.")
    ],
    judge: Annotated[
        str | None,
        typer.Option(
            help="Rate every record 1-5: http(s)://HOST:PORT/v1 (key from $OPENAI_API_KEY), "
            "local:NAME_OR_PATH (e.g. local:smollm2-135m-instruct) or llama.cpp:FILE.gguf."
        ),
    ] = None,
    judge_model: Annotated[
        str | None, typer.Option(help="The judge endpoint's model name [default: the only one it serves].")
    ] = None,
    signals: Annotated[
        str | None,
        typer.Option(help="Cheap signals, comma-separated: len, ppl, ifd (ppl, ifd: --ref-model)."),
    ] = None,
    ref_model: Annotated[
        str | None, typer.Option(help="Reference model for ppl and ifd: embedded name, directory or hub id.")
    ] = None,
    template: TemplateOption = None,
    max_length: Annotated[
        int, typer.Option(help="Reference model: longest prompt + output (tokens).")
    ] = 2048,
    batch_size: Annotated[int, typer.Option(help="Reference model: records per forward pass.")] = 8,
    device: DeviceOption = "auto",
    concurrency: Annotated[
        int, typer.Option(help="Judge requests in flight (endpoint) or rows decoded together (local).")
    ] = 8,
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Folder of the append-only judgment and loss caches [default: $PACOS_CACHE/score]."
        ),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON summary here.")] = None,
) -> None:
    """Quality scores on every record (record["scores"]): an LLM judge's 1-5 rating and/or cheap signals.

    Judgments and losses are cached as they arrive: a rerun makes no calls for them, a killed run resumes.
    """
    from pacos.data.io import read_records, write_records
    from pacos.data.scoring import JudgeSettings, RefSettings, RichProgress, parse_signals, score_records

    if batch_size < 1 or concurrency < 1 or max_length < 2:
        raise PacosError("--batch-size and --concurrency must be >= 1, --max-length >= 2")
    records = [r for source in files for r in read_records(source)]
    summary = score_records(
        records,
        judge=JudgeSettings(judge, judge_model, concurrency=concurrency) if judge else None,
        signals=parse_signals(signals),
        ref=RefSettings(ref_model, template, max_length, batch_size, device) if ref_model else None,
        cache_dir=cache,
        progress=RichProgress(),
    )
    write_records(records, out)
    if report:
        write_json(report, {"inputs": files, "output": str(out), **summary})
    for key, d in summary["distributions"].items():
        if d["n"]:
            print(
                f"{key}: mean {d['mean']:g}, median {d['median']:g}, p10 {d['p10']:g}, p90 {d['p90']:g} "
                f"({d['n']} records)"
            )
    if judge:
        j = summary["judge"]
        ratings = ", ".join(f"{k}: {v}" for k, v in j["ratings"].items())
        failed = sum(j["failed"].values())
        print(
            f"judge {judge}: ratings {ratings}; {j['calls']} calls, {j['cache_hits']} cache hits, "
            f"{failed} failed, {j['unparseable']} unparseable; read from "
            + (", ".join(f"{k} {v}" for k, v in j["read_from"].items()) or "nothing")
        )
    if "reference" in summary and summary["reference"]["too_long"]:
        skipped = summary["reference"]["too_long"]
        print(f"{skipped} records have no ppl/ifd: their prompt alone fills --max-length")
    print(f"wrote {len(records)} scored records to {out} ({summary['seconds']:.1f} s)")


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
    force: Annotated[
        bool, typer.Option("--force", help="Continue a run directory made with other settings.")
    ] = False,
    config: Annotated[Path | None, typer.Option(help="Recipe YAML (see recipes/generate*.yaml).")] = None,
    overrides: SetOption = None,
) -> None:
    """Self-Instruct data generation: a teacher continues lists of tasks; filters keep the good, novel ones.

    Rerun the same command after a crash or a kill: it resumes, keeping every accepted example.
    """
    from pacos.config import load_config
    from pacos.generate.config import GenerateConfig
    from pacos.generate.evol import ROUNDS_DONE
    from pacos.generate.report import RichProgress, summary_table
    from pacos.generate.run import generate as run_generation

    flags = {"teacher": teacher, "out_dir": out, "num": num, "model": model, "seeds": seeds, "mode": mode,
             "language": language, "budget": budget, "client.api": api, "evol.rounds": rounds}  # fmt: skip
    extra = [f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in flags.items() if v is not None]
    settings = load_config(GenerateConfig, config, [*(overrides or []), *extra])
    console = _console()
    summary = run_generation(settings, force=force, progress=RichProgress(settings.num, console))
    console.print(summary_table(summary))
    print(
        f"{summary['accepted']} examples in {Path(settings.out_dir or '.') / 'data.json'} "
        f"({summary['stopped']})"
    )
    if summary["accepted"] < settings.num and not summary["stopped"].startswith(ROUNDS_DONE):
        raise typer.Exit(1)  # evol may end below --num: its rounds, not the target, bound the work


@app.command("train")
def train(
    config: Annotated[Path | None, typer.Option(help="Recipe YAML (see recipes/).")] = None,
    model: Annotated[str | None, typer.Option(help="Embedded name, .gguf file, directory or hub id.")] = None,
    data: Annotated[
        str | None, typer.Option(help="Training data: file, dataset directory, hub id or built-in name.")
    ] = None,
    val_data: Annotated[str | None, typer.Option(help="Validation data.")] = None,
    output_dir: Annotated[
        str | None, typer.Option(help="Where the model, checkpoints and metrics go.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the data.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    lora: Annotated[
        bool | None, typer.Option("--lora/--full", help="LoRA adapters or full fine-tuning.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the latest checkpoint in the output directory.")
    ] = False,
    overrides: SetOption = None,
) -> None:
    """Fine-tune a base model on instruction data (Alpaca template, loss on the response only)."""
    from pacos.config import load_config
    from pacos.train.config import TrainConfig
    from pacos.train.run import train as run_training

    flags = {
        "model": model,
        "data": data,
        "val_data": val_data,
        "output_dir": output_dir,
        "max_steps": max_steps,
        "epochs": epochs,
        "lr": lr,
        "method": None if lora is None else ("lora" if lora else "full"),
    }
    extra = [f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in flags.items() if v is not None]
    settings = load_config(TrainConfig, config, [*(overrides or []), *extra])
    result = run_training(settings, resume=resume)
    if not result.is_main:
        return
    best = f", best validation loss {result.best_val_loss:.4f}" if result.best_val_loss is not None else ""
    print(
        f"trained {result.steps} steps in {result.seconds:.0f} s ({result.tokens_per_second:.0f} tokens/s, "
        f"padding efficiency {result.padding_efficiency:.0%}); final loss {result.final_loss:.4f}{best}; "
        f"model in {result.output_dir}"
    )


@app.command("selftrain")
def selftrain(
    config: Annotated[Path | None, typer.Option(help="Recipe YAML (recipes/selftrain*.yaml).")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where every round writes.")] = None,
    overrides: SetOption = None,
) -> None:
    """Iterative self-training: the model answers unlabelled instructions, the good answers are kept, it is
    retrained on them, round after round until the held-out metric stops improving. A rerun resumes."""
    from pacos.config import load_config
    from pacos.selftrain.config import SelfTrainConfig
    from pacos.selftrain.run import run_selftrain

    extra = [f"output_dir={json.dumps(output_dir)}"] if output_dir else []
    run_selftrain(load_config(SelfTrainConfig, config, [*(overrides or []), *extra]))


@app.command("distill")
def distill(
    teacher: Annotated[str | None, typer.Option(help="Teacher model (the student's tokenizer).")] = None,
    student: Annotated[
        str | None, typer.Option(help="Student model: embedded name, directory, hub id.")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Training data (its answers feed the cross-entropy).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Recipe YAML with a distill: section.")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where the student and checkpoints go.")] = None,
    divergence: Annotated[
        str | None, typer.Option(help="forward_kl, reverse_kl or jsd (with distill.beta).")
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(help="Cache the teacher's top-k logits once instead of running it each step."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint.")] = False,
    overrides: SetOption = None,
) -> None:
    """Token-level knowledge distillation: the student learns the teacher's next-token distributions on
    the response tokens (`pacos train` with another loss; settings under distill.* in the recipe)."""
    from pacos.config import load_config
    from pacos.train.config import TrainConfig
    from pacos.train.run import train as run_training

    flags = {
        "distill.teacher": teacher,
        "model": student,
        "data": data,
        "output_dir": output_dir,
        "distill.divergence": divergence,
        "distill.top_k": top_k,
    }
    extra = [f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in flags.items() if v is not None]
    settings = load_config(TrainConfig, config, [*(overrides or []), *extra])
    if settings.distill is None:
        raise PacosError("pacos distill needs a teacher: --teacher MODEL or distill.teacher in the recipe")
    result = run_training(settings, resume=resume)
    if result.is_main:
        print(
            f"distilled {settings.distill.teacher} into {result.output_dir} in {result.steps} steps "
            f"({result.seconds:.0f} s); final loss {result.final_loss:.4f}"
        )


@app.command("compress")
def compress(
    model: Annotated[
        str, typer.Argument(help="Model or LoRA adapter directory (merged first), or embedded name.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Directory for the pruned model and prune_report.json.")],
    drop: Annotated[int, typer.Option(help="How many decoder layers to remove (lowest block influence).")],
    data: Annotated[str, typer.Option(help="Calibration and evaluation text: records.")] = "seed-tasks",
    calibration_tokens: Annotated[int, typer.Option(help="Tokens that rank the layers.")] = 8192,
) -> None:
    """Layer pruning (ShortGPT): drop the layers that change the hidden state least; report perplexity and
    next-token agreement with the unpruned model. Heal with `pacos distill --teacher MODEL --student OUT`.
    (For smaller files without pruning: `pacos export --format gguf --quant q4_k_m`.)"""
    from pacos.compress.prune import prune

    report = prune(model, out, drop, data, calibration_tokens=calibration_tokens)
    before, after = report.evaluation["unpruned"], report.evaluation["pruned"]
    print(
        f"dropped layers {report.dropped} of {report.layers_before} "
        f"({1 - report.parameters_after / report.parameters_before:.0%} of the parameters); held-out "
        f"perplexity {before['perplexity']:.2f} -> {after['perplexity']:.2f}, next-token agreement with the "
        f"unpruned model {after['next_token_agreement']:.1%}; model in {out}"
    )


@app.command("eval")
def evaluate(
    out: Annotated[Path, typer.Option("--out", help="Where answers, metrics.json and the report go.")],
    model: Annotated[
        str | None,
        typer.Option(
            help="Embedded name, .gguf, directory, hub id, adapter, or http(s)://HOST:PORT/v1 (an "
            "OpenAI-compatible endpoint: pacos serve, vLLM, llama.cpp)."
        ),
    ] = None,
    prompts: Annotated[
        str | None,
        typer.Option(
            help="Instruction set to answer: pacos records, Alpaca JSON, seed tasks, AlpacaEval JSON."
        ),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Dataset for the response-only loss and perplexity (local models).")
    ] = None,
    served_model: Annotated[
        str | None, typer.Option(help="The endpoint's model name [default: the only one it serves].")
    ] = None,
    template: TemplateOption = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 256,
    embeddings: Annotated[
        bool, typer.Option("--embeddings/--no-embeddings", help="Embedding similarity to the references.")
    ] = True,
    judge: Annotated[
        str | None,
        typer.Option(
            help="Pairwise judge: http(s)://HOST:PORT/v1 (key from $OPENAI_API_KEY) or local:NAME "
            "(e.g. local:smollm2-135m-instruct). Both orders per pair."
        ),
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="The judge endpoint's model name.")] = None,
    baseline: Annotated[
        str,
        typer.Option(help="What --model is judged against: another model spec, or references (the outputs)."),
    ] = "references",
    ifeval: Annotated[
        bool,
        typer.Option(
            "--ifeval", help="Also verifiable instruction following on the bundled 105 prompts (en + zh)."
        ),
    ] = False,
    dtype: Annotated[
        str,
        typer.Option(help="Local models' weights: float32, or bfloat16 (about 2x faster on CPUs with bf16)."),
    ] = "float32",
    compare: Annotated[
        list[Path] | None,
        typer.Option(help="Earlier pacos eval directories to render side by side into --out (repeatable)."),
    ] = None,
) -> None:
    """Answer an instruction set (greedy, cached) and score the answers against its outputs.

    Metrics: EOS rate (answers that end before the token limit), length, ROUGE-L (Chinese on characters),
    embedding similarity (all-MiniLM-L6-v2), distinct-2 and repeated 4-grams. With --judge: the win rate
    against --baseline with its standard error and the length-controlled win rate, and annotations.json in
    AlpacaEval's layout. With --ifeval: verifiable instruction following (strict and loose, per prompt and
    per instruction). Every run writes report.md and a self-contained report.html; --compare DIR --compare
    DIR renders earlier runs side by side.
    """
    from pacos.evaluate.answers import Decoding
    from pacos.evaluate.report import load_run, write_report
    from pacos.evaluate.run import JudgeSettings, evaluate_model

    if compare:
        if model or prompts or data or ifeval:
            raise PacosError(
                "--compare renders earlier runs: no --model, --prompts, --data or --ifeval with it"
            )
        md, page = write_report([load_run(d) for d in compare], out)
        print(f"wrote {md} and {page}")
        return
    if not model:
        raise PacosError("pass --model (or --compare DIR --compare DIR)")
    if max_new_tokens < 1:
        raise PacosError("--max-new-tokens must be >= 1")
    judging = JudgeSettings(judge, judge_model, baseline or "references") if judge else None
    metrics = evaluate_model(
        model, out, prompts=prompts, data=data, ifeval=ifeval,
        decoding=Decoding(max_new_tokens=max_new_tokens, dtype=dtype), served_model=served_model,
        template=template,
        embeddings=embeddings, judge=judging,
    )  # fmt: skip
    if data:
        loss = metrics["data_loss"]
        print(
            f"response-only loss {loss['loss']:.4f} (perplexity {loss['perplexity']:.2f}) on "
            f"{loss['examples']} examples of {data}"
        )
    if prompts:
        shown = [
            "eos_rate",
            "rouge_l",
            "embedding_similarity",
            "mean_new_tokens",
            "distinct_2",
            "repeated_4gram_share",
        ]
        print(", ".join(f"{k} {metrics[k]:.3f}" for k in shown if k in metrics))
    if ifeval:
        scores = metrics["ifeval"]
        print(
            f"verifiable instructions: prompt-level {scores['prompt_strict']:.1%} strict, "
            f"{scores['prompt_loose']:.1%} loose; instruction-level {scores['instruction_strict']:.1%} "
            f"strict ({scores['prompts']} prompts) -> {out / 'ifeval.jsonl'}"
        )
    if "judge" in metrics:
        j = metrics["judge"]
        print(
            f"vs {j['baseline']}: win rate {j['win_rate']:.1f}% +/- {j['standard_error']:.1f} "
            f"(wins {j['wins']}, ties {j['ties']}, losses {j['losses']}), length-controlled "
            f"{j['length_controlled_win_rate']:.1f}%; {j['judge_calls']} judge calls"
        )
    md, page = write_report([load_run(out)], out)
    if prompts:
        print(
            f"{metrics['answers']} answers ({metrics['generated']} generated, the rest cached) -> "
            f"{out / 'answers.jsonl'}, {out / 'metrics.json'}"
        )
    print(f"report: {page} ({md})")


@app.command("chat")
def chat(
    model: ModelOption,
    backend: BackendOption = "torch",
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    quantize: QuantizeOption = "none",
    compile: CompileOption = False,
    template: TemplateOption = None,
    system: Annotated[str | None, typer.Option(help="A system message for every turn.")] = None,
    history: Annotated[
        bool | None,
        typer.Option("--history/--no-history", help="Keep the conversation [default: for chat models]."),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 512,
    temperature: Annotated[float, typer.Option(help="0: greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option()] = 0.9,
    top_k: Annotated[int, typer.Option(help="0: no limit.")] = 40,
    repetition_penalty: Annotated[float, typer.Option()] = 1.1,
    seed: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Chat with a model in the terminal; answers stream as they are written."""
    from pacos.infer.chat import ChatSession, run_chat
    from pacos.infer.sampling import SamplingParams

    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    engine = _load_engine(model, backend, dtype, device, quantize, compile, template)
    run_chat(ChatSession(engine, params, system=system, history=history), sys.stdout)


@app.command("serve")
def serve(
    model: ModelOption,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="PACOS_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1 requests."),
    ] = None,
    backend: BackendOption = "torch",
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    quantize: QuantizeOption = "none",
    compile: CompileOption = False,
    template: TemplateOption = None,
    max_batch_size: Annotated[int, typer.Option(help="Requests decoded together at most.")] = 8,
    max_queue: Annotated[int, typer.Option(help="Requests waiting at most; more get 429.")] = 64,
    served_model_name: Annotated[
        str | None, typer.Option(help="The model id clients send and /v1/models lists [default: --model].")
    ] = None,
    log_level: Annotated[
        str, typer.Option(help="uvicorn's: warning, info (one line per request), debug.")
    ] = "info",
) -> None:
    """OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions) with continuous batching."""
    import ipaddress

    import uvicorn

    from pacos.infer.scheduler import Scheduler
    from pacos.serve import create_app

    if max_batch_size < 1 or max_queue < 1:  # every request passes through the queue: 0 would refuse all
        raise PacosError("--max-batch-size and --max-queue must be >= 1")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = False
    if not loopback and not api_key:
        print(
            f"pacos: warning: listening on {host} without an API key: anyone who can reach this port can "
            "use the model (set --api-key or PACOS_API_KEY)",
            file=sys.stderr,
        )
    engine = _load_engine(model, backend, dtype, device, quantize, compile, template)
    scheduler = Scheduler(engine, max_batch_size=max_batch_size, max_waiting=max_queue).start()
    name = served_model_name or engine.name
    print(
        f"loaded {engine.name} ({str(engine.dtype).removeprefix('torch.')} on {engine.device}, template "
        f"{engine.template}, context {engine.context_length} tokens); serving '{name}' at "
        f"http://{host}:{port}/v1 (chat page at /, API docs at /docs), batches of up to {max_batch_size}",
        flush=True,
    )
    try:
        uvicorn.run(
            create_app(engine, scheduler, api_key=api_key, model_name=name),
            host=host,
            port=port,
            log_level=log_level,
        )
    finally:
        scheduler.stop()


@app.command("export")
def export(
    model: Annotated[
        str,
        typer.Argument(
            help="A `pacos train` output directory (LoRA adapter or full model), a Hugging Face model "
            "directory or an embedded name (gemma-3-270m)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="hf: the directory to write. gguf: the .gguf file, or an existing directory to put "
            "MODEL-OUTTYPE.gguf in.",
        ),
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="hf: merged Hugging Face safetensors directory. gguf: one llama.cpp GGUF file."
        ),
    ] = "hf",
    outtype: Annotated[
        str,
        typer.Option(
            "--outtype",
            "--quant",
            help="GGUF weights: f16, q8_0, q6_k, q4_k_m (llama-quantize's mix) or q4_0 (norms stay f32).",
        ),
    ] = "f16",
    base: Annotated[
        str | None, typer.Option(help="Base model of a LoRA adapter [default: the one it was trained on].")
    ] = None,
) -> None:
    """Merge a LoRA adapter into its base and save safetensors (hf), or write one GGUF file (gguf).

    GGUF (no llama.cpp needed): Llama/SmolLM2, Qwen2/3 and Gemma 3 text models, tokenizer included.
    """
    from pacos.export.gguf import OUTTYPES

    if fmt not in ("hf", "gguf"):
        raise PacosError(f"unknown export format '{fmt}'; choose hf or gguf")
    if outtype not in OUTTYPES:
        raise PacosError(f"unknown --outtype '{outtype}'; choose one of {', '.join(OUTTYPES)}")
    if fmt == "gguf":
        from pacos.export.gguf import export_gguf

        path = export_gguf(model, out, outtype, base)
        size = path.stat().st_size / 2**20
        print(f"wrote {path} ({outtype}, {size:.1f} MiB; loads with llama.cpp or transformers gguf_file=)")
        return
    if outtype != "f16":
        raise PacosError("--outtype applies to --format gguf only")
    from pacos.export.merge import export_hf

    path = export_hf(model, out, base)
    print(f"wrote a standalone model to {path} (loads with AutoModelForCausalLM.from_pretrained)")


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
    from pacos.quickstart.config import QUICKSTART, QuickstartConfig
    from pacos.quickstart.run import run_quickstart

    settings = load_config(QuickstartConfig, config, overrides, defaults=QUICKSTART)
    run_quickstart(settings, out_dir)


def main(argv: list[str] | None = None) -> None:
    # transformers' notices about its own upcoming renames say nothing to a pacos user.
    for notice in ("`past_key_values` is deprecated", "`is_gradient_checkpointing` is deprecated"):
        warnings.filterwarnings("ignore", message=notice, category=FutureWarning)
    try:
        app(args=argv, prog_name="pacos")
    except PacosError as e:
        print(f"pacos: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("pacos: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug in pacos, not the user's input
        if os.environ.get("PACOS_DEBUG"):
            raise
        where = e.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        at = f" at {Path(where.tb_frame.f_code.co_filename).name}:{where.tb_lineno}" if where else ""
        print(
            f"pacos: internal error: {type(e).__name__}: {e}{at} (set PACOS_DEBUG=1 for the traceback; "
            "please report it)",
            file=sys.stderr,
        )
        sys.exit(2)
