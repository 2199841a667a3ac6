"""The OpenAI-compatible HTTP API: /v1/completions, /v1/chat/completions, /v1/models, /health.

Every request becomes one or more sequences in the scheduler's running batch. The scheduler calls back
on its own thread; each request gets an asyncio queue that those callbacks feed through
`call_soon_threadsafe`, so the event loop never blocks on the model. A client that goes away cancels
its sequences, which leave the batch at the next step.

Errors use OpenAI's body, `{"error": {"message", "type", "param", "code"}}`, with 4xx codes for
anything the client can fix (FastAPI's 422 becomes a 400, as OpenAI answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from pacos import __version__
from pacos.errors import PacosError, first_line
from pacos.infer.engine import Engine, Event, Sequence
from pacos.infer.sampling import SamplingParams, TokenLogprob
from pacos.infer.scheduler import QueueFull, Scheduler
from pacos.serve.protocol import ChatCompletionRequest, CompletionRequest

DISCONNECT_POLL_S = 0.5  # how often a non-streaming request checks that its client is still there
UNLIKELY = -9999.0  # OpenAI's logprob for "practically impossible"; JSON has no -inf


class APIError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ClientGone(Exception):
    pass


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


DONE = "data: [DONE]\n\n"

# Module level: FastAPI resolves the (postponed) annotations of endpoints in the module's namespace.
_bearer = HTTPBearer(auto_error=False, description="The server's API key (`pacos serve --api-key`).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else UNLIKELY


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class TokenText:
    """A token's text and bytes for logprobs, cached: the same few thousand tokens come back constantly."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.text = lru_cache(maxsize=65536)(self._text)
        self.bytes = lru_cache(maxsize=65536)(self._bytes)

    def _text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _bytes(self, token_id: int) -> list[int]:
        text = self.text(token_id)
        if "\ufffd" not in text:
            return list(text.encode("utf-8"))
        # Part of a character: its real bytes come from the token itself (byte fallback or byte-level BPE).
        piece = self.tokenizer.convert_ids_to_tokens(token_id) or ""
        if match := re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece):
            return [int(match[1], 16)]
        table = _byte_level_table()
        if piece and all(c in table for c in piece):
            return [table[c] for c in piece]
        return list(text.encode("utf-8"))


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

    def add(self, event: Event) -> None:
        self.text += event.text
        self.logprobs += event.logprobs
        if event.finish_reason:
            self.finish_reason, self.completion_tokens = event.finish_reason, event.completion_tokens
            self.error = event.error


def _generation_failed(error: str | None) -> APIError:
    return APIError(500, f"generation failed: {error or 'unknown error'}", "server_error")


