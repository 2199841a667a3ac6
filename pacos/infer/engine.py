"""The pacos inference engine: batched generation with a KV cache over any transformers causal LM.

One decode loop serves `generate` (a list of prompts), `stream` (one prompt, token by token) and the
server's scheduler (requests join and leave a running batch between steps: continuous batching).

Rows share one timeline: prompts are left-padded to a common length, a row that joins a running batch
is left-padded to the batch's cache length (or the batch to the row's), and finished rows leave at once;
all-padding columns on the left are dropped. The attention mask and per-row position ids make every
row see exactly its own tokens, so an answer does not depend on what it is batched with. The cache is
a plain `DynamicCache` with full-length layers (sliding-window models get the window from the mask),
so joining is a pad and a concatenation per layer. A lone row without padding runs with no mask at all,
the fastest path for a single chat.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pacos.errors import PacosError, first_line
from pacos.infer.constrain import JsonGrammars, RowConstraint
from pacos.infer.detokenize import TextStream
from pacos.infer.prompting import chat_prompt, turn_stops
from pacos.infer.sampling import SamplingParams, TokenLogprob, choose_tokens

log = logging.getLogger("pacos.engine")


@dataclass
class Event:
    """What one step produced for one request. The last event of a request has `finish_reason` set."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", or "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Sequence:
    """One request inside the decoder. A cancelled sequence leaves at the next step without a last event."""

    prompt_ids: list[int]
    params: SamplingParams
    stream: TextStream
    on_event: Callable[[Event], None]
    generator: torch.Generator | None = None
    constraint: RowConstraint | None = None  # the JSON grammar this row must follow
    output_ids: list[int] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def emit(self, event: Event) -> None:
        """Hand an event to the request's owner; an owner that fails (a closed event loop) loses only its
        own request, not the batch it shares."""
        try:
            self.on_event(event)
        except Exception:
            log.exception("a request's event handler failed; cancelling that request")
            self.cancelled = True


def auto_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware computes it natively (Ampere+ GPUs, CPUs with AMX or AVX512-BF16)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}  # fmt: skip


def _left_pad(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x.new_zeros(shape), x], dim=dim)


class Decoder:
    """The running batch: its sequences, the backend's state for them (KV cache) and the next logits."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.seqs: list[Sequence] = []
        self.state: Any = None
        self.last_logits: torch.Tensor | None = None  # [rows, vocab] for the next choice

    def __len__(self) -> int:
        return len(self.seqs)

    @torch.inference_mode()
    def add(self, seqs: list[Sequence]) -> None:
        """Prefill new sequences together and merge them into the running batch."""
        seqs = [s for s in seqs if not self._finish_early(s)]
        if not seqs:
            return
        state, logits = self.engine.prefill([s.prompt_ids for s in seqs])
        if self.seqs:
            state = self.engine.join(self.state, state)
            logits = torch.cat([self.last_logits, logits])
        self.seqs, self.state, self.last_logits = [*self.seqs, *seqs], state, logits

    def _finish_early(self, s: Sequence) -> bool:
        if s.cancelled:
            s.finished = True
        elif s.params.max_new_tokens == 0 or len(s.prompt_ids) >= self.engine.context_length:
            s.finished = True
            s.emit(Event("", [], [], "length", len(s.prompt_ids), 0))
        return s.finished

    @torch.inference_mode()
    def step(self) -> None:
        """Choose every row's next token, report it, drop finished rows, then run the model once."""
        if not self.seqs:
            return
        seqs = self.seqs
        tokens, logprobs = choose_tokens(
            self.last_logits,
            [s.params for s in seqs],
            [s.prompt_ids + s.output_ids if s.params.repetition_penalty != 1.0 else [] for s in seqs],
            [s.generator for s in seqs],
            [s.constraint.allowed() if s.constraint else None for s in seqs],
        )
        keep = []
        for row, (s, token, logprob) in enumerate(zip(seqs, tokens, logprobs)):
            if s.cancelled:
                s.finished = True
                continue
            self._advance(s, token, logprob)
            if not s.finished:
                keep.append(row)
        if not keep:
            self.seqs, self.state, self.last_logits = [], None, None
            return
        if len(keep) < len(seqs):
            self.seqs = [seqs[row] for row in keep]
            self.state = self.engine.keep(self.state, keep)
        self.last_logits = self.engine.decode(self.state, [tokens[row] for row in keep])

    def _advance(self, s: Sequence, token: int, logprob: TokenLogprob | None) -> None:
        params, engine = s.params, self.engine
        prompt_tokens = len(s.prompt_ids)
        if token in engine.eos_ids and not params.ignore_eos:
            s.finished = True
            s.emit(Event(s.stream.flush(), [], [], "stop", prompt_tokens, len(s.output_ids)))
            return
        s.output_ids.append(token)
        if s.constraint:
            s.constraint.consume(token)
        text, stopped = s.stream.push(token)
        finish = None
        if stopped or (s.constraint and s.constraint.complete):  # complete JSON: only EOS could follow
            text += s.stream.flush() if not stopped else ""
            finish = "stop"
        elif (
            len(s.output_ids) >= params.max_new_tokens
            or prompt_tokens + len(s.output_ids) >= engine.context_length
        ):
            finish = "length"
            text += s.stream.flush()
        s.finished = finish is not None
        s.emit(Event(text, [token], [logprob] if logprob else [], finish, prompt_tokens, len(s.output_ids)))


