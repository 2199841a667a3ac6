"""`pacos train`: supervised instruction fine-tuning, full or LoRA, one process or many.

The training loop is `train()` below; everything it calls is a small piece from this package:
data.py (examples, batches), objectives.py (what is minimised: loss.py's response-only fused loss, or
distill.py's teacher distributions, with on_policy.py's student-written answers), validation.py
(val_loss), distributed.py (DDP/FSDP), checkpoint.py (exact resume), metrics.py (JSONL, TensorBoard, PNG).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from pacos.data.clean import clean_records
from pacos.data.io import read_records
from pacos.data.split import split_records
from pacos.device import return_freed_memory
from pacos.errors import PacosError
from pacos.models import ensure_pad_token, load_model, load_tokenizer
from pacos.train import attention as packed_attention
from pacos.train import checkpoint as ckpt
from pacos.train import distributed as dist_utils
from pacos.train.config import TrainConfig
from pacos.train.data import Batch, StepPlan, loop_examples, micro_batches, tokenize_records
from pacos.train.metrics import MetricsLog, plot_loss
from pacos.train.objectives import build_objective, check_objective
from pacos.train.validation import validation_loss

# Settings a resumed run may change; anything else must match the checkpoint.
_RESUMABLE_CHANGES = {
    "max_steps",
    "epochs",
    "eval_every",
    "save_every",
    "log_every",
    "keep_checkpoints",
    "tensorboard",
    "num_threads",
    "output_dir",
}


@dataclass
class TrainResult:
    output_dir: str
    steps: int
    final_loss: float
    best_val_loss: float | None
    train_examples: int
    real_tokens: int
    padding_efficiency: float
    tokens_per_second: float
    seconds: float
    is_main: bool = True


def _say(runtime: dist_utils.Runtime, message: str) -> None:
    if runtime.is_main:
        print(message, file=sys.stderr, flush=True)


def load_datasets(config: TrainConfig) -> tuple[list[dict], list[dict]]:
    """Instruction records for SFT, pairs (or KTO records) for a preference objective."""
    if config.objective != "sft":
        from pacos.data.pairs import read_pairs

        if config.clean is not None:
            raise PacosError("clean applies to instruction records, not to preference pairs")
        read = read_pairs
    else:
        read = read_records
    records = read(config.data)
    if config.clean is not None:
        records = clean_records(records, config.clean).kept
    if config.val_data:
        return records, read(config.val_data)
    if config.val_fraction:
        parts = split_records(records, config.val_fraction, 0.0, config.seed)
        return parts["train"], parts["val"]
    return records, []


def build_model(config: TrainConfig, runtime: dist_utils.Runtime, tokenizer: Any) -> Any:
    kwargs: dict[str, Any] = {}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    if config.method == "qlora":
        if runtime.device.type != "cuda":
            raise PacosError("method 'qlora' needs a CUDA GPU (bitsandbytes 4-bit); use method 'lora' on CPU")
        try:
            from transformers import BitsAndBytesConfig
        except ImportError:
            raise PacosError("method 'qlora' needs bitsandbytes (pip install bitsandbytes)") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": runtime.device}
    # LoRA under bf16 autocast: the frozen base weights are stored in bf16 (half the memory, no per-matmul
    # casts); the adapters stay fp32.
    frozen_bf16 = config.method == "lora" and runtime.autocast_dtype is not None
    dtype = runtime.autocast_dtype if frozen_bf16 else runtime.param_dtype
    model = load_model(config.model, dtype=dtype, trust_remote_code=config.trust_remote_code, **kwargs)
    text_config = getattr(model.config, "get_text_config", lambda: model.config)()
    if (
        config.packing
        and not config.attn_implementation
        and text_config._attn_implementation == "sdpa"
        and getattr(text_config, "attn_logit_softcapping", None) is None  # Gemma 2 caps: SDPA cannot
    ):
        model.set_attn_implementation(packed_attention.register())  # per-example attention
    ensure_pad_token(tokenizer, model)
    model.config.use_cache = False
    if config.method == "full" and not config.train_embeddings:
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            if layer is not None:
                layer.requires_grad_(False)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if config.method == "qlora":
            model = prepare_model_for_kbit_training(model, config.gradient_checkpointing)
        lora = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    if config.method != "qlora":
        model.to(runtime.device)
    return model


def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    """Linear warmup over ceil(warmup_ratio * total) steps, then cosine/linear decay to min_lr_ratio."""
    warmup = math.ceil(config.warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    if config.lr_scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if config.lr_scheduler == "cosine" else 1 - progress
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * shape


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]  # no decay on norms, biases
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=config.lr, betas=config.adam_betas, eps=config.adam_eps
    )


def accumulate_gradients(
    loss_model: torch.nn.Module, batches: list[Batch], labelled: float, runtime: dist_utils.Runtime
) -> float:
    """Backward over a step's micro-batches; gradients end up as d(summed loss / labelled)/dθ, so any split
    into micro-batches and processes gives the gradient of the whole batch. Returns the summed loss."""
    step_loss = 0.0
    for i, batch in enumerate(batches):
        batch = batch.to(runtime.device)
        with (
            dist_utils.no_gradient_sync(loss_model, skip=i < len(batches) - 1),
            dist_utils.autocast(runtime),
        ):
            loss_sum, _ = loss_model(
                batch.input_ids,
                batch.position_ids,
                batch.attention_mask,
                batch.targets,
                batch.unlike,
                **batch.extra,
            )
            # DDP/FSDP average gradients over ranks; scaling by world size turns that into the global sum.
            (loss_sum * runtime.world_size / labelled).backward()
        step_loss += float(loss_sum.detach())
    return step_loss


def save_model(
    output: Path,
    loss_model: torch.nn.Module,
    hf_model: Any,
    tokenizer: Any,
    config: TrainConfig,
    runtime: dist_utils.Runtime,
) -> None:
    """A directory `from_pretrained` (full) or `PeftModel.from_pretrained` (LoRA) loads directly."""
    lora = config.method != "full"
    state = ckpt.full_model_state(loss_model, runtime, trainable_only=lora)
    if runtime.is_main:
        state = {
            k.removeprefix("model."): v for k, v in state.items()
        }  # CausalLMLoss holds the model as .model
        from pacos.fileio import atomic_files

        with atomic_files(output) as tmp, warnings.catch_warnings():
            # A base that is itself a LoRA run (DPO on an SFT adapter) has no config.json for PEFT to
            # check the vocabulary against; it is the base's own vocabulary, unchanged.
            warnings.filterwarnings("ignore", message="Could not find a config file")
            hf_model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "pacos_train.yaml").write_text(
                yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
            )
    dist_utils.barrier(runtime)


class _Progress:
    """A rich progress bar on a terminal; plain lines in logs and CI."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, info: str, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif self.enabled:
            print(f"step {step}/{total} {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    current = config.model_dump(mode="json")
    changed = sorted(k for k in current if k not in _RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        raise PacosError(f"cannot resume: these settings differ from the checkpoint's: {', '.join(changed)}")


def _preference_batches(
    config: TrainConfig, objective: Any, examples: list[Any], runtime: dist_utils.Runtime
) -> Any:
    """The batch maker for pairs; DPO and KTO first get every answer's reference log-prob (computed by the
    starting model, before any checkpoint loads, or read from the output directory's cache)."""
    from functools import partial

    from pacos.train.pairs import fill_reference, pair_batches
    from pacos.train.preference import NEEDS_REFERENCE, PAIRED

    unpaired = sum(len(e.sequences) != 2 for e in examples)
    if config.objective in PAIRED and unpaired:
        raise PacosError(
            f"objective {config.objective} learns from pairs, but {unpaired} records are single answers "
            "with a label (KTO's format): use --method kto, or give chosen/rejected pairs"
        )
    if config.objective in NEEDS_REFERENCE:
        cache = Path(config.output_dir) / "reference-logps.jsonl"
        cache.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        pad_id = objective.model.config.pad_token_id
        computed = fill_reference(objective, examples, cache, config.micro_batch_size, pad_id, runtime)
        if computed:
            _say(
                runtime,
                f"[train] reference log-probs of {computed} answers in {time.perf_counter() - started:.0f} s "
                f"-> {cache}",
            )
    return partial(pair_batches, units=objective.units)


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    runtime = dist_utils.setup(config.device, config.precision, config.distributed)
    if runtime.precision_note:
        _say(runtime, f"[train] {runtime.precision_note}")
    return_freed_memory()  # a fragmented heap costs more peak memory than activations do on a CPU
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)  # the same initial weights (LoRA) on every rank
    output_dir = Path(config.output_dir)
    checkpoints = output_dir / "checkpoints"

    # Data and model.
    train_records, val_records = load_datasets(config)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    # Settings the objective cannot work with (a teacher with another vocabulary) fail before any model loads.
    check_objective(config, tokenizer, runtime)
    hf_model = build_model(config, runtime, tokenizer)
    tokenize = tokenize_records
    if config.objective != "sft":
        from pacos.train.pairs import tokenize_pairs as tokenize
    train_examples, report = tokenize(
        train_records, tokenizer, config.template, config.max_length, config.truncation
    )
    val_examples, _ = tokenize(val_records, tokenizer, config.template, config.max_length, config.truncation)
    if not train_examples:
        raise PacosError(
            f"no training examples left: all {len(train_records)} are longer than max_length "
            f"{config.max_length} tokens"
        )
    _say(
        runtime,
        f"[train] {report.kept} examples ({report.dropped_too_long} longer than {config.max_length} "
        f"tokens dropped, {report.cut} cut), {len(val_examples)} for validation; "
        f"{report.response_tokens / max(1, report.response_tokens + report.prompt_tokens):.0%} "
        f"of tokens are response tokens",
    )
    if config.loop_examples:
        n_loops = round(config.loop_examples * len(train_examples))
        loops = loop_examples(
            train_records, n_loops, tokenizer, config.template, config.max_length, config.seed
        )
        train_examples += loops
        _say(runtime, f"[train] {len(loops)} synthetic loops added, their repeats unlearned")
    plan = StepPlan(
        n_examples=len(train_examples),
        batch_size=config.batch_size,
        micro_batch_size=config.micro_batch_size,
        seed=config.seed,
        world_size=runtime.world_size,
    )
    total_steps = plan.total_steps(config.epochs, config.max_steps)
    pad_id = tokenizer.pad_token_id

    objective = loss_model = build_objective(config, hf_model, tokenizer, train_examples, runtime)
    batches_of = micro_batches
    if config.objective != "sft":
        batches_of = _preference_batches(config, objective, train_examples + val_examples, runtime)
    on_policy = None
    if config.distill and config.distill.on_policy:
        from pacos.train.on_policy import OnPolicy

        on_policy = OnPolicy(
            model=hf_model, loss=loss_model, config=config, tokenizer=tokenizer, runtime=runtime
        )
    loss_model = dist_utils.wrap(loss_model, hf_model, runtime)
    torch.manual_seed(config.seed + runtime.rank)  # but different dropout draws on each rank
    optimizer = make_optimizer(loss_model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, config))
    state = {"step": 0, "real_tokens": 0, "padded_tokens": 0, "best_val_loss": None, "seconds": 0.0}
    if resume:
        found = ckpt.list_checkpoints(checkpoints)
        if not found:
            raise PacosError(f"--resume: no checkpoint in {checkpoints}")
        saved = yaml.safe_load((found[-1] / "pacos_train.yaml").read_text())
        _check_resumable(saved, config)
        state = ckpt.load_checkpoint(
            found[-1], loss_model, optimizer, scheduler, runtime, config.method != "full"
        )
        _say(runtime, f"[train] resumed from {found[-1]} at step {state['step']}")
    if runtime.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "pacos_train.yaml").write_text(
            yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        )
    metrics = MetricsLog(
        output_dir, config.tensorboard and runtime.is_main, state["step"] if resume else None
    )
    progress = _Progress(total_steps, state["step"], runtime.is_main)
    loss_value = float("nan")
    loss_model.train()
    if not resume and config.eval_every and len(val_examples) >= runtime.world_size:
        # The untrained model's validation loss: the baseline every later value is read against.
        baseline = round(validation_loss(loss_model, val_examples, config, pad_id, runtime, batches_of), 6)
        if runtime.is_main:
            metrics.log({"step": 0, "val_loss": baseline})
        _say(runtime, f"[train] validation loss before training: {baseline:.4f}")
    started = time.perf_counter() - state["seconds"]  # training time (tokens/s) excludes that baseline

    for step in range(state["step"], total_steps):
        # One optimizer step: its micro-batches, loss normalised by the step's labelled tokens on all ranks.
        step_examples = [train_examples[i] for i in plan.step_indices(step, runtime.rank)]
        answered_by_student = False
        if on_policy is not None:  # GKD: on some steps the student writes the answers it learns on
            step_examples, answered_by_student = on_policy(step, step_examples)
        batches = batches_of(
            step_examples, list(range(len(step_examples))), config.micro_batch_size, pad_id, config.packing
        )
        labelled = dist_utils.all_reduce_sum(sum(b.labelled for b in batches), runtime)
        step_loss = accumulate_gradients(loss_model, batches, labelled, runtime)
        state["real_tokens"] += sum(b.real_tokens for b in batches)
        state["padded_tokens"] += sum(b.padded_tokens for b in batches)
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(
                [p for p in loss_model.parameters() if p.requires_grad], config.max_grad_norm
            )
            if config.max_grad_norm
            else None
        )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = dist_utils.all_reduce_sum(step_loss, runtime) / labelled
        state["step"] = step + 1
        state["seconds"] = time.perf_counter() - started

        # Logging, validation and checkpoints.
        tokens_all = dist_utils.all_reduce_sum(state["real_tokens"], runtime)
        record = {
            "step": step + 1,
            "epoch": round(plan.epoch_of(step + 1), 4),
            "loss": round(loss_value, 6),
            "lr": scheduler.get_last_lr()[0],
            "tokens_per_second": round(tokens_all / state["seconds"], 1),
            "padding_efficiency": round(state["real_tokens"] / max(1, state["padded_tokens"]), 4),
        }
        if on_policy is not None:
            record["on_policy"] = int(answered_by_student)
        if hasattr(objective, "pop_metrics"):  # preference objectives: margins, accuracy, log-probs
            from pacos.train.preference import metric_means

            sums = objective.pop_metrics()
            record.update(
                metric_means({k: dist_utils.all_reduce_sum(v, runtime) for k, v in sorted(sums.items())})
            )
        if grad_norm is not None:
            record["grad_norm"] = round(
                float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm), 4
            )
        end_of_epoch = (step + 1) % plan.steps_per_epoch == 0 or step + 1 == total_steps
        if len(val_examples) >= runtime.world_size and (
            (config.eval_every and (step + 1) % config.eval_every == 0)
            or (not config.eval_every and end_of_epoch)
        ):
            record["val_loss"] = round(
                validation_loss(loss_model, val_examples, config, pad_id, runtime, batches_of), 6
            )
            if state["best_val_loss"] is None or record["val_loss"] < state["best_val_loss"]:
                state["best_val_loss"] = record["val_loss"]
                save_model(output_dir / "best", loss_model, hf_model, tokenizer, config, runtime)
        if runtime.is_main and (
            (step + 1) % config.log_every == 0 or "val_loss" in record or step + 1 == total_steps
        ):
            metrics.log(record)
        info = f"loss {loss_value:.4f} lr {record['lr']:.2e} {record['tokens_per_second']:.0f} tok/s" + (
            f" val {record['val_loss']:.4f}" if "val_loss" in record else ""
        )
        if "reward_margin" in record:
            info += f" margin {record['reward_margin']:.3f} acc {record['accuracy']:.2f}"
        progress.update(step + 1, info, total_steps)
        # The last step too: a finished run extended with --resume --max-steps N goes on from where it ended.
        if config.save_every and (step + 1) % config.save_every == 0:
            ckpt.save_checkpoint(
                checkpoints,
                step + 1,
                loss_model,
                optimizer,
                scheduler,
                state,
                runtime,
                config.method != "full",
                config.keep_checkpoints,
                {"pacos_train.yaml": yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)},
            )

    progress.close()
    metrics.close()
    save_model(output_dir, loss_model, hf_model, tokenizer, config, runtime)
    seconds = time.perf_counter() - started
    result = TrainResult(
        output_dir=str(output_dir),
        steps=total_steps,
        final_loss=loss_value,
        best_val_loss=state["best_val_loss"],
        train_examples=len(train_examples),
        real_tokens=int(dist_utils.all_reduce_sum(state["real_tokens"], runtime)),
        padding_efficiency=state["real_tokens"] / max(1, state["padded_tokens"]),
        tokens_per_second=dist_utils.all_reduce_sum(state["real_tokens"], runtime) / max(seconds, 1e-9),
        seconds=seconds,
        is_main=runtime.is_main,
    )
    if runtime.is_main:
        (output_dir / "train_summary.json").write_text(
            json.dumps(
                {
                    **asdict(result),
                    "tokenization": asdict(report),
                    "runtime": {
                        "device": runtime.device.type,
                        "processes": runtime.world_size,
                        "strategy": runtime.strategy,
                        "precision": runtime.precision,
                    },
                },
                indent=2,
            )
        )
        plot_loss(output_dir / "metrics.jsonl", output_dir / "loss.png")
    return result
