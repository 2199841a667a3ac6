"""`pacos train`, `selftrain`, `distill` and `compress`: making and shrinking models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pacos.cli.app import (
    SetOption,
    app,
)
from pacos.errors import PacosError


@app.command("train")
def train(
    config: Annotated[
        Path | None,
        typer.Option(help="Recipe YAML, or a bundled recipe by name (alpaca-lora, alpaca-7b-fsdp, ...)."),
    ] = None,
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
    method: Annotated[
        str | None,
        typer.Option(
            help="What is learned: sft (demonstrations), or dpo, simpo, orpo, kto on preference pairs "
            "(--data holds chosen/rejected answers). Sets the recipe's `objective`."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the latest checkpoint in the output directory.")
    ] = False,
    overrides: SetOption = None,
) -> None:
    """Fine-tune a model on instruction data (Alpaca template, loss on the response only), or on preference
    pairs (--method dpo | simpo | orpo | kto)."""
    from pacos.config import load_config
    from pacos.train.config import TrainConfig
    from pacos.train.run import train as run_training

    if method is not None and method not in ("sft", "dpo", "simpo", "orpo", "kto"):
        raise PacosError(f"--method {method}: expected sft, dpo, simpo, orpo or kto")
    flags = {
        "model": model,
        "data": data,
        "val_data": val_data,
        "output_dir": output_dir,
        "max_steps": max_steps,
        "epochs": epochs,
        "lr": lr,
        "method": None if lora is None else ("lora" if lora else "full"),
        "objective": method,
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
    config: Annotated[
        Path | None, typer.Option(help="Recipe YAML, or a bundled recipe by name (selftrain).")
    ] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where every round writes.")] = None,
    overrides: SetOption = None,
) -> None:
    """Iterative self-training: the model answers unlabelled instructions, the good answers are kept, it is
    retrained on them, round after round until the held-out metric stops improving. A rerun resumes."""
    from pacos.config import load_config
    from pacos.pipeline.selftrain import run_selftrain
    from pacos.pipeline.selftrain_config import SelfTrainConfig

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
    on_policy: Annotated[
        float | None,
        typer.Option(
            help="Share of steps (GKD's lambda) on which the student answers the prompts itself and "
            "learns the teacher's distributions on its own tokens (live teacher only)."
        ),
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
        "distill.on_policy": on_policy,
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
