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

from pacos.distill.teacher import DistillLoss, TeacherCache, cache_teacher, check_same_vocabulary
from pacos.errors import PacosError
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


def _load_teacher(config: TrainConfig, runtime: dist_utils.Runtime) -> Any:
    assert config.distill is not None
    teacher = load_model(config.distill.teacher, runtime.param_dtype, config.trust_remote_code)
    teacher.requires_grad_(False)
    return teacher.to(runtime.device).eval()


def _fill_cache(
    config: TrainConfig, cache: TeacherCache, student: Any, tokenizer: Any, examples: list[Example], runtime
) -> None:
    """Run the teacher over the examples the cache lacks (none: the teacher is never loaded)."""
    k = cache.k
    if cache.missing(examples) or cache.shared_vocab is None:
        teacher = _load_teacher(config, runtime)
        teacher_tok = load_tokenizer(config.distill.teacher, config.trust_remote_code)
        shared = check_same_vocabulary(tokenizer, teacher_tok, _rows(student), _rows(teacher))

        def progress(done: int, total: int) -> None:
            if sys.stderr.isatty() or done == total:
                print(
                    f"\r[distill] teacher top-{k}: {done}/{total} examples",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )

        with dist_utils.autocast(runtime):
            ran = cache_teacher(teacher, examples, cache, tokenizer.pad_token_id, 4, shared, progress)
        if ran:
            print(file=sys.stderr)
        del teacher  # the cache replaces it: free its memory for the student
    else:
        ran = 0
    print(
        f"[distill] teacher cache {cache.directory}: {len(cache.entries)} examples ({ran} new)",
        file=sys.stderr,
        flush=True,
    )


def distill_loss(
    config: TrainConfig, student: Any, tokenizer: Any, examples: list[Example], runtime: dist_utils.Runtime
) -> DistillLoss:
    settings = config.distill
    assert settings is not None
    if not settings.top_k:
        teacher = _load_teacher(config, runtime)
        shared = check_same_vocabulary(
            tokenizer, check_teacher_tokenizer(config, tokenizer), _rows(student), _rows(teacher)
        )
        cache = None
    else:
        teacher = None
        directory = Path(settings.cache_dir or Path(config.output_dir) / "teacher-cache")
        if runtime.is_main:  # one process fills the cache; the others read it when it is complete
            _fill_cache(
                config, TeacherCache(directory, settings.top_k), student, tokenizer, examples, runtime
            )
        dist_utils.barrier(runtime)
        cache = TeacherCache(directory, settings.top_k)
        shared = cache.shared_vocab
        if shared is None or shared > _rows(student):
            raise PacosError(
                f"teacher cache {directory}: built for {shared} ids, the student has {_rows(student)} "
                "output rows; use another distill.cache_dir"
            )
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
