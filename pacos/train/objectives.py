"""What the training loop minimises, behind one interface.

An objective is a module the loop calls on a micro-batch as
`objective(input_ids, position_ids, attention_mask, targets, unlike=None)` and that returns
`(summed loss, labelled tokens)`; the loop divides by the step's labelled tokens on all processes, so
any split into micro-batches and processes gives the same gradient. Its `model` attribute is the
Hugging Face model being trained (what checkpoints save).

- `CausalLMLoss` (loss.py): response-only cross-entropy, fused with the LM head in chunks, with
  unlikelihood on synthetic loops and an EOS weight: `pacos train`.
- `DistillLoss` (distill.py): the teacher's token distributions as the target (forward / reverse KL,
  generalised JSD), live or from a cached top-k: `pacos distill`.
- `PreferenceLoss` (preference.py): DPO, SimPO, ORPO or KTO on pairs of answers (pairs.py batches them,
  and passes each answer's reference log-prob): `pacos train --method dpo`.
A new objective is a module with that call, chosen here from the settings.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pacos.errors import PacosError
from pacos.train import distributed as dist_utils
from pacos.train.config import TrainConfig
from pacos.train.loss import CausalLMLoss


def check_objective(config: TrainConfig, tokenizer: Any, runtime: dist_utils.Runtime) -> None:
    """Settings the objective cannot work with fail here, before any model loads."""
    if config.distill:
        from pacos.train.distill import check_teacher_tokenizer

        check_teacher_tokenizer(config, tokenizer)  # a teacher with another vocabulary
        if config.distill.on_policy and runtime.strategy == "fsdp":
            raise PacosError("distill.on_policy cannot generate from an FSDP-sharded student; use ddp")


def build_objective(
    config: TrainConfig, model: Any, tokenizer: Any, examples: list[Any], runtime: dist_utils.Runtime
) -> nn.Module:
    """The loss module for these settings (distillation may fill its teacher cache from `examples`)."""
    if config.distill:
        from pacos.train.distill import distill_loss

        return distill_loss(config, model, tokenizer, examples, runtime)
    if config.objective != "sft":
        from pacos.train.preference import PreferenceLoss

        return PreferenceLoss(
            model,
            config.objective,
            config.preference,
            config.loss_chunk_size,
            eos_id=tokenizer.eos_token_id,
            eos_weight=config.eos_weight,
        )
    return CausalLMLoss(
        model=model,
        chunk_size=config.loss_chunk_size,
        unlikelihood=config.unlikelihood,
        eos_weight=config.eos_weight,
        eos_id=tokenizer.eos_token_id,
        loop_weight=config.loop_weight,
        neftune_alpha=config.neftune_alpha,
    )