def _param_of(message: str) -> str | None:
    """'messages[0].role: must be ...' names its field first; OpenAI puts that in `param`."""
    match = re.match(r"([A-Za-z_][\w.\[\]]*): ", message)
    return match[1] if match else None


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [part for part in first.get("loc", ()) if part != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
    if not loc:
        if kind == "missing":
            return APIError(400, "the request body is missing; send a JSON object")
        if kind in ("model_attributes_type", "dict_type"):
            return APIError(400, "the request body must be a JSON object")
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        return APIError(400, message, param=_param_of(message))
    param = str(loc[0])
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    branches = [str(e["loc"][2]) for e in errors if len(e.get("loc", ())) > 2 and e["loc"][1] == param]
    if len(branches) > 1:  # no member of a union fitted: say what would have
        message = f"must be one of: {', '.join(dict.fromkeys(branches))}"
    if not message.startswith(f"{param}:"):
        message = f"{param}: {message}"
    return APIError(400, message, param=param)


def create_app(
    engine: Engine, scheduler: Scheduler, api_key: str | None = None, model_name: str | None = None
) -> FastAPI:
    """The API over a loaded engine and its (started) scheduler."""
    model_id = model_name or engine.name
    started = int(time.time())
    tokens = TokenText(engine.tokenizer)
    vocab_size = int(engine.model.get_input_embeddings().num_embeddings)

    app = FastAPI(
        title="pacos",
        version=__version__,
        description=f"OpenAI-compatible API serving `{model_id}` with continuous batching.",
    )

    # -- errors --------------------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = str(exc.detail)
        code = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, message, code=code, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return APIError(
            500, f"internal error: {type(exc).__name__}: {first_line(exc)}", "server_error"
        ).response()

    # -- auth ----------------------------------------------------------------------------------------------
    async def authorize(credentials: Credentials) -> None:
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), (api_key or "").encode()):
            raise APIError(
                401,
                "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)] if api_key else [])

    # -- helpers -------------------------------------------------------------------------------------------
    def check_model(name: str | None) -> None:
        if name and name != model_id:
            raise APIError(
                404,
                f"The model `{name}` does not exist; this server serves `{model_id}`.",
                param="model",
                code="model_not_found",
            )

    def budget(ids: list[int], max_tokens: int | None, param: str) -> int:
        """max_new_tokens for a prompt, or a 400 when prompt + completion do not fit the context."""
        limit = engine.context_length
        wanted = len(ids) + (max_tokens or 0)
        if len(ids) >= limit or wanted > limit:
            raise APIError(
                400,
                f"This model's maximum context length is {limit} tokens, however you requested {wanted} "
                f"tokens ({len(ids)} in your prompt; {max_tokens or 0} for the completion). "
                "Please reduce your prompt or completion length.",
                param=param,
                code="context_length_exceeded",
            )
        return max_tokens if max_tokens is not None else limit - len(ids)

    def sampling(
        body: CompletionRequest | ChatCompletionRequest,
        max_new: int,
        stops: list[str],
        logprobs: int | None,
        index: int,
    ) -> SamplingParams:
        # n choices of a seeded request get seed, seed+1, ...: different answers, each reproducible.
        seed = (body.seed + index) % 2**64 if body.seed is not None else None
        try:
            return SamplingParams(
                max_new_tokens=max_new,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                top_k=body.top_k or 0,
                repetition_penalty=body.repetition_penalty or 1.0,
                seed=seed,
                stop=stops,
                logprobs=logprobs,
                ignore_eos=body.ignore_eos,
            )
        except PacosError as e:
            raise APIError(400, str(e)) from None

    def start(jobs: list[tuple[list[int], SamplingParams]]) -> Run:
        if not scheduler.thread.is_alive() or scheduler.stopping:
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
                    raise _generation_failed(event.error)
        except ClientGone:
            raise APIError(499, "the client closed the connection") from None
        finally:
            watcher.cancel()
            run.cancel()
        return choices

    def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def legacy_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
        """The completions API's format; each top dict also holds the chosen token, as OpenAI's does."""
        texts = [tokens.text(lp.token_id) for lp in entries]
        offsets = []
        for text in texts:
            offsets.append(offset)
            offset += len(text)
        return {
            "tokens": texts,
            "token_logprobs": [_finite(lp.logprob) for lp in entries],
            "top_logprobs": [
                {
                    **{tokens.text(i): _finite(v) for i, v in lp.top},
                    tokens.text(lp.token_id): _finite(lp.logprob),
                }
                for lp in entries
            ],
            "text_offset": offsets,
        }

    def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
        def item(token_id: int, logprob: float) -> dict[str, Any]:
            return {
                "token": tokens.text(token_id),
                "logprob": _finite(logprob),
                "bytes": tokens.bytes(token_id),
            }

        content = [
            {**item(lp.token_id, lp.logprob), "top_logprobs": [item(i, v) for i, v in lp.top]}
            for lp in entries
        ]
        return {"content": content, "refusal": None}

    def streaming(body: Any) -> StreamingResponse:
        return StreamingResponse(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- endpoints -----------------------------------------------------------------------------------------
    def model_card() -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": started,
            "owned_by": "pacos",
            "max_model_len": engine.context_length,
        }

    @v1.get("/models", summary="The served model")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{model:path}", summary="One model")
    async def get_model(model: str) -> dict[str, Any]:
        check_model(model)
        return model_card()

    @v1.post("/completions", summary="Complete raw prompts (the legacy text completion API)")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        prompts = completion_prompts(body.prompt)
        jobs = []
        for ids in prompts:
            max_new = budget(ids, body.max_tokens, "prompt")
            jobs += [
                (ids, sampling(body, max_new, body.stop_list(), body.logprobs, len(jobs) + j))
                for j in range(body.n)
            ]
        prompt_tokens = sum(len(ids) for ids in prompts)
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_id,
        }
        run = start(jobs)
        want_logprobs = body.logprobs is not None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return streaming(stream_completion(run, head, prompt_tokens, want_logprobs, include_usage))
        choices = await collect(run, request)
        return {
            **head,
            "choices": [
                {
                    "index": i,
                    "text": c.text,
                    "logprobs": legacy_logprobs(c.logprobs, 0) if want_logprobs else None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
        }

    def completion_prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
        """One prompt or a batch of them, as text or token ids, encoded and checked."""
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            items: list[Any] = [prompt]
        else:
            items = list(prompt)
        if not items:
            raise APIError(400, "prompt: must not be empty", param="prompt")
        prompts = []
        for item in items:
            if not item:
                raise APIError(400, "prompt: must not be empty", param="prompt")
            if isinstance(item, str):
                prompts.append(engine.encode(item))
            else:
                if not all(0 <= t < vocab_size for t in item):
                    raise APIError(400, f"prompt: token ids must be in [0, {vocab_size})", param="prompt")
                prompts.append(list(item))
        return prompts

    async def stream_choices(
        run: Run,
        head: dict[str, Any],
        prompt_tokens: int,
        include_usage: bool,
        choice: Callable[[int, str, list[TokenLogprob], str | None], dict[str, Any]],
        opening: Callable[[int], dict[str, Any]] | None = None,
    ) -> AsyncIterator[str]:
        """The server-sent events both endpoints share: a chunk per piece of text, then a finish chunk
        with no text of its own, an optional usage chunk and [DONE]; a failed engine ends with an error."""
        extra = {"usage": None} if include_usage else {}
        held: list[list[TokenLogprob]] = [[] for _ in run.seqs]  # logprobs of tokens whose text is held back
        completion_tokens = 0
        try:
            for index in range(len(run.seqs)) if opening else ():
                yield sse({**head, "choices": [opening(index)], **extra})
            async for index, event in run.events():
                if event.finish_reason == "error":
                    yield sse(_generation_failed(event.error).body())
                    yield DONE
                    return
                held[index] += event.logprobs
                if event.text:
                    yield sse({**head, "choices": [choice(index, event.text, held[index], None)], **extra})
                    held[index] = []
                if event.finish_reason:
                    completion_tokens += event.completion_tokens
                    finish = choice(index, "", held[index], event.finish_reason)
                    yield sse({**head, "choices": [finish], **extra})
            if include_usage:
                yield sse({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
            yield DONE
        finally:
            run.cancel()  # a client that went away (Starlette cancels this generator) frees its batch rows

    def stream_completion(
        run: Run, head: dict[str, Any], prompt_tokens: int, want_logprobs: bool, include_usage: bool
    ) -> AsyncIterator[str]:
        offsets = [0] * len(run.seqs)  # characters sent so far per choice, for text_offset

        def choice(index: int, text: str, held: list[TokenLogprob], finish: str | None) -> dict[str, Any]:
            logprobs = legacy_logprobs(held, offsets[index]) if want_logprobs and (held or text) else None
            offsets[index] += len(text)
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

        return stream_choices(run, head, prompt_tokens, include_usage, choice)

    @v1.post("/chat/completions", summary="Answer a conversation")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        check_model(body.model)
        # OpenAI's newer "developer" role is what the templates call "system".
        messages = [{**m, "role": "system"} if m.get("role") == "developer" else m for m in body.messages]
        try:
            ids = engine.encode_chat(messages)
        except PacosError as e:
            raise APIError(400, str(e), param=_param_of(str(e)) or "messages") from None
        except Exception as e:  # a chat template's own check ("roles must alternate") is the client's to fix
            if type(e).__module__.startswith("jinja2"):
                raise APIError(400, f"messages: {first_line(e)}", param="messages") from None
            raise
        max_new = budget(ids, body.max_new_tokens(), "messages")
        stops = list(dict.fromkeys([*body.stop_list(), *engine.chat_stops()]))
        k = (body.top_logprobs or 0) if body.logprobs else None
        run = start([(ids, sampling(body, max_new, stops, k, i)) for i in range(body.n)])
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
        }
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            head["object"] = "chat.completion.chunk"
            return streaming(stream_chat(run, head, len(ids), body.logprobs, include_usage))
        choices = await collect(run, request)
        return {
            **head,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": chat_logprobs(c.logprobs) if body.logprobs else None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": usage(len(ids), sum(c.completion_tokens for c in choices)),
        }

    def stream_chat(
        run: Run, head: dict[str, Any], prompt_tokens: int, want_logprobs: bool, include_usage: bool
    ) -> AsyncIterator[str]:
        def choice(index: int, text: str, held: list[TokenLogprob], finish: str | None) -> dict[str, Any]:
            # Content and the finish reason never share a chunk: the finish chunk's delta is empty.
            delta = {"content": text} if finish is None else {}
            logprobs = chat_logprobs(held) if want_logprobs and held else None
            return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

        def opening(index: int) -> dict[str, Any]:
            return {
                "index": index,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }

        return stream_choices(run, head, prompt_tokens, include_usage, choice, opening)

    app.include_router(v1)

    @app.get("/health", summary="Liveness and load")
    async def health() -> JSONResponse:
        alive = scheduler.thread.is_alive() and not scheduler.stopping
        return JSONResponse(
            {
                "status": "ok" if alive else "unavailable",
                "running": scheduler.running,
                "queued": scheduler.queued,
            },
            status_code=200 if alive else 503,
        )

    return app
