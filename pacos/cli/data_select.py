"""`pacos data score / select / pool`: rating records, choosing what to train on, verifiable prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pacos.cli.app import (
    DeviceOption,
    TemplateOption,
    data_app,
)
from pacos.errors import PacosError
from pacos.fileio import write_json


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
        f"kept {r['records_kept']} of {r['records_in'] + scored.unscored} records ({shown}) -> {out}; "
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
    first_token_mass: Annotated[
        float,
        typer.Option(
            help="A reply with no rating is read from its first token's rating alternatives when they hold "
            "this much probability (0: such a reply stays unparseable)."
        ),
    ] = 0.05,
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
    from pacos.score import RatingSettings, RefSettings, ScoreProgress, parse_signals, score_records

    if batch_size < 1 or concurrency < 1 or max_length < 2:
        raise PacosError("--batch-size and --concurrency must be >= 1, --max-length >= 2")
    if not 0 <= first_token_mass <= 1:
        raise PacosError(f"--first-token-mass is a probability between 0 and 1, got {first_token_mass:g}")
    records = [r for source in files for r in read_records(source)]
    summary = score_records(
        records,
        judge=RatingSettings(
            judge, judge_model, concurrency=concurrency, first_token_min_mass=first_token_mass
        )
        if judge
        else None,
        signals=parse_signals(signals),
        ref=RefSettings(
            model=ref_model, template=template, max_length=max_length, batch_size=batch_size, device=device
        )
        if ref_model
        else None,
        cache_dir=cache,
        progress=ScoreProgress(),
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


@data_app.command("pool")
def data_pool(
    out: Annotated[
        Path, typer.Option("--out", help="The prompts (JSON Lines, the evaluation set's format).")
    ],
    tasks: Annotated[
        list[str] | None,
        typer.Option(help="Tasks to build on (with reference outputs) [default: the bundled seed tasks]."),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="How many prompts.")] = 400,
    max_checks: Annotated[int, typer.Option(help="Checks per prompt, at most (1 or 2).")] = 2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Prompts with verifiable instructions ("answer in under 60 words", "no commas", "start with ..."),
    English and Chinese in equal shares, built from tasks: preference data scored by programs, no judge.

    The bundled evaluation prompts (`pacos eval --ifeval`) are never among them."""
    from pacos.data.io import read_records, write_records
    from pacos.data.verifiable import prompt_pool

    if n < 1 or max_checks not in (1, 2):
        raise PacosError("--n must be >= 1 and --max-checks 1 or 2")
    records = [r for source in (tasks or ["seed-tasks-en", "seed-tasks-zh"]) for r in read_records(source)]
    pool = prompt_pool(records, n, seed=seed, max_checks=max_checks)
    write_records(pool, out)
    by_language = {lang: sum(p["language"] == lang for p in pool) for lang in ("en", "zh")}
    print(f"{len(pool)} verifiable prompts ({by_language['en']} en, {by_language['zh']} zh) -> {out}")