@dataclass
class KVBatch:
    """The torch backend's state: a KV cache whose rows share one timeline, and the padding mask."""

    cache: Any
    mask: torch.Tensor  # [rows, cache length], 1 where a real token sits


class Engine:
    """A loaded model with its tokenizer and prompt format, ready to generate."""

    def __init__(self, model: Any, tokenizer: Any, template: str, name: str = "model") -> None:
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

    def compile(self) -> float:
        """Compile decode steps with torch.compile (inductor): the dozens of small ops around each matmul
        become a few fused kernels, which on a CPU is what is left once the weights are int8. Compiles
        now, on short prompts, both the lone-row and the padded-batch graph; returns the seconds spent
        (about a minute on 2 cores the first time, seconds once inductor's on-disk cache has them).
        """
        start = time.perf_counter()
        self.compiled_step = torch.compile(self.model.forward, dynamic=True)
        warm = SamplingParams(max_new_tokens=3, ignore_eos=True)
        self.generate([[self.pad_id + 1] * 3], warm)
        self.generate([[self.pad_id + 1] * 3, [self.pad_id + 1] * 5], warm)
        return time.perf_counter() - start

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
    ) -> Engine:
        """Anything `pacos train` accepts or writes: embedded name, .gguf, directory, hub id, adapter.

        quantize="int8" stores Linear weights as int8 (weight-only): about 2x faster decoding on CPU.
        """
        from pacos.infer.loading import load_for_inference
        from pacos.infer.quantize import QUANTIZATIONS, quantize_int8

        target = auto_device() if device == "auto" else torch.device(device)
        if dtype != "auto" and dtype not in DTYPES:
            raise PacosError(f"dtype '{dtype}': choose auto, {', '.join(DTYPES)}")
        if quantize not in QUANTIZATIONS:
            raise PacosError(f"quantize '{quantize}': choose {', '.join(QUANTIZATIONS)}")
        torch_dtype = auto_dtype(target) if dtype == "auto" else DTYPES[dtype]
        model, tokenizer, chosen = load_for_inference(spec, torch_dtype, target, template, trust_remote_code)
        if quantize == "int8":
            quantize_int8(model, torch.float16 if torch_dtype == torch.float16 else torch.bfloat16)
        engine = cls(model, tokenizer, chosen, name=spec)
        if compile:
            engine.compile()
        return engine

    # -- prompts -------------------------------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        """A raw prompt, with the tokenizer's BOS as in training."""
        return self.tokenizer(prompt, add_special_tokens=True).input_ids

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        prompt = chat_prompt(messages, self.template, self.tokenizer)
        # A chat template writes its own BOS; a plain template gets the tokenizer's, as in training.
        return self.tokenizer(prompt, add_special_tokens=self.template != "chat").input_ids

    def chat_stops(self) -> list[str]:
        return turn_stops(self.template)

    # -- the model: a batch's life is prefill, then decode steps; rows join and leave in between ------
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
            try:
                return self.compiled_step(**kwargs).logits.float()
            except Exception as e:  # a model or platform torch.compile cannot handle: carry on eagerly
                log.warning("torch.compile failed (%s); decoding without it", first_line(e))
                self.compiled_step = None
        return self.model(**kwargs, logits_to_keep=logits_to_keep).logits.float()

    def prefill(self, prompts: list[list[int]]) -> tuple[KVBatch, torch.Tensor]:
        """Run left-padded prompts; returns their state and next-token logits [rows, vocab]."""
        from transformers import DynamicCache

        length = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, length - len(prompt) :] = torch.tensor(prompt)
            mask[row, length - len(prompt) :] = 1
        cache = DynamicCache()  # no config: full-length layers for every layer type, so rows can be joined
        logits = self.forward(ids, mask, cache, logits_to_keep=1)
        return KVBatch(cache, mask), logits[:, -1]

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

    def keep(self, state: KVBatch, rows: list[int]) -> KVBatch:
        """Only these rows; columns that are padding in every remaining row go."""
        index = torch.tensor(rows)
        mask = state.mask[index]
        start = int(mask.any(0).int().argmax())
        state.mask = mask[:, start:]
        index = index.to(self.device)
        for layer in state.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[..., start:, :]
            layer.values = layer.values.index_select(0, index)[..., start:, :]
        return state

    def logits_width(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)  # int8 heads have no .weight

    @property
    def json_grammars(self) -> JsonGrammars:
        if getattr(self, "_json_grammars", None) is None:
            self._json_grammars = JsonGrammars(self.tokenizer, self.logits_width(), sorted(self.eos_ids))
        return self._json_grammars  # type: ignore[return-value]

    def new_sequence(
        self, prompt_ids: list[int], params: SamplingParams, on_event: Callable[[Event], None]
    ) -> Sequence:
        constraint = self.json_grammars.constraint(params.json_schema) if params.json_schema else None
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(
                params.seed if params.seed is not None else secrets.randbits(63)
            )  # global RNG untouched
        return Sequence(
            list(prompt_ids), params, TextStream(self.tokenizer, params.stop), on_event, generator, constraint
        )

    # -- generation ----------------------------------------------------------------------------------------
    def _ids(self, prompt: str | list[int]) -> list[int]:
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise PacosError("prompt is empty")
        return ids

    def generate(
        self,
        prompts: list[str] | list[list[int]],
        params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Complete every prompt (text, or token ids), up to `max_batch_size` at a time."""
        params = params or SamplingParams()
        each = params if isinstance(params, list) else [params] * len(prompts)
        results: list[Completion | None] = [None] * len(prompts)

        def collect(i: int, ids: list[int]) -> Callable[[Event], None]:
            parts: list[Event] = []

            def on_event(event: Event) -> None:
                parts.append(event)
                if event.finish_reason:
                    results[i] = Completion(
                        "".join(p.text for p in parts),
                        [t for p in parts for t in p.token_ids],
                        event.finish_reason,
                        event.prompt_tokens,
                        event.completion_tokens,
                        [lp for p in parts for lp in p.logprobs],
                    )

            return on_event

        waiting = [
            self.new_sequence(ids, p, collect(i, ids))
            for i, (ids, p) in enumerate(zip([self._ids(p) for p in prompts], each))
        ]
        decoder = Decoder(self)
        while waiting or len(decoder):
            room = self.max_batch_size - len(decoder)
            if waiting and room > 0:
                decoder.add(waiting[:room])
                waiting = waiting[room:]
            decoder.step()
        return results  # type: ignore[return-value]

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None) -> Iterator[Event]:
        """Events for one prompt as tokens arrive; closing the iterator stops generation."""
        events: list[Event] = []
        decoder = Decoder(self)
        decoder.add([self.new_sequence(self._ids(prompt), params or SamplingParams(), events.append)])
        while True:
            while events:
                event = events.pop(0)
                yield event
                if event.finish_reason:
                    return
            decoder.step()


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
