"""A request's sequences in the scheduler's running batch.

The scheduler calls back on its own thread; each request gets an asyncio queue that those callbacks feed
through `call_soon_threadsafe`, so the event loop never blocks on the model. A client that goes away
cancels its sequences, which leave the batch at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import Request

from pacos.infer.decoder import Event, Sequence
from pacos.infer.sampling import SamplingParams, TokenLogprob
from pacos.infer.scheduler import QueueFull, Scheduler
from pacos.serve.errors import APIError, generation_failed

DISCONNECT_POLL_S = 0.5  # how often a non-streaming request checks that its client is still there


class ClientGone(Exception):
    """The client closed the connection before its answer was complete."""


class Run:
    """The sequences of one request and the queue their events arrive on, in the event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event | None]] = asyncio.Queue()  # None: the client left
        self.seqs: list[Sequence] = []

    def on_event(self, index: int) -> Callable[[Event], None]:
        def deliver(event: Event) -> None:  # on the scheduler thread: must never raise, or the batch fails
            # A closed loop (the server is shutting down) raises RuntimeError: nobody is listening then.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

        return deliver

    def cancel(self) -> None:
        for seq in self.seqs:
            seq.cancel()  # harmless for a finished sequence

    def client_gone(self) -> None:
        self.queue.put_nowait((-1, None))

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """Events until every sequence has finished; ClientGone once `client_gone` was called."""
        pending = len(self.seqs)
        while pending:
            index, event = await self.queue.get()
            if event is None:
                raise ClientGone
            if event.finish_reason:
                pending -= 1
            yield index, event


@dataclass
class Choice:
    """One answer, accumulated from its events."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # asked for with echo and logprobs
    token_ids: list[int] = field(default_factory=list)

    def add(self, event: Event) -> None:
        self.text += event.text
        self.token_ids += event.token_ids
        self.logprobs += event.logprobs
        if event.prompt_logprobs is not None:
            self.prompt_logprobs = event.prompt_logprobs
        if event.finish_reason:
            self.finish_reason, self.completion_tokens = event.finish_reason, event.completion_tokens
            self.error = event.error


# The end of the current request's arrival (CountArrivals): called once its sequences are submitted.
ARRIVED: contextvars.ContextVar[Callable[[], object] | None] = contextvars.ContextVar("arrived", default=None)


class JsonBodies:
    """ASGI middleware: the API's POST bodies are JSON whatever their Content-Type says. `curl -d` sends
    application/x-www-form-urlencoded, and clients often send none; OpenAI-compatible servers read them."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST" and scope["path"].startswith("/v1/"):
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class CountArrivals:
    """ASGI middleware: a POST counts as arriving at the scheduler from the moment it is received until
    its sequences are submitted (or it fails), so that an idle server waits for a whole burst of requests
    (parsing, validation and tokenization of 32 requests take longer than the scheduler's 20 ms window)."""

    def __init__(self, app: Callable, scheduler: Scheduler) -> None:
        self.app, self.scheduler = app, scheduler

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        with contextlib.ExitStack() as arrival:
            arrival.enter_context(self.scheduler.arrival())
            ARRIVED.set(arrival.close)
            await self.app(scope, receive, send)


def start(scheduler: Scheduler, jobs: list[tuple[list[int], SamplingParams]]) -> Run:
    """All of a request's sequences in the batch, or none: a 503 when the model is down, a 429 when full."""
    try:
        return _start(scheduler, jobs)
    finally:
        arrived = ARRIVED.get()
        if arrived is not None:
            arrived()


def _start(scheduler: Scheduler, jobs: list[tuple[list[int], SamplingParams]]) -> Run:
    if not scheduler.alive:
        raise APIError(503, "the model is not running; restart the server", "server_error")
    run = Run()
    try:
        for index, (ids, params) in enumerate(jobs):
            run.seqs.append(scheduler.submit(ids, params, run.on_event(index)))
    except QueueFull as e:
        run.cancel()  # all or nothing: a request whose choices cannot all run gets none
        raise APIError(
            429, str(e), "rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": "1"}
        ) from None
    return run


async def collect(run: Run, request: Request) -> list[Choice]:
    """Every choice of a plain (not streamed) request; a 499 when the client leaves first."""

    # Starlette cancels a stream whose client leaves, but not a plain request: watch for it here.
    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        run.client_gone()

    watcher = asyncio.create_task(watch())
    choices = [Choice() for _ in run.seqs]
    try:
        async for index, event in run.events():
            choices[index].add(event)
            if event.finish_reason == "error":
                raise generation_failed(event.error)
    except ClientGone:
        raise APIError(499, "the client closed the connection") from None
    finally:
        watcher.cancel()
        run.cancel()
    return choices
