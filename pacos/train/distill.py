"""The teacher side of distillation: the vocabulary check, the cached top-k teacher, and the loss module
the training loop calls in place of `CausalLMLoss`.

A teacher and a student must share a tokenizer: the loss compares distributions id by id, so a teacher
with another vocabulary would be fed ids that mean other tokens and give a silently wrong signal. Models
of one family often pad their embedding matrices to different sizes (Qwen2.5 3B vs 72B); their logits are
compared over the ids both have, which the tokenizer's ids all fall within.

On a CPU the teacher's forward pass costs as much as the student's. `cache_teacher` runs it once over
the training examples and stores its top-k logits per response token (compressed .npz shards, appended,
so a killed run resumes where it was); `DistillLoss` then reads them every epoch instead.
`distill_loss` builds the loss for a run: it loads the teacher, checks it against the student's
vocabulary and, with `top_k`, fills the teacher cache before the first step. Sequence-level distillation
(the teacher writes the answers, the student learns them as labels) needs no code of its own:
`pacos generate --teacher T` to write the data, then `pacos train` on it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pacos.errors import PacosError
from pacos.models import load_model, load_tokenizer
from pacos.train import distributed as dist_utils
from pacos.train.config import TrainConfig
from pacos.train.data import IGNORE, Example, collate
from pacos.train.divergences import TopK, divergence_sum, top_k
from pacos.train.loss import decoder_hidden

_SHARD_EXAMPLES = 64  # examples per cache shard: the unit a killed prefill loses at most


def check_same_vocabulary(student_tok: Any, teacher_tok: Any, student_rows: int, teacher_rows: int) -> int:
    """The number of leading ids whose logits are compared; PacosError when the tokenizers differ."""
    s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s_vocab != t_vocab:
        s_by_id = {i: t for t, i in s_vocab.items()}
        t_by_id = {i: t for t, i in t_vocab.items()}
        differ = sorted(i for i in set(s_by_id) | set(t_by_id) if s_by_id.get(i) != t_by_id.get(i))
        i = differ[0]
        total = max(len(s_vocab), len(t_vocab))
        raise PacosError(
            f"the teacher's tokenizer differs from the student's ({len(differ)} of {total} ids, e.g. id {i}: "
            f"{s_by_id.get(i)!r} vs {t_by_id.get(i)!r}); token-level distillation needs one vocabulary "
            "(for another tokenizer, distil at sequence level: pacos generate + pacos train)"
        )
    shared = min(student_rows, teacher_rows)
    if shared < len(s_vocab):
        raise PacosError(
            f"the models' output layers have {student_rows} and {teacher_rows} rows, fewer than the "
            f"tokenizer's {len(s_vocab)} ids"
        )
    return shared


def _head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden)
    config = getattr(model.config, "get_text_config", lambda: model.config)()
    softcap = getattr(config, "final_logit_softcapping", None)
    return softcap * torch.tanh(logits / softcap) if softcap else logits


def _hidden(model: nn.Module, input_ids, position_ids, attention_mask) -> torch.Tensor:
    return decoder_hidden(model, input_ids, position_ids, attention_mask)


def example_key(input_ids: list[int] | torch.Tensor) -> str:
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:24]


def _spans(input_ids, position_ids, attention_mask) -> list[tuple[int, int, int]]:
    """(row, start, end) of every example in a batch as `collate` builds it (packed or padded)."""
    spans = []
    for row in range(input_ids.shape[0]):
        if attention_mask is not None:
            spans.append((row, 0, int(attention_mask[row].sum())))
            continue
        starts = [*(position_ids[row] == 0).nonzero().flatten().tolist(), input_ids.shape[1]]
        spans += [(row, a, b) for a, b in itertools.pairwise(starts)]
    return spans


class TeacherCache:
    """Top-k teacher logits per example (keyed by its token ids), in `directory`/shard-*.npz."""

    def __init__(self, directory: str | Path, k: int):
        self.directory, self.k = Path(directory), k
        self.entries: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.shared_vocab: int | None = None  # the ids compared, known once the teacher has run
        meta = self.directory / "cache.json"
        if meta.exists():
            saved = json.loads(meta.read_text())
            self.shared_vocab = saved.get("shared_vocab")
            if saved.get("k") != k:
                raise PacosError(
                    f"{meta}: cached with k={saved.get('k')}, asked for k={k}; use another cache_dir"
                )
        for shard in sorted(self.directory.glob("shard-*.npz")):
            with np.load(shard) as data:
                for key in {name.rsplit(".", 1)[0] for name in data.files}:
                    self.entries[key] = (data[f"{key}.ids"], data[f"{key}.logits"])

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def missing(self, examples: list[Example]) -> int:
        return sum(example_key(e.input_ids) not in self.entries for e in examples)

    def write_meta(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = {"k": self.k, **({"shared_vocab": self.shared_vocab} if self.shared_vocab else {})}
        tmp = self.directory / "cache.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.directory / "cache.json")

    def write_shard(self, rows: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.write_meta()
        shard = self.directory / f"shard-{len(list(self.directory.glob('shard-*.npz'))):05d}.npz"
        arrays = {
            f"{key}.{name}": a
            for key, (ids, logits) in rows.items()
            for name, a in (("ids", ids), ("logits", logits))
        }
        tmp = shard.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, shard)  # a shard is there whole or not at all
        self.entries.update(rows)

    def lookup(self, input_ids, position_ids, attention_mask, targets) -> TopK:
        """The cached top-k of every labelled position of a batch, in `targets != IGNORE` order."""
        ids, logits = [], []
        for row, start, end in _spans(input_ids, position_ids, attention_mask):
            if not (targets[row, start:end] != IGNORE).any():
                continue
            key = example_key(input_ids[row, start:end])
            if key not in self.entries:
                raise PacosError(
                    f"teacher cache {self.directory}: no entry for a training example; rebuild it"
                )
            ids.append(torch.from_numpy(self.entries[key][0].astype(np.int64)))
            logits.append(torch.from_numpy(self.entries[key][1].astype(np.float32)))
        return TopK(ids=torch.cat(ids).to(input_ids.device), logits=torch.cat(logits).to(input_ids.device))


@torch.no_grad()
def cache_teacher(
    teacher: nn.Module,
    examples: list[Example],
    cache: TeacherCache,
    pad_id: int,
    batch_size: int = 4,
    shared_vocab: int | None = None,
    progress: Any = None,
) -> int:
    """Run the teacher over the examples not yet cached; returns how many it ran. Resumable by shard."""
    todo, seen = [], set()
    for e in examples:
        key = example_key(e.input_ids)
        if key not in cache and key not in seen:
            todo.append(e)
            seen.add(key)
    teacher.eval()
    device = next(teacher.parameters()).device  # the batches are built on the CPU
    cache.shared_vocab = shared_vocab
    cache.write_meta()
    pending: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        batch = collate(chunk, pad_id, packing=True)
        input_ids, position_ids = batch.input_ids.to(device), batch.position_ids.to(device)
        hidden = _hidden(teacher, input_ids, position_ids, None)[0]
        for e, (_, start, end) in zip(chunk, _spans(batch.input_ids, batch.position_ids, None)):
            labelled = torch.tensor(e.targets, device=device) != IGNORE
            logits = _head_logits(teacher, hidden[start:end][labelled]).float()
            if shared_vocab is not None:
                logits = logits[:, :shared_vocab]
            best = top_k(logits, cache.k)
            pending[example_key(e.input_ids)] = (
                best.ids.cpu().numpy().astype(np.int32),
                best.logits.cpu().numpy().astype(np.float16),
            )
        if len(pending) >= _SHARD_EXAMPLES or i + batch_size >= len(todo):
            cache.write_shard(pending)
            pending = {}
        if progress is not None:
            progress(min(i + batch_size, len(todo)), len(todo))
    return len(todo)


class DistillLoss(nn.Module):
    """Like `CausalLMLoss`: forward returns (summed loss over response tokens, labelled-token count).

    Training: (1 - alpha) * divergence(teacher, student) + alpha * cross-entropy on the labels, per
    response token, computed in chunks of positions with the student's logits recomputed in backward (a
    [chunk, vocab] slab at a time, not [tokens, vocab]). Validation (eval mode): plain cross-entropy, so
    validation losses stay comparable with `pacos train`'s.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        cache: TeacherCache | None,
        shared_vocab: int,
        divergence: str = "forward_kl",
        beta: float = 0.5,
        temperature: float = 1.0,
        alpha: float = 0.0,
        chunk_size: int = 128,
    ):
        super().__init__()
        self.model = student
        # Kept out of the module tree: not trained, not checkpointed, not wrapped by DDP/FSDP.
        object.__setattr__(self, "teacher", teacher)
        self.cache, self.shared_vocab = cache, shared_vocab
        self.divergence, self.beta, self.temperature, self.alpha = divergence, beta, temperature, alpha
        self.chunk_size = chunk_size
        self.own_answers = False  # set by on-policy steps: the labels are the student's samples

    def _chunk(
        self, hidden: torch.Tensor, teacher: torch.Tensor | TopK, targets: torch.Tensor
    ) -> torch.Tensor:
        logits = _head_logits(self.model, hidden).float()
        alpha = 0.0 if self.own_answers else self.alpha
        loss = (1.0 - alpha) * divergence_sum(
            logits[:, : self.shared_vocab], teacher, self.divergence, self.beta, self.temperature
        )
        if alpha:
            loss = loss + alpha * nn.functional.cross_entropy(logits, targets, reduction="sum")
        return loss

    def forward(self, input_ids, position_ids, attention_mask, targets, unlike=None):
        labelled = targets != IGNORE
        hidden = _hidden(self.model, input_ids, position_ids, attention_mask)[labelled]
        y = targets[labelled]
        if not self.training:
            logits = _head_logits(self.model, hidden).float()
            return nn.functional.cross_entropy(logits, y, reduction="sum"), labelled.sum()
        if self.cache is not None:
            teacher: Any = self.cache.lookup(input_ids, position_ids, attention_mask, targets)
        else:
            with torch.no_grad():
                teacher_hidden = _hidden(self.teacher, input_ids, position_ids, attention_mask)[labelled]
        total = hidden.new_zeros((), dtype=torch.float32)
        for a in range(0, len(y), self.chunk_size):
            b = a + self.chunk_size
            if self.cache is not None:
                part: Any = TopK(teacher.ids[a:b], teacher.logits[a:b])
            else:
                with torch.no_grad():
                    part = _head_logits(self.teacher, teacher_hidden[a:b]).float()[:, : self.shared_vocab]
            total = total + checkpoint(self._chunk, hidden[a:b], part, y[a:b], use_reentrant=False)
        return total, labelled.sum()


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
        student=student,
        teacher=teacher,
        cache=cache,
        shared_vocab=shared,
        divergence=settings.divergence,
        beta=settings.beta,
        temperature=settings.temperature,
        alpha=settings.alpha,
        chunk_size=settings.chunk_size,
    )
