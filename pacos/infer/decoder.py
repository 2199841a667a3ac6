"""The decode loop that every backend shares: requests (`Sequence`), their events, and `Decoder`, the
running batch that chooses each row's next token, streams text, and asks the backend (pacos.infer.engine)
for the next logits, one step at a time.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pacos.infer.constrain import RowConstraint
from pacos.infer.detokenize import TextStream
from pacos.infer.lookup import NgramIndex
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
    lookup: NgramIndex | None = None  # prompt and answer so far, for prompt-lookup drafts
    guesses: int = 0  # how many to draft next (0: the engine's prompt_lookup), adapted to what was kept

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

    With `engine.prompt_lookup` = k > 0 (backends that take drafts), a greedy row whose last tokens
    occurred earlier in its prompt or answer also feeds the k tokens that followed them there
    (pacos.infer.lookup); the next step keeps those that equal the model's own choices, so one step may
    give a row several tokens, each of them its greedy choice.
    """

    def __init__(self, engine: Any, prefill_chunk: int = 0) -> None:  # an Engine, which imports this module
        self.engine = engine
        self.prefill_chunk = prefill_chunk
        self.seqs: list[Sequence] = []
        self.prefilling: deque[_Prefill] = deque()
        self.state: Any = None
        self.last_logits: torch.Tensor | None = None  # [rows, vocab] for the next choice
        self.drafts: list[list[int]] = []  # per running row: the guessed tokens fed after its token
        self.draft_logits: list[torch.Tensor | None] = []  # per running row: logits at each guess

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
        drafts = self._drafts(tokens)
        chunks = self._chunks()
        if tokens or chunks:
            if any(drafts):
                self.state, logits = self.engine.step(self.state, tokens, chunks, drafts)
                rows = len(tokens) + sum(job.last for job in chunks)
                self.last_logits, guessed = logits[:rows], logits[rows:]
                self.draft_logits = list(guessed.split([len(d) for d in drafts]))
            else:
                self.state, self.last_logits = self.engine.step(self.state, tokens, chunks)
                self.draft_logits = [None] * len(drafts)
            self.drafts = drafts
        for job in chunks:
            if job.logits is not None:
                self._score_prompt(job)
            if job.last:
                self.prefilling.remove(job)
                self.seqs.append(job.seq)
                self.drafts.append([])
                self.draft_logits.append(None)
            job.done += len(job.chunk)
            job.chunk = []
        self._finish_scored()
        if not self.seqs and not self.prefilling and self.state is not None:
            self.engine.release(self.state)
            self.state, self.last_logits = None, None
            self.drafts, self.draft_logits = [], []

    def _drafts(self, tokens: list[int]) -> list[list[int]]:
        """Prompt-lookup guesses to feed after each running row's token (empty: none)."""
        k = self.engine.prompt_lookup
        if not k or not self.engine.takes_drafts:
            return [[] for _ in tokens]
        drafts = []
        for s in self.seqs:
            p = s.params
            # Greedy rows only: a kept guess must be the row's own choice, which for sampled rows (or
            # penalised, or grammar-constrained ones) depends on more than the logits.
            if not p.greedy or s.constraint is not None or p.repetition_penalty != 1.0:
                drafts.append([])
                continue
            if s.lookup is None:
                s.lookup = NgramIndex()
                s.lookup.extend(s.prompt_ids)
            s.lookup.extend(s.output_ids[len(s.lookup.tokens) - len(s.prompt_ids) :])
            # Every guess kept gives a token, and the step after them one more: stay within the budget.
            drafts.append(s.lookup.draft(min(s.guesses or k, self._tokens_left(s) - 1)))
        return drafts

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
        self.drafts = [self.drafts[row] for row in keep]
        self.draft_logits = [self.draft_logits[row] for row in keep]
        self.state = self.engine.keep(self.state, keep)
        self.last_logits = self.last_logits[keep] if self.last_logits is not None and keep else None

    def _choose(self) -> list[int]:
        """The next token of every row from the last logits; finished rows leave. Returns the tokens of
        the rows still running, in order. A row that was fed guesses gets its choice at each of them as
        long as the previous choice equals the guess there, and the rest of its guesses are undone."""
        seqs, drafts = self.seqs, self.drafts
        logits, owners = self.last_logits, list(range(len(seqs)))
        if any(drafts):  # every position of every row, row by row: its token's, then each guess's
            parts, owners = [], []
            for row, guessed in enumerate(self.draft_logits):
                parts.append(self.last_logits[row : row + 1])
                owners.append(row)
                if guessed is not None and len(guessed):
                    parts.append(guessed)
                    owners += [row] * len(guessed)
            logits = torch.cat(parts)
        rows = [seqs[row] for row in owners]
        chosen, logprobs = choose_tokens(
            logits,
            [s.params for s in rows],
            [s.prompt_ids + s.output_ids if s.params.repetition_penalty != 1.0 else [] for s in rows],
            [s.generator for s in rows],
            [s.constraint.allowed(self._tokens_left(s)) if s.constraint else None for s in rows],
        )
        keep, tokens, at = [], [], 0
        for row, s in enumerate(seqs):
            guesses = drafts[row] if row < len(drafts) else []
            choices, scored = chosen[at : at + 1 + len(guesses)], logprobs[at : at + 1 + len(guesses)]
            at += 1 + len(guesses)
            if s.cancelled:
                s.finished = True
                continue
            kept = 0
            for i, (token, logprob) in enumerate(zip(choices, scored)):
                self._advance(s, token, logprob)
                if s.finished or i == len(guesses) or token != guesses[i]:
                    break
                kept += 1
            # transformers' schedule for assistant tokens: 2 more after a full hit, 1 fewer after a miss.
            if guesses:
                limit = self.engine.prompt_lookup
                s.guesses = min(limit, len(guesses) + 2) if kept == len(guesses) else max(1, len(guesses) - 1)
            if not s.finished:
                if kept < len(guesses):
                    self.engine.rewind(self.state, row, len(guesses) - kept)
                keep.append(row)
                tokens.append(choices[kept])
        if len(keep) < len(seqs):
            self.seqs = [seqs[row] for row in keep]
            self.state = self.engine.keep(self.state, keep)
        self.drafts, self.draft_logits = [], []
        return tokens

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
