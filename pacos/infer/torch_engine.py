"""The torch backend: batched generation with a KV cache over any transformers causal LM.

Where the architecture allows (pacos.infer.ragged), a step is one forward over every row's new tokens,
flattened without padding, over a preallocated cache of one slot per row. Elsewhere rows share one
timeline: each prompt is prefilled alone (no padding), a row that joins a running batch is left-padded
to the batch's cache length (or the batch to the row's), and finished rows leave at once; all-padding
columns on the left are dropped. The attention mask and per-row position ids make every row see exactly
its own tokens, so an answer does not depend on what it is batched with. That cache is a plain
`DynamicCache` with full-length layers (sliding-window models get the window from the mask), so joining
is a pad and a concatenation per layer. A lone row without padding runs with no mask at all.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from pacos.device import DTYPES, auto_device, auto_dtype
from pacos.errors import PacosError, first_line
from pacos.infer.constrain import JsonGrammars
from pacos.infer.engine import Engine
from pacos.infer.loading import load_for_inference
from pacos.infer.quantize import QUANTIZATIONS, decoding_weights, quantize_model
from pacos.infer.ragged import ATTENTION, NO_MASK, RaggedBatch, RaggedStep, SlotKV, register, supports_ragged
from pacos.infer.sampling import SamplingParams

log = logging.getLogger("pacos.engine")


def _left_pad(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x.new_zeros(shape), x], dim=dim)


@dataclass
class KVBatch:
    """The torch backend's state: a KV cache whose rows share one timeline, and the padding mask."""

    cache: Any
    mask: torch.Tensor  # [rows, cache length], 1 where a real token sits


