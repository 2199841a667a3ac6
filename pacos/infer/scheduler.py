"""Continuous batching for a server: one thread owns the model; requests join the running batch
between decode steps and leave it when they finish, so concurrent requests share every forward pass.
New prompts are prefilled in chunks between decode steps, so that running streams keep their pace
while requests arrive.

`submit` never blocks: a full waiting queue raises `QueueFull` (the server answers 429) instead of
letting latency grow without bound. A failure inside the model ends the requests it touched with an
error event; the thread carries on with the next ones.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from pacos.errors import PacosError, first_line
from pacos.infer.decoder import Decoder, Event, Sequence
from pacos.infer.engine import Engine
from pacos.infer.sampling import SamplingParams

log = logging.getLogger("pacos.scheduler")


class QueueFull(PacosError):
    pass


PREFILL_CHUNK = 32  # prompt tokens run between two decode steps (benchmarks/README.md, bench_serve)
ADMIT_WINDOW_S = 0.02  # an idle server waits this long for the rest of a burst of requests ...
ADMIT_MAX_S = 0.25  # ... again while they keep arriving, up to this long


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        max_batch_size: int = 8,
        max_waiting: int = 64,
        prefill_chunk: int = PREFILL_CHUNK,
    ) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self.prefill_chunk = prefill_chunk
        self.waiting: deque[Sequence] = deque()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = False
        self.decoder = Decoder(engine, prefill_chunk)
        self.thread: threading.Thread | None = None  # None: not started, or run() on the caller's thread
        self.looping = False
        self.arriving = 0  # requests a front end has received and not yet submitted (see `arrival()`)

    @contextlib.contextmanager
    def arrival(self) -> Iterator[None]:
        """A front end holds this from receiving a request until it is submitted (or refused), so that an
        idle server waits for a whole burst rather than guessing from the gaps between requests."""
        with self.lock:
            self.arriving += 1
        try:
            yield
        finally:
            with self.lock:
                self.arriving -= 1

    def start(self) -> Scheduler:
        """Run the loop on a thread of its own (tests, embedding in another program)."""
        self.thread = threading.Thread(target=self.run, name="pacos-scheduler", daemon=True)
        self.looping = True  # alive from now on: a request may arrive before the thread runs
        self.thread.start()
        return self

    def run(self) -> None:
        """Run the loop on this thread until `stop()`. `pacos serve` runs it on the main thread, where
        the model was loaded: PyTorch's OpenMP keeps a pool of workers per thread that computes, and on a
        CPU with as many cores as workers a second pool makes every parallel op wake sleeping workers
        (GNU OpenMP stops spinning when it has more threads than cores): 1.5x slower decoding here."""
        self.looping = True
        try:
            self._run()
        finally:
            self.looping = False
            # Clients of requests the loop will never finish get an error now, not a hang until they
            # time out (stop, Ctrl-C or SIGTERM in the middle of a step).
            with self.lock:
                waiting, self.waiting = list(self.waiting), deque()
            self._fail([*self._in_batch(), *waiting], "the server is shutting down")

    def _in_batch(self) -> list[Sequence]:
        return [*self.decoder.seqs, *(job.seq for job in self.decoder.prefilling)]

    @staticmethod
    def _fail(seqs: list[Sequence], error: str) -> None:
        for seq in {id(s): s for s in seqs}.values():
            if not seq.finished:
                seq.finished = True
                failure = Event(
                    text="",
                    token_ids=[],
                    logprobs=[],
                    finish_reason="error",
                    prompt_tokens=len(seq.prompt_ids),
                    error=error,
                )
                seq.emit(failure)

    @property
    def alive(self) -> bool:
        return self.looping and not self.stopping

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=30)

    @property
    def running(self) -> int:
        """Rows decoding or being prefilled; a row counts out once finished (before its last event is
        delivered), not when the step that finished it is over."""
        return sum(not s.finished for s in self.decoder.seqs) + len(self.decoder.prefilling)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, on_event: Callable[[Event], None]
    ) -> Sequence:
        """Queue a request; `on_event` is called from the scheduler thread for every step's output."""
        seq = self.engine.new_sequence(prompt_ids, params, on_event)
        with self.lock:
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"the server is busy: {len(self.waiting)} requests are waiting; retry later")
            self.waiting.append(seq)
        self.wake.set()
        return seq

    def _admit(self, room_taken: int = 0) -> list[Sequence]:
        with self.lock:
            room = min(self.max_batch_size, self.engine.max_batch_size) - len(self.decoder) - room_taken
            admitted = []
            while self.waiting and len(admitted) < room:
                seq = self.waiting.popleft()
                if not seq.cancelled:
                    admitted.append(seq)
            return admitted

    def _run(self) -> None:
        while not self.stopping:
            idle = not len(self.decoder)
            admitted = self._admit()
            # Requests sent together reach the server a few ms apart: an idle server waits for the rest
            # of a burst, as long as requests keep coming (up to ADMIT_MAX_S), so that it is prefilled
            # whole and decodes as one batch instead of being admitted one chunk at a time behind its
            # first requests (bench_serve: 32 at once, 1.3x the tokens/s).
            deadline = time.monotonic() + ADMIT_MAX_S
            while idle and admitted and len(admitted) < self.max_batch_size and time.monotonic() < deadline:
                time.sleep(ADMIT_WINDOW_S)
                more = self._admit(room_taken=len(admitted))
                if not more and not self.arriving:
                    break
                admitted += more
            try:
                if admitted:
                    self.decoder.add(admitted)
                if len(self.decoder):
                    self.decoder.step()
            except Exception as e:  # a model failure ends the requests it touched, not the server
                log.exception("generation failed")
                self._fail([*self._in_batch(), *admitted], first_line(e))
                self.decoder = Decoder(self.engine, self.prefill_chunk)
            if not len(self.decoder) and not self.waiting:
                self.wake.wait()
                self.wake.clear()
