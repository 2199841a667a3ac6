"""Settings of `pacos quickstart`: one section per stage; recipes/quickstart.yaml holds the same values."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pacos.generate.config import GenerateConfig
from pacos.train.config import PreferenceConfig, TrainConfig

# recipes/quickstart-cpu.yaml: the training stage alone (`pacos train --config recipes/quickstart-cpu.yaml`).
TRAIN: dict[str, Any] = {
    "model": "gemma-3-270m",
    "data": "seed-tasks",
    "clean": {"fix": True},
    "val_fraction": 0.05,
    "template": "alpaca",
    "max_length": 512,
    "method": "lora",
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
    "max_steps": 90,
    "batch_size": 4,
    "micro_batch_size": 4,
    "lr": 1.0e-3,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.03,
    "weight_decay": 0.0,
    "loop_examples": 0.5,
    "loop_weight": 1.0,
    "unlikelihood": 1.0,
    "eos_weight": 3.5,
    "precision": "bf16-mixed",
    "eval_every": 45,
    "save_every": 20,
    "output_dir": "runs/quickstart/model",
}

# recipes/quickstart.yaml: the whole loop.
QUICKSTART: dict[str, Any] = {
    "held_out": {"en": 16, "zh": 8},
    "generate": {
        "teacher": "local:smollm2-135m-instruct",
        "num": 10,
        "prompt_examples": 3,
        "tasks_per_request": 8,
        "max_tokens": 512,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_requests": 48,
        "client": {"api": "completions", "dtype": "auto", "quantize": "auto", "concurrency": 16},
    },
    "train": {k: v for k, v in TRAIN.items() if k not in ("data", "clean", "val_fraction", "output_dir")},
    "prefer": {
        "prompts": 240,
        "k": 4,
        "max_new_tokens": 200,
        "temperature": 0.8,
        "top_p": 0.95,
        "min_margin": 0.25,
        "rewards": ["checks", "eos", "repetition"],
        "repair": True,
        "minimal": True,
        "stop_pairs": True,
        "greedy": True,
        "reference_records": 72,
        "reference_rewards": ["reference", "eos=2", "repetition"],
        "reference_max_new_tokens": 256,
        "objective": "dpo",
        "preference": {"beta": 0.1, "sft_weight": 4.0},
        "lr": 2.0e-4,
        "epochs": 1,
        "batch_size": 8,
        "micro_batch_size": 4,
    },
    "eval": {
        "max_new_tokens": 256,
        "judge": "local:smollm2-135m-instruct",
        "judge_max_chars": 600,
        "ifeval_per_language": 6,
        "embeddings": True,
        "dtype": "auto",
        "quantize": "auto",
    },
}


class HeldOutConfig(BaseModel):
    """Seed tasks kept out of training (and out of the teacher's prompts) to evaluate on."""

    model_config = ConfigDict(extra="forbid")

    en: int = Field(16, ge=0)
    zh: int = Field(8, ge=0)


class EvalStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(256, ge=1)
    judge: str | None = "local:smollm2-135m-instruct"  # None: no pairwise judging
    judge_model: str | None = None
    judge_max_chars: int | None = Field(600, gt=0)  # answers cut for the judge (None: whole)
    ifeval_per_language: int = Field(6, ge=0)  # verifiable prompts per language from the bundled set
    embeddings: bool = True
    # Local models' weights while answering and judging: fp32 math on fp16 weights on x86 CPUs (bf16
    # prefill where native), bf16 on GPUs: several times float32's speed (pacos.infer.decoding_weights).
    dtype: str = "auto"
    quantize: str = "auto"


class PreferStageConfig(BaseModel):
    """After SFT, pairs of the tuned model's own answers and a preference loss on a new LoRA
    (benchmarks/README.md, "Reference answers as chosen (SPIN), and stopping pairs" and "Soups, EOS weight,
    a heavier chosen-answer NLL, and counting loops"):
    - verifiable prompts from the training seed tasks, k answers each, scored by their checks (no judge);
      the best answer edited to pass its checks is paired with the answer it was edited from (`minimal`);
    - `reference_records` training records, k answers each: the record's reference answer is preferred to
      the model's worst (SPIN), which keeps the answers close to what SFT taught;
    - `stop_pairs`: an answer that ran out of tokens, cut before its loop, preferred to the whole of it;
    - `greedy`: the greedy answer as well as the k samples (the decoding evaluation uses)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    prompts: int = Field(240, gt=0)
    k: int = Field(4, ge=2)
    max_new_tokens: int = Field(200, gt=0)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    min_margin: float = Field(0.25, ge=0)
    rewards: list[str] = ["checks", "eos", "repetition"]
    repair: bool = True  # the best answer edited to pass its checks competes (pacos pairs --repair)
    minimal: bool = True  # ... against the answer it was edited from (pacos pairs --minimal)
    stop_pairs: bool = True  # pacos pairs --stop-pairs, for both kinds of prompts
    greedy: bool = True  # pacos pairs --greedy: each prompt's greedy answer too, first
    reference_records: int = Field(72, ge=0)  # training records for reference-chosen pairs (0: none)
    reference_rewards: list[str] = ["reference", "eos=2", "repetition"]  # picks the worst answer
    reference_max_new_tokens: int = Field(256, gt=0)
    objective: Literal["dpo", "simpo", "orpo", "kto"] = "dpo"
    preference: PreferenceConfig = PreferenceConfig(sft_weight=4.0)
    lr: float = Field(2e-4, gt=0)
    epochs: float = Field(1, gt=0)
    batch_size: int = Field(8, gt=0)
    micro_batch_size: int = Field(4, gt=0)


class QuickstartConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    held_out: HeldOutConfig = HeldOutConfig()
    generate: GenerateConfig = GenerateConfig()  # seeds and out_dir are set by the quickstart
    train: TrainConfig = TrainConfig()  # data, val_data and output_dir are set by the quickstart
    prefer: PreferStageConfig = PreferStageConfig()
    eval: EvalStageConfig = EvalStageConfig()
