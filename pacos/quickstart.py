"""`pacos quickstart`: the Alpaca loop on embedded defaults, start to finish on a laptop CPU.

1. data: clean the bundled seed tasks, split off validation, describe them (JSON + plots);
2. train: LoRA on Gemma 3 270M (base) with the Alpaca template, loss on the response only;
3. try it: greedy answers from the tuned model to training and held-out prompts.
The settings are recipes/quickstart-cpu.yaml (the same values are built in, so it runs anywhere).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pacos.data.clean import clean_records
from pacos.data.io import read_records, write_records
from pacos.data.split import split_records
from pacos.data.stats import compute_stats, plot_stats
from pacos.fileio import write_json
from pacos.train.config import TrainConfig

QUICKSTART: dict[str, Any] = {
    "model": "gemma-3-270m",
    "data": "seed-tasks",
    "clean": {"fix": True},
    "val_fraction": 0.05,
    "template": "alpaca",
    "max_length": 512,
    "method": "lora",
    "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
    "max_steps": 40,
    "batch_size": 8,
    "micro_batch_size": 4,
    "lr": 3.0e-4,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.03,
    "weight_decay": 0.0,
    "eval_every": 20,
    "save_every": 10,
    "output_dir": "runs/quickstart/model",
}


def data_stage(config: TrainConfig, data_dir: Path) -> tuple[Path, Path | None]:
    records = read_records(config.data, allow_empty=True)
    print(f"[data] read {len(records)} records from {config.data}")
    if config.clean is not None:
        result = clean_records(records, config.clean)
        write_records(result.rejected, data_dir / "rejected.jsonl")
        write_json(data_dir / "clean_report.json", result.report)
        hits = ", ".join(f"{r['name']}={r['count']}" for r in result.report["rules"] if r["count"])
        print(
            f"[data] clean: kept {len(result.kept)}, dropped {len(result.rejected)}"
            + (f" ({hits})" if hits else "")
        )
        records = result.kept
    write_records(records, data_dir / "clean.jsonl")
    splits = split_records(records, config.val_fraction, 0.0, config.seed)
    write_records(splits["train"], data_dir / "train.jsonl")
    if splits["val"]:
        write_records(splits["val"], data_dir / "val.jsonl")
    stats = compute_stats(records)
    plots = plot_stats(stats, data_dir)
    stats.pop("_lengths")
    write_json(data_dir / "stats.json", stats)
    print(
        f"[data] split: train {len(splits['train'])}, val {len(splits['val'])}; "
        f"{stats['with_input_share']:.0%} with "
        f"input, {stats['chinese_share']:.0%} Chinese, {stats['distinct_verbs']} leading verbs; plots: "
        + ", ".join(str(p) for p in plots)
    )
    return data_dir / "train.jsonl", (data_dir / "val.jsonl" if splits["val"] else None)


def sample_answers(
    model_dir: Path, config: TrainConfig, records: list[dict], max_new_tokens: int = 128
) -> list[dict[str, Any]]:
    """Greedy answers from the tuned model (pacos engine, LoRA merged), and whether each ended with EOS."""
    from pacos.evaluate.answers import Decoding, answer_records

    answers, _ = answer_records(
        str(model_dir), records, Decoding(max_new_tokens=max_new_tokens), template=config.template
    )
    return [
        {
            "instruction": record["instruction"],
            "input": record.get("input", ""),
            "answer": answer["text"].strip(),
            "ended_with_eos": answer["finish_reason"] == "stop",
            "new_tokens": answer["completion_tokens"],
        }
        for record, answer in zip(records, answers, strict=True)
    ]


def run_quickstart(config: TrainConfig, out_dir: Path) -> dict[str, Any]:
    from pacos.train.run import train

    train_path, val_path = data_stage(config, out_dir / "data")
    train_config = config.model_copy(
        update={
            "data": str(train_path),
            "val_data": str(val_path) if val_path else None,
            "val_fraction": 0.0,
            "clean": None,
            "output_dir": str(out_dir / "model"),
        }
    )
    print(
        f"[train] {config.method} fine-tuning of {config.model}, {config.max_steps} steps of "
        f"{config.batch_size} "
        "examples (progress below; about 10 minutes on 2 CPU cores)",
        flush=True,
    )
    result = train(train_config)
    print(
        f"[train] {result.steps} steps in {result.seconds:.0f} s, {result.tokens_per_second:.0f} tokens/s; "
        f"final loss {result.final_loss:.3f}"
        + (f", validation loss {result.best_val_loss:.3f}" if result.best_val_loss is not None else "")
    )
    train_records = read_records(train_path)
    picks = train_records[:2] + (read_records(val_path)[:1] if val_path else [])
    samples = sample_answers(out_dir / "model", config, picks)
    write_json(out_dir / "samples.json", samples)
    for sample, origin in zip(samples, ["training", "training", "held-out"]):
        end = "ends with EOS" if sample["ended_with_eos"] else "no EOS within the token limit"
        print(
            f"\n[try] ({origin} prompt) {sample['instruction']}\n"
            f"      -> {sample['answer'][:400]}\n      ({end})"
        )
    print(
        f"\n[done] everything is in {out_dir}: data/, model/ (adapter, metrics.jsonl, loss.png), "
        f"samples.json\n       chat with it: pacos chat --model {out_dir / 'model'}\n"
        f"       serve it: pacos serve --model {out_dir / 'model'}\n"
        f"       export it: pacos export {out_dir / 'model'} --format gguf --out {out_dir / 'model.gguf'}",
        file=sys.stdout,
    )
    return {"train": result, "samples": samples}
