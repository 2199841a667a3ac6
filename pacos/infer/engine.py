"""The engine interface: batched generation over a backend that computes logits (pacos.infer.torch_engine,
pacos.infer.llamacpp).

One decode loop serves `generate` (a list of prompts), `stream` (one prompt, token by token) and the
server's scheduler (requests join and leave a running batch between steps: continuous batching). The
backend decides how rows share its state (the torch backend: one left-padded KV cache; llama.cpp: one
row at a time).
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from pacos.errors import PacosError
from pacos.infer.constrain import JsonGrammars, RowConstraint
from pacos.infer.detokenize import TextStream
from pacos.infer.prompting import chat_prompt, turn_stops
from pacos.infer.sampling import SamplingParams, TokenLogprob, choose_tokens, token_logprobs

log = logging.getLogger("pacos.engine")

# Prompt tokens scored per step, over all the sequences that want their prompts' log-probs: each needs a
# row of logits (262K floats for Gemma 3, 1 MiB), so long prompts, and many at once, go in pieces.
SCORED_PER_STEP = 256


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
    # On a request's first event when it asked for them (SamplingParams.prompt_logprobs): one per prompt
    # token, None for the first, which nothing predicts.
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None


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
    prompt_logprobs: list[TokenLogprob | None] | None = None  # filled chunk by chunk during prefill

    @property
    def scores_prompt(self) -> bool:
        return self.params.prompt_logprobs is not None

    def cancel(self) -> None:
        self.cancelled = True

    def emit(self, event: Event) -> None:
        """Hand an event to the request's owner; an owner that fails (a closed event loop) loses only its
        own request, not the batch it shares. The first event carries the prompt's log-probs, once all of
        them are known (never a partial list: a failed prefill reports none)."""
        lps = self.prompt_logprobs
        if lps is not None and len(lps) == len(self.prompt_ids):
            event.prompt_logprobs, self.prompt_logprobs = lps, None
        try:
            self.on_event(event)
        except Exception:
            log.exception("a request's event handler failed; cancelling that request")
            self.cancelled = True


@dataclass
class _Prefill:
    """A sequence whose prompt is being run, chunk by chunk, before it joins the running batch."""

    seq: Sequence
    state: Any = None  # the backend's handle on this row, once its first chunk has run
    done: int = 0  # prompt tokens run so far
    chunk: list[int] = field(default_factory=list)  # the tokens this step runs
    # The backend's logits at every position of `chunk` [len(chunk), vocab], when the sequence wants its
    # prompt's log-probs (the backend sets them in `step`).
    logits: torch.Tensor | None = None

    @property
    def last(self) -> bool:
        """This step's chunk ends the prompt: the row joins the batch after it."""
        return self.done + len(self.chunk) == len(self.seq.prompt_ids)


