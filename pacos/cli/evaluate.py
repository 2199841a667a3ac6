"""`pacos eval`: answers, reference metrics, pairwise judging, verifiable instructions, reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pacos.cli.app import (
    TemplateOption,
    app,
)
from pacos.errors import PacosError


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
    reference_guided: Annotated[
        bool,
        typer.Option(
            "--reference-guided",
            help="Show the judge each reference output beside the two answers (with --baseline MODEL).",
        ),
    ] = False,
    ifeval: Annotated[
        bool,
        typer.Option(
            "--ifeval", help="Also verifiable instruction following on the bundled 105 prompts (en + zh)."
        ),
    ] = False,
    dtype: Annotated[
        str,
        typer.Option(help="Local models' weights: auto (float32 on x86 CPUs, bf16 on GPUs), float32, bf16."),
    ] = "auto",
    quantize: Annotated[
        str,
        typer.Option(help="Local models: auto (fp16 weights on x86 CPUs in fp32), none, fp16, int8."),
    ] = "auto",
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
    from pacos.evaluate.report import load_run, write_report
    from pacos.evaluate.run import PairwiseSettings, evaluate_model
    from pacos.llm.answers import Decoding

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
    from pacos.infer.quantize import decoding_weights

    judging = (
        PairwiseSettings(judge, judge_model, baseline or "references", reference_guided=reference_guided)
        if judge
        else None
    )
    dtype, quantize = decoding_weights(dtype, quantize)
    metrics = evaluate_model(
        model, out, prompts=prompts, data=data, ifeval=ifeval,
        decoding=Decoding(max_new_tokens=max_new_tokens, dtype=dtype, quantize=quantize),
        served_model=served_model,
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
    if "judge" in metrics and metrics["judge"].get("reliable") is False:
        j = metrics["judge"]
        print(
            f"vs {j['baseline']}: no win rate reported: the judge {judge} is unreliable here: "
            f"{j['unreliable_because']} (its raw numbers are in {out / 'metrics.json'})"
        )
    elif "judge" in metrics:
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


@app.command("pairs")
def pairs(
    prompts: Annotated[
        list[str], typer.Argument(help="Prompts: records (with `checks` and/or reference `output`), files.")
    ],
    model: Annotated[str, typer.Option(help="The model that answers: local (name, directory) or endpoint.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for answers, samples, pairs.jsonl, summary.")],
    k: Annotated[int, typer.Option("--k", help="Answers per prompt.")] = 4,
    reward: Annotated[
        str,
        typer.Option(
            help="Rewards, comma-separated, optionally weighted (checks=2): checks (the prompt's verifiable "
            "instructions), reference (ROUGE-L to its output), judge (1-5 rating, --judge), eos, repetition."
        ),
    ] = "checks,eos,repetition",
    min_margin: Annotated[float, typer.Option(help="Least reward difference that makes a pair.")] = 0.25,
    judge: Annotated[
        str | None, typer.Option(help="Judge for the judge reward: http(s)://HOST:PORT/v1 or local:NAME.")
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="The judge endpoint's model name.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.8,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Answer j is sampled with seed + j.")] = 0,
    template: TemplateOption = None,
    trl: Annotated[bool, typer.Option("--trl", help="Also write TRL's format (pairs-trl.jsonl).")] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="When no answer passes all of a prompt's checks, also try the best one edited to pass "
            "them (upper-cased, regrouped into bullets, ...).",
        ),
    ] = False,
    minimal: Annotated[
        bool,
        typer.Option(
            "--minimal",
            help="With --repair: pair a repaired answer with the answer it was edited from (the pair "
            "differs only by the edit) instead of the worst answer.",
        ),
    ] = False,
    reference_chosen: Annotated[
        bool,
        typer.Option(
            "--reference-chosen",
            help="Prompts with a reference output and no checks: pair the reference (chosen) with the "
            "model's worst answer (SPIN), to keep the answers the model was tuned on.",
        ),
    ] = False,
    stop_pairs: Annotated[
        bool,
        typer.Option(
            "--stop-pairs",
            help="Also pair an answer that ran out of tokens, cut before its loop (chosen), with the whole "
            "of it: keeps preference training from drifting to answers that never end.",
        ),
    ] = False,
    greedy: Annotated[
        bool,
        typer.Option(
            "--greedy",
            help="Also each prompt's greedy answer (temperature 0), first: the decoding evaluation and most "
            "use run, whose failures (a list that never ends) sampling rarely shows.",
        ),
    ] = False,
    answers: Annotated[
        Path | None,
        typer.Option(
            help="Answer cache to read and extend [default: OUT/answers.jsonl]: point runs that pair "
            "differently (--repair, rewards, margins) at one run's cache to sample only once.",
        ),
    ] = None,
) -> None:
    """Preference pairs from a model's own answers: k samples per prompt, each scored, the best and the
    worst paired when their rewards differ enough. Answers are cached as they come: a rerun resumes.
    Train on the result with `pacos train --method dpo --data OUT/pairs.jsonl`."""
    from pacos.data.io import read_records
    from pacos.score.pairs import PairSettings, build_pairs, parse_rewards

    names, weights = parse_rewards(reward.split(","))
    records = [r for source in prompts for r in read_records(source, require_output=False)]
    settings = PairSettings(
        model=model,
        k=k,
        rewards=names,
        weights=weights,
        min_margin=min_margin,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        template=template,
        judge=judge,
        judge_model=judge_model,
        repair=repair,
        minimal=minimal,
        reference_chosen=reference_chosen,
        stop_pairs=stop_pairs,
        greedy=greedy,
    )
    summary = build_pairs(records, settings, out, trl=trl, answers=answers)
    repaired = f", {summary['pairs_with_repaired_chosen']} with a repaired chosen answer" if repair else ""
    if reference_chosen:
        repaired += f", {summary['pairs_with_reference_chosen']} with the reference as the chosen answer"
    if stop_pairs:
        repaired += f", {summary['stop_pairs']} stop pairs"
    print(
        f"{summary['pairs']} pairs{repaired} from {summary['prompts']} prompts x {k} answers "
        f"(mean reward {summary['mean_reward']:g}, {summary['ended']:.0%} ended) -> {out / 'pairs.jsonl'}"
    )