class TorchEngine(Engine):
    """A loaded model with its tokenizer and prompt format, ready to generate."""

    def __init__(
        self, model: Any, tokenizer: Any, template: str, name: str = "model", ragged: bool = True
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.name = name
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.context_length = int(getattr(config, "max_position_embeddings", None) or 2048)
        self.eos_ids = eos_token_ids(tokenizer, model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.max_batch_size = 8
        self.compiled_step: Any = None  # torch.compile'd forward for decode steps, when asked for
        self._json_grammars: JsonGrammars | None = None
        # One forward per step over every row's new tokens (pacos.infer.ragged) where the architecture
        # is known to allow it; the padded DynamicCache path below otherwise.
        self.ragged = False
        self._spare_kv: SlotKV | None = None
        if ragged and supports_ragged(model):
            register()
            self._set_attention(ATTENTION)
            self.ragged = True

    def _set_attention(self, name: str) -> None:
        config = self.model.config
        for c in {id(c): c for c in (config, config.get_text_config())}.values():
            c._attn_implementation = name

    def compile(self) -> float:
        """Compile decode steps with torch.compile (inductor): the dozens of small ops between the matmuls
        (norms, rotary, residuals, activations, the KV cache writes) become a few fused kernels, and
        fbgemm's matmuls run as opaque calls inside the graph (pacos.infer.quantize). Ragged batches
        compile their steps that only decode (prompt chunks and prompt-lookup guesses run eagerly: their
        shapes vary every step); other architectures compile the padded path's one-token steps.
        Compiles now every shape class that batches up to `max_batch_size` rows meet (one row, several,
        and 16+ where a bf16 copy of the weights takes over), so that no request waits for a compile;
        returns the seconds spent: ~90 s for Gemma 3 270M on 2 cores without the 16+-row graph, more
        with it, in every process (inductor's disk cache did not shorten it here)."""
        start = time.perf_counter()
        self.compiled_step = torch.compile(self.model.forward, dynamic=True)
        warm = SamplingParams(max_new_tokens=3, ignore_eos=True)
        sizes = [1, 2]  # torch.compile specialises size 1
        bf16_rows = {getattr(m, "bf16_rows", None) for m in self.model.modules()} - {None}
        sizes += sorted(n for n in bf16_rows if n <= self.max_batch_size)
        for rows in sizes:
            self.generate([[self.pad_id + 1] * (3 + i) for i in range(rows)], warm)
        return time.perf_counter() - start

    def _compiled(self, **kwargs: Any) -> Any:
        """The compiled forward, or None where it failed (then eagerly from now on)."""
        try:
            return self.compiled_step(**kwargs)
        except Exception as e:  # a model or platform torch.compile cannot handle: carry on eagerly
            log.warning("torch.compile failed (%s); decoding without it", first_line(e))
            self.compiled_step = None
            return None

    @classmethod
    def load(
        cls,
        spec: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        quantize: str = "none",
        compile: bool = False,
        template: str | None = None,
        trust_remote_code: bool = False,
    ) -> TorchEngine:
        """Anything `pacos train` accepts or writes: embedded name, .gguf, directory, hub id, adapter.

        quantize="fp16" or "int8": reduced-precision Linear weights (pacos.infer.quantize), several times
        faster decoding on a CPU at batch 8 and more; "auto": fp16 on x86 CPUs (with dtype "auto": fp32 math).
        """
        target = auto_device() if device == "auto" else torch.device(device)
        if dtype != "auto" and dtype not in DTYPES:
            raise PacosError(f"dtype '{dtype}': choose auto, {', '.join(DTYPES)}")
        if quantize != "auto" and quantize not in QUANTIZATIONS:
            raise PacosError(f"quantize '{quantize}': choose auto, {', '.join(QUANTIZATIONS)}")
        dtype, quantize = decoding_weights(dtype, quantize, str(target))
        torch_dtype = auto_dtype(target) if dtype == "auto" else DTYPES[dtype]
        model, tokenizer, chosen = load_for_inference(spec, torch_dtype, target, template, trust_remote_code)
        quantize_model(model, quantize, torch.float16 if torch_dtype == torch.float16 else torch.bfloat16)
        engine = cls(model, tokenizer, chosen, name=spec)
        if compile:
            engine.compile()
        return engine

    # -- the backend ----------------------------------------------------------------------------------
    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, cache: Any, logits_to_keep: int = 0
    ) -> torch.Tensor:
        """Logits [rows, kept positions, vocab] in float32; fills `cache`."""
        kwargs: dict[str, Any] = {}
        if not bool(mask.all()):  # padding: say where each row's tokens are; else the plain causal path
            positions = (mask.cumsum(-1)[:, -ids.shape[1] :] - 1).clamp(min=0)
            kwargs = {"attention_mask": mask.to(self.device), "position_ids": positions.to(self.device)}
        kwargs.update(input_ids=ids.to(self.device), past_key_values=cache, use_cache=True)
        if self.compiled_step is not None and ids.shape[1] == 1:  # prefill stays eager: lengths vary
            out = self._compiled(**kwargs)
            if out is not None:
                return out.logits.float()
        return self.model(**kwargs, logits_to_keep=logits_to_keep).logits.float()

    def prefill(
        self, prompt: list[int], state: KVBatch | None = None, every: bool = False
    ) -> tuple[KVBatch, torch.Tensor]:
        """Run one row's prompt (or its next chunk), no padding; returns its state and logits [1, vocab]
        (with `every`, at every position: [len(prompt), vocab])."""
        from transformers import DynamicCache

        if state is None:  # no config: full-length layers for every layer type, so rows can be joined
            state = KVBatch(DynamicCache(), torch.zeros((1, 0), dtype=torch.long))
        state.mask = torch.cat([state.mask, state.mask.new_ones(1, len(prompt))], dim=1)
        logits = self.forward(
            torch.tensor([prompt]), state.mask, state.cache, logits_to_keep=0 if every else 1
        )
        return state, logits[0] if every else logits[:, -1]

    def decode(self, state: KVBatch, tokens: list[int]) -> torch.Tensor:
        state.mask = torch.cat([state.mask, state.mask.new_ones(len(tokens), 1)], dim=1)
        return self.forward(torch.tensor(tokens)[:, None], state.mask, state.cache)[:, -1]

    def join(self, a: KVBatch, b: KVBatch) -> KVBatch:
        """One batch from two: the shorter timeline is left-padded to the longer one."""
        a_len, b_len = a.mask.shape[1], b.mask.shape[1]
        length = max(a_len, b_len)
        for mine, theirs in zip(a.cache.layers, b.cache.layers, strict=True):
            for name in ("keys", "values"):
                x, y = getattr(mine, name), getattr(theirs, name)
                if x.shape[-2] != a_len or y.shape[-2] != b_len:
                    raise PacosError(
                        "this model's KV cache layout cannot be batched; use one request at a time"
                    )
                setattr(
                    mine,
                    name,
                    torch.cat([_left_pad(x, length - a_len, -2), _left_pad(y, length - b_len, -2)]),
                )
        a.mask = torch.cat([_left_pad(a.mask, length - a_len, 1), _left_pad(b.mask, length - b_len, 1)])
        return a

    def keep(self, state: Any, rows: list[int]) -> Any:
        """Only these rows; columns that are padding in every remaining row go."""
        if isinstance(state, RaggedBatch):
            state.keep(rows)
            return state
        if not rows:
            return None
        index = torch.tensor(rows)
        mask = state.mask[index]
        start = int(mask.any(0).int().argmax())
        state.mask = mask[:, start:]
        index = index.to(self.device)
        for layer in state.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[..., start:, :]
            layer.values = layer.values.index_select(0, index)[..., start:, :]
        return state

    # -- ragged batches: one forward per step (pacos.infer.ragged) -------------------------------------
    @property
    def takes_drafts(self) -> bool:  # type: ignore[override]
        return self.ragged

    def step(
        self, state: Any, tokens: list[int], chunks: list[Any], drafts: list[list[int]] | None = None
    ) -> tuple[Any, torch.Tensor | None]:
        if not self.ragged:
            return super().step(state, tokens, chunks, drafts)
        if state is None:
            kv, self._spare_kv = self._spare_kv, None
            state = RaggedBatch(kv or SlotKV(0, 256, self.context_length))
        new = [job for job in chunks if job.state is None]
        # Slots for the rows there are, not for max_batch_size: one long chat must not reserve its
        # length for 32 rows.
        state.kv.ensure(len(state.lengths) + len(state.prefilling) + len(new), state.kv.capacity)
        for job in new:
            job.state = state.new_row()
        rows = len(tokens)
        ids, positions, slots, plan_chunks = list(tokens), list(state.lengths), list(range(rows)), []
        wanted = list(range(rows))  # the positions whose logits are needed: rows and finished prompts
        scored: list[tuple[Any, int]] = []  # chunks scored at every position (echo), after `wanted`
        for job in chunks:
            row, n = job.state, len(job.chunk)
            plan_chunks.append((row.slot, row.length, n, len(ids)))
            if job.seq.scores_prompt:
                scored.append((job, len(ids)))
            ids += job.chunk
            positions += range(row.length, row.length + n)
            slots += [row.slot] * n
            if job.last:
                wanted.append(len(ids) - 1)
        # A row's guessed tokens (prompt lookup) run as a chunk on its slot, after its token: every
        # position scored, the row's own token seen by the causal mask like any earlier position.
        guessed = []
        for row, draft in enumerate(drafts or []):
            if draft:
                start = state.lengths[row] + 1
                plan_chunks.append((row, start, len(draft), len(ids)))
                guessed += range(len(ids), len(ids) + len(draft))
                ids += draft
                positions += range(start, start + len(draft))
                slots += [row] * len(draft)
        extra = [at + i for job, at in scored for i in range(len(job.chunk))]
        state.kv.ensure(state.kv.slots, max(positions) + 1)
        position_ids = torch.tensor(positions, device=self.device)
        plan = RaggedStep(
            batch=state,
            decode_rows=rows,
            decode_positions=position_ids[:rows],
            decode_length=max(state.lengths, default=0) + 1,
            write_slots=torch.tensor(slots, device=self.device),
            write_positions=position_ids,
            chunks=plan_chunks,
        )
        inputs = dict(
            input_ids=torch.tensor([ids], device=self.device),
            position_ids=position_ids[None],
            attention_mask=NO_MASK,
            use_cache=False,
            logits_to_keep=torch.tensor(wanted + guessed + extra, device=self.device),
            pacos_step=plan,
        )
        out = None
        if self.compiled_step is not None and not plan_chunks:  # decoding rows only
            out = self._compiled(**inputs)
        if out is None:
            out = self.model(**inputs)
        logits = out.logits[0].float()
        at = len(wanted) + len(guessed)
        for job, _ in scored:
            job.logits = logits[at : at + len(job.chunk)]
            at += len(job.chunk)
        logits = logits[: len(wanted) + len(guessed)]
        state.lengths = [n + 1 + len(d) for n, d in zip(state.lengths, drafts or [[]] * rows, strict=True)]
        for job in chunks:
            job.state.length += len(job.chunk)
        for job in chunks:  # after every length is known: a join may swap two prefilling rows' slots
            if job.last:
                state.join(job.state)
        return state, logits

    def drop(self, state: Any, row: Any) -> None:
        if isinstance(state, RaggedBatch):
            state.drop(row)

    def rewind(self, state: Any, row: int, n: int) -> None:
        """The row's cache keeps its entries past the new length: the next steps overwrite them, and
        no mask lets a row see positions past its own length."""
        state.lengths[row] -= n

    def release(self, state: Any) -> None:
        """Keep a finished batch's cache buffers for the next one (up to 2 GiB), as servers preallocate."""
        if isinstance(state, RaggedBatch):
            size = sum(t.numel() * t.element_size() for t in state.kv.keys.values()) * 2
            self._spare_kv = state.kv if size <= 2 << 30 else None

    def logits_width(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)  # int8 heads have no .weight


def eos_token_ids(tokenizer: Any, model: Any) -> set[int]:
    """Tokens that end an answer: the tokenizer's EOS and the generation config's (<end_of_turn>...)."""
    ids = set()
    candidates = [
        tokenizer.eos_token_id,
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ]
    for candidate in candidates:
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, list | tuple):
            ids.update(int(c) for c in candidate)
    return ids
