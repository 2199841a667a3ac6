"""Settings of `pacos train`: one flat recipe, YAML keys = field names, overridable with --set KEY=VALUE."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pacos.data.clean import CleanConfig


class LoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    # "all-linear": every linear layer of the decoder (not the LM head), as QLoRA recommends.
    target_modules: str | list[str] = "all-linear"


class DistillConfig(BaseModel):
    """Token-level distillation from a teacher with the student's tokenizer (pacos/train/distill.py)."""

    model_config = ConfigDict(extra="forbid")

    teacher: str
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = Field(0.5, gt=0, lt=1)  # jsd's mixture weight of the teacher
    temperature: float = Field(1.0, gt=0)
    alpha: float = Field(0.0, ge=0, le=1)  # weight of the plain cross-entropy on the labels
    # Run the teacher once and keep its top-k logits per response token (None: the live teacher each step).
    top_k: int | None = Field(None, gt=0)
    cache_dir: str | None = None  # default: <output_dir>/teacher-cache
    chunk_size: int = Field(128, gt=0)  # response tokens per [chunk, vocab] slab of logits
    # GKD's lambda: the share of steps on which the student answers the prompts itself and learns the
    # teacher's distributions on its own tokens (needs the live teacher: its answers are new every step).
    on_policy: float = Field(0.0, ge=0, le=1)
    on_policy_max_tokens: int = Field(128, gt=0)
    on_policy_temperature: float = Field(0.9, ge=0)  # 0: greedy

    @model_validator(mode="after")
    def _on_policy_needs_the_live_teacher(self) -> DistillConfig:
        if self.on_policy and self.top_k:
            raise ValueError(
                "on_policy answers are new every step, so the teacher must run live: drop top_k "
                "(or set on_policy 0 to use the cache)"
            )
        return self


# beta's default per preference loss: the papers' and TRL's (SimPO's beta scales average log-probs).
DEFAULT_BETA = {"dpo": 0.1, "simpo": 2.0, "orpo": 0.1, "kto": 0.1}


