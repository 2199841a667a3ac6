"""Settings of `pacos selftrain`: one YAML recipe (recipes/selftrain*.yaml), overridable with --set."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pacos.train.config import TrainConfig

# Metrics a round can be judged by, and whether larger is better.
METRICS = {"embedding_similarity": True, "rouge_l": True, "eos_rate": True, "held_out_loss": False}


class LabelConfig(BaseModel):
    """How the current model answers the unlabelled pool (pseudo-labels)."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(2, ge=1)  # answers per instruction; the best one is kept
    temperature: float = Field(0.7, ge=0)  # 0: greedy (then samples > 1 repeat the same answer)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(256, gt=0)
    dtype: str = "auto"
    quantize: str = "auto"  # fp16 weights on x86 CPUs computing in fp32 (pacos.infer.quantize)


class KeepConfig(BaseModel):
    """Which pseudo-labels are trained on. A sample must pass every filter; the best sample of an
    instruction (judge rating, then confidence) stands for it; then a threshold or a top fraction."""

    model_config = ConfigDict(extra="forbid")

    require_eos: bool = True  # an answer cut at max_new_tokens is not a finished answer
    clean: bool = True  # `pacos data clean`'s drop rules (empty, N/A, repetitive, merged items, ...)
    verifiable: bool = True  # the ifeval checks of pool records that carry `checks`
    min_confidence: float | None = None  # mean log-probability per answer token
    judge: str | None = None  # local:NAME or http(s)://HOST:PORT/v1: rate each best sample 1-5
    judge_model: str | None = None
    min_judge: float = Field(3.5, ge=1, le=5)
    top_fraction: float | None = Field(0.5, gt=0, le=1)  # of the instructions left, by the score


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(256, gt=0)
    embeddings: bool = True  # all-MiniLM-L6-v2 similarity to the held-out references
    dtype: str = "auto"
    quantize: str = "auto"


class SelfTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "gemma-3-270m"  # the base every round trains from (retrain_from: base)
    labelled: str = "seed-tasks"  # human-labelled records, in every round's training set
    pool: str  # unlabelled instructions (records; any outputs are ignored)
    held_out: str  # records with reference outputs, never trained on
    template: str = "alpaca"
    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig settings (data/output_dir set here)
    label: LabelConfig = LabelConfig()
    keep: KeepConfig = KeepConfig()
    eval: EvalConfig = EvalConfig()
    # ReST-EM retrains from the base each round (transfers better); "previous" continues from the last
    # round's model (its LoRA merged first).
    retrain_from: Literal["base", "previous"] = "base"
    metric: Literal["embedding_similarity", "rouge_l", "eos_rate", "held_out_loss"] = "embedding_similarity"
    min_delta: float = Field(0.0, ge=0)  # an improvement smaller than this does not count
    patience: int = Field(1, ge=1)  # rounds without improvement before stopping
    max_rounds: int = Field(3, ge=1)  # self-training rounds after round 0 (the labelled data alone)
    seed: int = 0
    output_dir: str = "runs/selftrain"

    @model_validator(mode="after")
    def _check(self) -> SelfTrainConfig:
        clash = {"data", "val_data", "output_dir", "model"} & set(self.train)
        if clash:
            raise ValueError(f"train.{sorted(clash)[0]} is set by selftrain itself; leave it out")
        TrainConfig(**self.train)  # wrong training settings fail now, not in round 1
        return self