class Decoder:
    """The running batch: its sequences, the backend's state for them (KV cache) and the next logits.

    A step chooses every running row's next token from the last logits, then runs the model once on
    those tokens and on the next prompt tokens of new sequences (no padding: each prompt is its own
    chunk), which join the batch when their prompt is done. With `prefill_chunk` set and rows already
    streaming, a step runs at most that many prompt tokens (vLLM's chunked prefill), so those rows keep
    getting tokens while long prompts are admitted; with no row streaming, every waiting prompt runs.
    """

    def __init__(self, engine: Engine, prefill_chunk: int = 0) -> None:
        self.engine = engine
        self.prefill_chunk = prefill_chunk
        self.seqs: list[Sequence] = []
        self.prefilling: deque[_Prefill] = deque()
        self.state: Any = None
        self.last_logits: torch.Tensor | None = None  # [rows, vocab] for the next choice

    def __len__(self) -> int:
        """Rows decoding and rows being prefilled: what counts against the batch size."""
        return len(self.seqs) + len(self.prefilling)

    def add(self, seqs: list[Sequence]) -> None:
        """Queue new sequences; the next steps prefill them and merge them into the running batch."""
        self.prefilling.extend(_Prefill(s) for s in seqs if not self._finish_early(s))

    def _finish_early(self, s: Sequence) -> bool:
        nothing_to_run = s.params.max_new_tokens == 0 and not s.scores_prompt
        if s.cancelled:
            s.finished = True
        elif nothing_to_run or len(s.prompt_ids) >= self.engine.context_length:
            s.finished = True
            s.emit(
                Event(
                    text="",
                    token_ids=[],
                    logprobs=[],
                    finish_reason="length",
                    prompt_tokens=len(s.prompt_ids),
                    completion_tokens=0,
                )
            )
        return s.finished

    @torch.inference_mode()
    def step(self) -> None:
        """Choose every row's next token and report it, drop finished rows, then run the model once on
        the chosen tokens and the next prompt chunks."""
        tokens = self._choose() if self.seqs else []
        chunks = self._chunks()
        if tokens or chunks:
            self.state, self.last_logits = self.engine.step(self.state, tokens, chunks)
        for job in chunks:
            if job.logits is not None:
                self._score_prompt(job)
            if job.last:
                self.prefilling.remove(job)
                self.seqs.append(job.seq)
            job.done += len(job.chunk)
            job.chunk = []
        self._finish_scored()
        if not self.seqs and not self.prefilling and self.state is not None:
            self.engine.release(self.state)
            self.state, self.last_logits = None, None

    def _chunks(self) -> list[_Prefill]:
        """The prompt tokens this step runs: all of them when no row is streaming, else `prefill_chunk`;
        of prompts being scored, at most SCORED_PER_STEP (the first such prompt always gets some)."""
        budget = self.prefill_chunk if self.prefill_chunk and self.seqs else None
        scoring = SCORED_PER_STEP
        chunks = []
        for job in list(self.prefilling):
            if budget is not None and budget <= 0:
                break
            if job.seq.cancelled:
                job.seq.finished = True
                self.prefilling.remove(job)
                if job.state is not None:
                    self.engine.drop(self.state, job.state)
                continue
            prompt = job.seq.prompt_ids
            end = len(prompt) if budget is None else min(len(prompt), job.done + budget)
            if job.seq.scores_prompt:
                if scoring <= 0:
                    continue  # waits for a later step
                end = min(end, job.done + scoring)
                scoring -= end - job.done
            job.chunk = prompt[job.done : end]
            if budget is not None:
                budget -= end - job.done
            chunks.append(job)
        return chunks

    def _score_prompt(self, job: _Prefill) -> None:
        """The log-probs of the prompt tokens this chunk's positions predict: position i predicts token
        i + 1; the prompt's last position predicts the answer's first token, which sampling scores."""
        seq, logits = job.seq, job.logits
        job.logits = None
        targets = seq.prompt_ids[job.done + 1 : job.done + len(job.chunk) + 1]
        if seq.prompt_logprobs is None:
            seq.prompt_logprobs = [None]
        if targets:
            k = seq.params.prompt_logprobs or 0
            seq.prompt_logprobs += token_logprobs(logits[: len(targets)], targets, [k] * len(targets))

    def _finish_scored(self) -> None:
        """Rows that only wanted their prompt scored (max_new_tokens 0) finish as soon as it is run."""
        done = [row for row, s in enumerate(self.seqs) if s.params.max_new_tokens == 0]
        if not done:
            return
        for row in done:
            s = self.seqs[row]
            s.finished = True
            s.emit(Event("", [], [], "length", prompt_tokens=len(s.prompt_ids), completion_tokens=0))
        keep = [row for row in range(len(self.seqs)) if row not in done]
        self.seqs = [self.seqs[row] for row in keep]
        self.state = self.engine.keep(self.state, keep)
        self.last_logits = self.last_logits[keep] if self.last_logits is not None and keep else None

    def _choose(self) -> list[int]:
        """The next token of every row from the last logits; finished rows leave. Returns the tokens of
        the rows still running, in order."""
        seqs = self.seqs
        tokens, logprobs = choose_tokens(
            self.last_logits,
            [s.params for s in seqs],
            [s.prompt_ids + s.output_ids if s.params.repetition_penalty != 1.0 else [] for s in seqs],
            [s.generator for s in seqs],
            [s.constraint.allowed(self._tokens_left(s)) if s.constraint else None for s in seqs],
        )
        keep = []
        for row, (s, token, logprob) in enumerate(zip(seqs, tokens, logprobs)):
            if s.cancelled:
                s.finished = True
                continue
            self._advance(s, token, logprob)
            if not s.finished:
                keep.append(row)
        if len(keep) < len(seqs):
            self.seqs = [seqs[row] for row in keep]
            self.state = self.engine.keep(self.state, keep)
        return [tokens[row] for row in keep]

    def _tokens_left(self, s: Sequence) -> int:
        """What max_new_tokens and the context still allow this row: a JSON answer closes within it."""
        written = len(s.output_ids)
        room = self.engine.context_length - len(s.prompt_ids)
        return min(s.params.max_new_tokens, room) - written

    def _advance(self, s: Sequence, token: int, logprob: TokenLogprob | None) -> None:
        params, engine = s.params, self.engine
        prompt_tokens = len(s.prompt_ids)
        if token in engine.eos_ids and not params.ignore_eos:
            s.finished = True
            s.emit(
                Event(
                    text=s.stream.flush(),
                    token_ids=[],
                    logprobs=[],
                    finish_reason="stop",
                    prompt_tokens=prompt_tokens,
                    completion_tokens=len(s.output_ids),
                )
            )
            return
        s.output_ids.append(token)
        if s.constraint:
            s.constraint.consume(token)
        text, stopped = s.stream.push(token)
        finish = None
        if stopped or (s.constraint and s.constraint.complete):  # complete JSON: only EOS could follow
            text += s.stream.flush() if not stopped else ""
            # A closing the budget forced is still a cut answer, as OpenAI reports one: "length".
            finish = "length" if s.constraint and s.constraint.forced and not stopped else "stop"
        elif (
            len(s.output_ids) >= params.max_new_tokens
            or prompt_tokens + len(s.output_ids) >= engine.context_length
        ):
            finish = "length"
            text += s.stream.flush()
        s.finished = finish is not None
        s.emit(
            Event(
                text=text,
                token_ids=[token],
                logprobs=[logprob] if logprob else [],
                finish_reason=finish,
                prompt_tokens=prompt_tokens,
                completion_tokens=len(s.output_ids),
            )
        )


