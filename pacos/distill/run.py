"""`pacos distill`: `pacos train` with the teacher's token distributions as the target.

The training loop, checkpoints, resume, metrics and saving are `pacos train`'s; only the loss differs
(`DistillLoss`). This module loads the teacher, checks it against the student's vocabulary and, with
`top_k`, fills the teacher cache before the first step.

Sequence-level distillation (the teacher writes the answers, the student learns them as labels) needs
no code of its own: `pacos generate --teacher T` to write the data, then `pacos train` on it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from pacos.distill.teacher import DistillLoss, TeacherCache, cache_teacher, check_same_vocabulary
from pacos.models import load_model, load_tokenizer
from pacos.train import distributed as dist_utils
from pacos.train.config import TrainConfig
from pacos.train.data import Example


def _rows(model: Any) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def check_teacher_tokenizer(config: TrainConfig, tokenizer: Any) -> Any:
    """The teacher's tokenizer; PacosError when its vocabulary is not the student's."""
    assert config.distill is not None
    teacher_tok = load_tokenizer(config.distill.teacher, config.trust_remote_code)
    n = len(tokenizer.get_vocab())
    check_same_vocabulary(tokenizer, teacher_tok, n, n)
    return teacher_tok


def distill_loss(
    config: TrainConfig, student: Any, tokenizer: Any, examples: list[Example], runtime: dist_utils.Runtime
) -> DistillLoss:
    settings = config.distill
    assert settings is not None
    teacher_tok = check_teacher_tokenizer(config, tokenizer)
    teacher = load_model(settings.teacher, runtime.param_dtype, config.trust_remote_code)
    teacher.requires_grad_(False)
    teacher.to(runtime.device).eval()
    shared = check_same_vocabulary(tokenizer, teacher_tok, _rows(student), _rows(teacher))

    cache = None
    if settings.top_k:
        directory = Path(settings.cache_dir or Path(config.output_dir) / "teacher-cache")
        if runtime.is_main:  # one process fills the cache; the others read it when it is complete
            cache = TeacherCache(directory, settings.top_k)

            def progress(done: int, total: int) -> None:
                if sys.stderr.isatty() or done == total:
                    print(
                        f"\r[distill] teacher top-{settings.top_k}: {done}/{total} examples",
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )

            with torch.autocast(
                runtime.device.type,
                runtime.autocast_dtype or torch.float32,
                enabled=runtime.autocast_dtype is not None,
            ):
                ran = cache_teacher(teacher, examples, cache, tokenizer.pad_token_id, 4, shared, progress)
            if ran:
                print(file=sys.stderr)
            print(
                f"[distill] teacher cache {directory}: {len(cache.entries)} examples ({ran} new)",
                file=sys.stderr,
                flush=True,
            )
        dist_utils.barrier(runtime)
        if not runtime.is_main:
            cache = TeacherCache(directory, settings.top_k)
        teacher = None  # the cache replaces it: free its memory for the student
    return DistillLoss(
        student,
        teacher,
        cache,
        shared,
        settings.divergence,
        settings.beta,
        settings.temperature,
        settings.alpha,
        settings.chunk_size,
    )
