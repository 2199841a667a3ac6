"""`pacos data ...`: validate, convert, clean, mix, split, stats, dedup, contamination (score, select and
pool: data_select.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pacos.cli.app import (
    SetOption,
    data_app,
    progress,
)
from pacos.errors import PacosError
from pacos.fileio import write_json


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
    result = clean_records(records, settings, progress=lambda rs: progress(rs, "cleaning"))
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
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            help="Evaluation set to keep out (repeatable): a record file or ifeval. Records that overlap its "
            "prompts (pacos data contamination's 13-gram and ROUGE-L > 0.7 checks) are dropped before "
            "drawing, into OUT's name + .rejected.jsonl.",
        ),
    ] = None,
) -> None:
    """Draw a weighted mixture of several instruction sets, each record tagged with its source."""
    from pacos.data.io import read_records, write_records
    from pacos.data.mix import drop_contaminated, mix_records, parse_source

    specs = [parse_source(s) for s in sources]
    loaded = [(s, read_records(s.path)) for s in specs]
    rejects, dropped = [], {}
    if exclude:
        from pacos.data.contamination import ContaminationIndex, load_eval_sets

        loaded, rejects, dropped = drop_contaminated(loaded, ContaminationIndex(load_eval_sets(exclude)))
    mixed, summary = mix_records(loaded, n, seed)
    write_records(mixed, out)
    if exclude:
        rejected = out.with_name(out.name.split(".")[0] + ".rejected.jsonl")
        write_records(rejects, rejected, "jsonl")
        summary["excluded"] = {"eval_sets": exclude, "contaminated": dropped, "rejected": str(rejected)}
    if report:
        write_json(report, summary)
    for s in summary["sources"]:
        note = f" ({s['repeated']} repeated: only {s['available']} available)" if s["repeated"] else ""
        gone = f", {dropped[s['name']]} dropped as contaminated" if dropped.get(s["name"]) else ""
        print(f"{s['name']}: {s['drawn']} records (weight {s['weight']:g}){note}{gone}")
    if exclude:
        print(f"{len(rejects)} records overlap {', '.join(exclude)}: dropped -> {rejected}")
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
            records, threshold, tokenizer, chosen, progress=lambda rs: progress(rs, "deduplicating")
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


@data_app.command("contamination")
def data_contamination(
    files: Annotated[
        list[str],
        typer.Argument(
            metavar="TRAIN",
            help="The training records (any file pacos reads); further arguments are evaluation sets too, "
            "so `TRAIN --against A B` checks against A and B.",
        ),
    ],
    against: Annotated[
        list[str] | None,
        typer.Option(
            "--against",
            help="Evaluation set: a record file (JSON, JSON Lines, CSV, Parquet, chats ...) or ifeval (the "
            "bundled 105 prompts of pacos eval --ifeval); their prompts are instruction + input.",
        ),
    ] = None,
    ngram: Annotated[
        int,
        typer.Option(
            help="Flag a record holding any N consecutive words (Chinese: characters) of a prompt, "
            "lower-cased and without punctuation; a prompt shorter than N must occur whole (from 8 units "
            "on; shorter ones get the ROUGE-L check only); 0: no n-gram check."
        ),
    ] = 13,
    rouge: Annotated[
        float,
        typer.Option(
            help="Flag a record whose instruction + input has a ROUGE-L F1 above this with a prompt "
            "(1: no ROUGE-L check)."
        ),
    ] = 0.7,
    drop: Annotated[
        Path | None,
        typer.Option(
            "--drop", help="Write the records that overlap nothing here (the format follows the suffix)."
        ),
    ] = None,
    rejected: Annotated[
        Path | None,
        typer.Option(
            help="With --drop: the dropped records, each with its reason [default: OUT's name + "
            ".rejected.jsonl]."
        ),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report (every match) here.")] = None,
    show: Annotated[int, typer.Option(help="How many of the strongest matches to list.")] = 20,
) -> None:
    """Find training records that overlap evaluation prompts: n-gram overlap (lm-evaluation-harness's 13-gram
    decontamination) and ROUGE-L near-copies; --drop writes the clean records."""
    from rich.console import Console
    from rich.table import Table

    from pacos.data.contamination import (
        ContaminationIndex,
        contamination_report,
        find_contamination,
        load_eval_sets,
        read_located,
        split_clean,
    )
    from pacos.data.io import write_records

    source, *more = files
    evals = [*(against or []), *more]
    if not evals:
        raise PacosError("no evaluation set: pass --against EVAL (a record file, or ifeval)")
    if ngram < 0 or show < 0:
        raise PacosError("--ngram and --show must be >= 0")
    records, where = read_located(source)
    index = ContaminationIndex(load_eval_sets(evals), ngram=ngram, rouge=rouge)
    matches = find_contamination(records, index, where=where)
    summary = contamination_report(len(records), index, matches)
    sets = ", ".join(f"{s['name']} ({s['prompts']} prompts)" for s in summary["eval_sets"])
    print(f"{source}: {len(records)} records against {sets}: {summary['records_dropped']} contaminated")
    labels = {"ngram": f"{ngram}-gram overlap", "rouge_l": f"ROUGE-L > {rouge:g}"}
    for by, counts in summary["by_reason"].items():
        if by == "ngram" and not ngram:
            continue
        per_set = ", ".join(f"{name} {count}" for name, count in counts["by_eval_set"].items())
        print(f"  {labels[by]}: {counts['records']} records" + (f" ({per_set})" if per_set else ""))
    if index.short:
        print(f"  ({index.short} prompts shorter than {min(index.min_units, ngram)} units: ROUGE-L only)")
    if matches and show:
        # The strongest first: the larger share of a prompt's n-grams, then the higher ROUGE-L F1.
        strongest = sorted(matches, key=lambda m: (m.by != "ngram", -(m.shared / m.of if m.of else m.score)))
        table = Table("train record", "by", "eval prompt", "shared n-gram / ROUGE-L F1",
                      title=f"strongest matches ({min(show, len(matches))} of {len(matches)})")  # fmt: skip
        for m in strongest[:show]:
            what = f"{m.ngram!r} ({m.shared}/{m.of})" if m.by == "ngram" else f"{m.score:.3f}"
            train = f"id {m.record_id}" if m.record_id is not None else m.where or f"#{m.record}"
            table.add_row(train, m.by, m.prompt.label, what)
        Console().print(table)
    payload = {"input": source, "against": evals, **summary}
    if drop:
        clean, rejects = split_clean(records, matches)
        rejected = rejected or drop.with_name(drop.name.split(".")[0] + ".rejected.jsonl")
        write_records(clean, drop)
        write_records(rejects, rejected, "jsonl")
        payload.update(output=str(drop), rejected=str(rejected))
        print(f"kept {len(clean)} of {len(records)} records -> {drop}; dropped {len(rejects)} -> {rejected}")
    if report:
        write_json(report, payload)
        print(f"report -> {report}")