class PreferenceConfig(BaseModel):
    """Settings of the preference objectives (pacos/train/preference.py); `objective` picks the loss."""

    model_config = ConfigDict(extra="forbid")

    beta: float | None = Field(None, gt=0)  # None: DEFAULT_BETA for the objective
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # DPO/SimPO: the share of pairs assumed mislabelled
    simpo_gamma: float = Field(0.5, ge=0)  # SimPO's target margin between average log-probs (x beta)
    # Weight of the chosen answer's mean negative log-likelihood added to each pair's loss (RPO; LLaMA-
    # Factory's pref_ftx): keeps both answers' probabilities from falling together. ORPO always has it (1).
    sft_weight: float = Field(0.0, ge=0)
    desirable_weight: float = Field(1.0, gt=0)  # KTO's lambda_D and lambda_U
    undesirable_weight: float = Field(1.0, gt=0)

    def beta_for(self, objective: str) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA[objective]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # What to train on.
    model: str = "gemma-3-270m"
    data: str = "seed-tasks"
    val_data: str | None = None
    val_fraction: float = Field(0.0, ge=0, lt=1)  # split off `data` when no val_data is given
    clean: CleanConfig | None = None  # clean `data` in memory before training
    template: str = "alpaca"
    max_length: int = Field(512, gt=8)
    # Examples longer than max_length: "drop" them (reported), or "cut" the response and leave EOS out,
    # so the model never learns to stop mid-answer (Alpaca's truncation dropped EOS silently).
    truncation: Literal["drop", "cut"] = "drop"
    trust_remote_code: bool = False
    # None: per-example SDPA for packed rows (train/attention.py), else transformers' default.
    # "flash_attention_2" on GPUs with flash-attn installed: the same, from its varlen kernel.
    attn_implementation: str | None = None

    # What is learned: "sft", demonstrations (`data` holds instruction/output records); or a preference
    # loss on pairs (`data` holds chosen/rejected answers; train/pairs.py reads TRL, UltraFeedback and HH):
    # DPO (reference log-probs computed once before the first step: the starting model is the reference),
    # SimPO and ORPO (no reference), KTO (desirable/undesirable answers, paired or not).
    objective: Literal["sft", "dpo", "simpo", "orpo", "kto"] = "sft"
    preference: PreferenceConfig = PreferenceConfig()

    # How to train.
    method: Literal["full", "lora", "qlora"] = "full"
    lora: LoraConfig = LoraConfig()
    # Full fine-tuning only. False freezes the token embeddings (and an LM head tied to them): Gemma 3
    # 270M's 262K-entry vocabulary is 168M of its 268M parameters, and their gradient and Adam state cost
    # more than the decoder's.
    train_embeddings: bool = True
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, gt=0)  # overrides epochs
    batch_size: int = Field(128, gt=0)  # examples per optimizer step, over all processes
    micro_batch_size: int = Field(4, gt=0)  # examples per forward pass, per process
    packing: bool = True  # padding-free rows with per-example position ids; False: length-grouped padding
    lr: float = Field(2e-5, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    gradient_checkpointing: bool = False
    # Token-level unlikelihood (Welleck et al. 2019) with this weight: each response position also pushes
    # down the tokens the response already used (other than its own target), the habit that makes small
    # models loop under greedy decoding. 0: plain cross-entropy. Validation loss stays plain either way.
    unlikelihood: float = Field(0.0, ge=0)
    # Synthetic loops, as a share of the training examples: an answer cut after one of its lines or
    # sentences, repeated 1-3 times, the repeats unlearned with weight loop_weight (train/data.py,
    # loop_example). Greedy decoding of a small tuned model otherwise loops on a quarter of its answers.
    loop_examples: float = Field(0.0, ge=0)
    loop_weight: float = Field(1.0, gt=0)
    # The EOS target's cross-entropy counts this many times: the one token that decides where an answer ends
    # (preference objectives: in the chosen answer's NLL term, preference.sft_weight).
    eos_weight: float = Field(1.0, gt=0)
    loss_chunk_size: int = Field(512, gt=0)  # labelled tokens per LM-head chunk ([chunk, vocab] logits)
    # NEFTune (Jain et al. 2023): uniform noise of size alpha / sqrt(length x width) on the input
    # embeddings of every training forward pass (the paper: alpha 5 for 7B models). 0: off.
    neftune_alpha: float = Field(0.0, ge=0)
    distill: DistillConfig | None = None  # learn a teacher's distributions instead of (or beside) labels
    seed: int = 42

    # Where and how it runs.
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16-mixed", "bf16"] = "auto"  # auto: fp32 on CPU, bf16-mixed on GPU
    distributed: Literal["auto", "ddp", "fsdp"] = "auto"  # under torchrun/accelerate; auto = ddp
    num_threads: int | None = None

    # What it writes.
    output_dir: str = "runs/train"
    log_every: int = Field(1, gt=0)
    eval_every: int = Field(0, ge=0)  # steps; 0: at the end of each epoch and of training
    save_every: int = Field(0, ge=0)  # steps; 0: only the final save
    keep_checkpoints: int = Field(2, gt=0)
    tensorboard: bool = True

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.val_data and self.val_fraction:
            raise ValueError("give val_data or val_fraction, not both")
        if self.distill and (self.unlikelihood or self.loop_examples or self.eos_weight != 1.0):
            raise ValueError("distill does not combine with unlikelihood, loop_examples or eos_weight")
        if self.objective != "sft" and (self.distill or self.unlikelihood or self.loop_examples):
            raise ValueError(
                f"objective {self.objective} does not combine with distill, unlikelihood or loop_examples "
                "(they shape an SFT loss)"
            )
        if (
            self.objective != "sft"
            and self.eos_weight != 1.0
            and (self.objective == "kto" or not self.preference.sft_weight)
        ):
            raise ValueError(
                f"eos_weight with objective {self.objective} weighs EOS in the chosen answer's NLL term: "
                "use dpo, simpo or orpo with preference.sft_weight above 0"
            )
        if self.neftune_alpha and (self.objective != "sft" or self.distill):
            raise ValueError("neftune_alpha: NEFTune noises supervised fine-tuning only (objective sft)")
        return self
