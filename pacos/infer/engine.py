"""The engine interface: batched generation over a backend that computes logits (pacos.infer.torch_engine,
pacos.infer.llamacpp).

One decode loop (pacos.infer.decoder) serves `generate` (a list of prompts), `stream` (one prompt,
token by token) and the server's scheduler (requests join and leave a running batch between steps:
continuous batching). The backend decides how rows share its state (the torch backend: ragged batches
over a slot per row, or one left-padded KV cache; llama.cpp: one row at a time).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import torch

from pacos.errors import PacosError
from pacos.infer.constrain import JsonGrammars
from pacos.infer.decoder import Completion, Decoder, Event, Sequence, _Prefill
from pacos.infer.detokenize import TextStream
from pacos.infer.prompting import chat_prompt, turn_stops
from pacos.infer.sampling import SamplingParams

log = logging.getLogger("pacos.engine")


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
    takes_drafts: bool = False  # `step` takes guessed tokens after a row's token (speculative decoding)
    prompt_lookup: int = 0  # guessed tokens per row and step (pacos.infer.lookup); 0: none

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

    def step(
        self, state: Any, tokens: list[int], chunks: list[_Prefill], drafts: list[list[int]] | None = None
    ) -> tuple[Any, torch.Tensor | None]:
        """One token for each running row of `state`, and each job's next `chunk` of its prompt (a job
        keeps its row's handle in `job.state`); jobs whose prompt is done join the batch. Returns the
        state and the next logits [running rows + joined rows, vocab]. With `drafts` (backends with
        `takes_drafts`), row i's guessed tokens run after its token, and the logits at every guess follow,
        row by row; `rewind` undoes the guesses that were not kept. This version calls the methods above
        one after the other; a backend that can run it all in one forward overrides it."""
        if drafts and any(drafts):
            raise PacosError("this backend does not take drafted tokens (prompt lookup)")
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

    def rewind(self, state: Any, row: int, n: int) -> None:
        """Forget running row `row`'s last n tokens (guesses that were not kept)."""
        raise NotImplementedError

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