class Engine:
    """What serve, chat, evaluation and the LLM clients may call on any backend (torch, llama.cpp).

    A backend sets the attributes below and computes logits: `prefill` runs a new row's prompt, `decode`
    one token per row, `join` and `keep` let rows enter and leave a running batch (continuous batching).
    Everything else (sampling, stop strings, streaming text, logprobs, JSON grammars) is shared here, so
    both backends answer the same request the same way.
    """

    tokenizer: Any
    template: str  # the prompt format (pacos.data.templates)
    name: str
    device: torch.device
    dtype: Any  # a torch dtype, or "gguf" for llama.cpp (whatever the file holds)
    context_length: int
    eos_ids: set[int]
    pad_id: int
    max_batch_size: int  # rows decoded together
    scores_prompts: bool = True  # the backend can return logits at every prompt position (echo)

    # -- the backend: a row's life is prefill, then decode steps; rows join and leave the batch ----------
    def prefill(self, prompt: list[int], state: Any = None, every: bool = False) -> tuple[Any, torch.Tensor]:
        """Run (the next chunk of) one row's prompt after `state` (None: a new row); returns the row's
        state and its next-token logits [1, vocab], or with `every` the logits at every position of
        the chunk [len(prompt), vocab], the last of them the next token's."""
        raise NotImplementedError

    def decode(self, state: Any, tokens: list[int]) -> torch.Tensor:
        """One token per row; the next logits [rows, vocab]."""
        raise NotImplementedError

    def join(self, a: Any, b: Any) -> Any:
        """One batch state from two."""
        raise NotImplementedError

    def keep(self, state: Any, rows: list[int]) -> Any:
        """Only these rows of the batch (None, or a state with none, when `rows` is empty)."""
        raise NotImplementedError

    def step(self, state: Any, tokens: list[int], chunks: list[_Prefill]) -> tuple[Any, torch.Tensor | None]:
        """One token for each running row of `state`, and each job's next `chunk` of its prompt (a job
        keeps its row's handle in `job.state`); jobs whose prompt is done join the batch. Returns the
        state and the next logits [running rows + joined rows, vocab]. This version calls the methods
        above one after the other; a backend that can run it all in one forward overrides it."""
        logits = self.decode(state, tokens) if tokens else None
        for job in chunks:
            every = job.seq.scores_prompt
            job.state, row_logits = self.prefill(job.chunk, job.state, every=every)
            if every:
                job.logits, row_logits = row_logits, row_logits[-1:]
            if job.last:
                if state is None or logits is None:
                    state, logits = job.state, row_logits
                else:
                    state, logits = self.join(state, job.state), torch.cat([logits, row_logits])
        return state, logits

    def drop(self, state: Any, row: Any) -> None:
        """A row being prefilled was cancelled."""

    def release(self, state: Any) -> None:
        """The batch is over (every row finished)."""

    def logits_width(self) -> int:
        """The number of logits per position (the embedding rows, padding included)."""
        raise NotImplementedError

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

    @property
    def json_grammars(self) -> JsonGrammars:
        if getattr(self, "_json_grammars", None) is None:
            self._json_grammars = JsonGrammars(self.tokenizer, self.logits_width(), sorted(self.eos_ids))
        return self._json_grammars  # type: ignore[return-value]

    def new_sequence(
        self, prompt_ids: list[int], params: SamplingParams, on_event: Callable[[Event], None]
    ) -> Sequence:
        if params.prompt_logprobs is not None and not self.scores_prompts:
            raise PacosError("prompt log-probs (echo with logprobs) need the torch backend")
        constraint = (
            self.json_grammars.constraint(params.json_schema) if params.json_schema is not None else None
        )
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(
                params.seed if params.seed is not None else secrets.randbits(63)
            )  # global RNG untouched
        return Sequence(
            prompt_ids=list(prompt_ids),
            params=params,
            stream=TextStream(self.tokenizer, params.stop),
            on_event=on_event,
            generator=generator,
            constraint=constraint,
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
                        text="".join(p.text for p in parts),
                        token_ids=[t for p in parts for t in p.token_ids],
                        finish_reason=event.finish_reason,
                        prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens,
                        logprobs=[lp for p in parts for lp in p.logprobs],
                        prompt_logprobs=parts[0].prompt_logprobs,
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
