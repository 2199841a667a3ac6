"""On-policy distillation (GKD): on a share of the steps the student answers the step's prompts itself and
learns the teacher's distributions on its own tokens instead of on the dataset's answers.

Off-policy distillation trains on sequences the student would not write, so at inference it meets
prefixes of its own making that it never saw the teacher correct (the train/inference mismatch GKD and
MiniLLM set out to fix). Which steps are on-policy, and what the student samples there, are drawn from the
seed and the step number alone, so a resumed run repeats them exactly.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import torch
from torch import nn

from pacos.train import attention as packed_attention
from pacos.train import distributed as dist_utils
from pacos.train.data import IGNORE, Example


def prompt_length(example: Example) -> int:
    """Tokens before the first response token (targets are shifted: targets[p - 1] is response[0])."""
    first = next(t for t, y in enumerate(example.targets) if y != IGNORE)
    return first + 1


def is_on_policy_step(seed: int, step: int, fraction: float) -> bool:
    return fraction > 0 and random.Random(f"on-policy-{seed}-{step}").random() < fraction


@torch.no_grad()
def student_examples(
    model: nn.Module,
    examples: list[Example],
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    max_length: int,
    temperature: float,
    seed: int,
    autocast: Any = None,
    batch_size: int = 8,
) -> list[Example]:
    """The examples with their responses replaced by the student's own answers to their prompts,
    generated `batch_size` prompts at a time.

    An answer that ends with EOS keeps it as a target (as in the data); one cut at `max_new_tokens` or at
    `max_length` has none. `temperature` 0 is greedy; the model's own generation defaults (repetition
    penalty, top-k ...) are not applied, so samples come from its plain distribution. The CPU and CUDA
    random states are left as they were.
    """
    prompts = [e.input_ids[: prompt_length(e)] for e in examples]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout, and the KV cache on even with activation checkpointing
    # Training's packed attention takes one unmasked row; generation needs masks and a KV cache.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    packed = base.config._attn_implementation == packed_attention.NAME
    if packed:
        base.set_attn_implementation("sdpa")
    devices = [device] if device.type == "cuda" else []
    rows: list[list[int]] = []
    try:
        with torch.random.fork_rng(devices=devices), autocast or contextlib.nullcontext():
            torch.manual_seed(seed)
            for i in range(0, len(prompts), batch_size):
                chunk = prompts[i : i + batch_size]
                width = max(len(p) for p in chunk)
                out = model.generate(
                    input_ids=torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=device),
                    attention_mask=torch.tensor(
                        [[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device
                    ),
                    max_new_tokens=max(1, min(max_new_tokens, max_length - min(len(p) for p in chunk))),
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=None,
                    top_k=None,
                    min_p=None,
                    typical_p=None,
                    repetition_penalty=None,
                    no_repeat_ngram_size=None,
                    eos_token_id=eos_id,
                    pad_token_id=pad_id,
                    use_cache=True,
                )
                rows += out[:, width:].tolist()
    finally:
        model.train(was_training)
        if packed:
            base.set_attn_implementation(packed_attention.NAME)
    answers = []
    for prompt, row in zip(prompts, rows):
        response = row[: row.index(eos_id) + 1] if eos_id in row else row
        response = response[: max_length - len(prompt)] or [eos_id]  # each row's own room
        answers.append(
            Example(prompt + response, [IGNORE] * (len(prompt) - 1) + response + [IGNORE], unlike=None)
        )
    return answers


class OnPolicy:
    """Replaces a step's examples by the student's answers on the steps `is_on_policy_step` picks."""

    def __init__(self, model: nn.Module, loss: Any, config: Any, tokenizer: Any, runtime: Any):
        self.model, self.loss, self.settings = model, loss, config.distill
        self.max_length, self.batch_size, self.seed = config.max_length, config.micro_batch_size, config.seed
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.runtime = runtime

    def __call__(self, step: int, examples: list[Example]) -> tuple[list[Example], bool]:
        on = is_on_policy_step(self.seed, step, self.settings.on_policy)
        # The cross-entropy (alpha) is for the data's answers: on the student's own samples it would only
        # reward repeating them, so on-policy steps learn the teacher's distributions alone (as GKD).
        self.loss.own_answers = on
        if not on:
            return examples, False
        answers = student_examples(
            self.model,
            examples,
            self.eos_id,
            self.pad_id,
            self.settings.on_policy_max_tokens,
            self.max_length,
            self.settings.on_policy_temperature,
            seed=self.seed * 1_000_003 + step * 101 + self.runtime.rank,
            autocast=dist_utils.autocast(self.runtime),
            batch_size=self.batch_size,
        )
        return answers, True
