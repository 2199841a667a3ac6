"""The OpenAI-compatible HTTP API's routes: /v1/completions, /v1/chat/completions, /v1/models, /health,
and the chat page at / (`page.py`).

Every request becomes one or more sequences in the scheduler's running batch (`runs.py`); bodies are
checked by `protocol.py`, answers shaped by `openai_format.py`, failures answered by `errors.py`.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pacos import __version__
from pacos.errors import PacosError, first_line
from pacos.infer.engine import Engine
from pacos.infer.sampling import SamplingParams, TokenLogprob
from pacos.infer.scheduler import Scheduler
from pacos.serve.errors import APIError, generation_failed, install_error_handlers, param_of
from pacos.serve.openai_format import (
    DONE,
    TokenText,
    chat_logprobs,
    legacy_logprobs,
    sse,
    streaming,
    usage,
)
from pacos.serve.page import add_chat_page
from pacos.serve.protocol import ChatCompletionRequest, CompletionRequest
from pacos.serve.runs import Choice, CountArrivals, JsonBodies, Run, collect, start

# Module level: FastAPI resolves the (postponed) annotations of endpoints in the module's namespace.
_bearer = HTTPBearer(auto_error=False, description="The server's API key (PACOS_API_KEY of `pacos serve`).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def create_app(
    engine: Engine, scheduler: Scheduler, api_key: str | None = None, model_name: str | None = None
) -> FastAPI:
    """The API over a loaded engine and its (started) scheduler."""
    model_id = model_name or engine.name
    started = int(time.time())
    tokens = TokenText(engine.tokenizer)
    vocab_size = engine.logits_width()

    app = FastAPI(
        title="pacos",
        version=__version__,
        description=f"OpenAI-compatible API serving `{model_id}` with continuous batching.",
    )

    install_error_handlers(app)
    app.add_middleware(CountArrivals, scheduler=scheduler)
    app.add_middleware(JsonBodies)

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
    def same_path(a: str, b: str) -> bool:  # "runs/m" and "/home/me/runs/m/" are one model
        try:
            return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
        except (OSError, ValueError):
            return False

    def check_model(name: str | None) -> None:
        # A single-model server answers to every name it was given by: --served-model-name, --model as
        # typed, or that path written another way. Anything else is a client's mistake worth a 404.
        if name and name not in (model_id, engine.name) and not same_path(name, engine.name):
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

    async def check_format(body: CompletionRequest | ChatCompletionRequest) -> None:
        """A 400 naming what a response_format's schema asks that the grammar cannot enforce. In a thread:
        the first constrained request builds the tokenizer's grammar tables (seconds for 262K tokens)."""
        schema = body.json_schema()
        if schema is None:
            return
        try:
            await asyncio.to_thread(engine.json_grammars.check, schema)
        except PacosError as e:
            raise APIError(400, f"response_format: {e}", param="response_format") from None

    def sampling(
        body: CompletionRequest | ChatCompletionRequest,
        max_new: int,
        stops: list[str],
        logprobs: int | None,
        index: int,
        prompt_logprobs: int | None = None,
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
                prompt_logprobs=prompt_logprobs,
                ignore_eos=body.ignore_eos,
                json_schema=body.json_schema(),
            )
        except PacosError as e:
            raise APIError(400, str(e)) from None

    # -- endpoints -----------------------------------------------------------------------------------------
    def model_card() -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": started,
            "owned_by": "pacos",
            "max_model_len": engine.context_length,
            # Where it computes: clients (pacos generate) size their requests to a CPU teacher.
            "device": str(engine.device),
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
        # echo with logprobs: the prompt tokens' log-probs, from the prefill's forward pass.
        scored = body.logprobs if body.echo else None
        if scored is not None and not engine.scores_prompts:
            raise APIError(
                400, "echo: echo with logprobs needs the torch backend (--backend torch)", param="echo"
            )
        jobs = []
        for ids, _ in prompts:
            max_new = budget(ids, body.max_tokens, "prompt")
            jobs += [
                (ids, sampling(body, max_new, body.stop_list(), body.logprobs, len(jobs) + j, scored))
                for j in range(body.n)
            ]
        prompt_tokens = sum(len(ids) for ids, _ in prompts)
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_id,
        }
        await check_format(body)
        run = start(scheduler, jobs)
        want_logprobs = body.logprobs is not None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            ids = [prompts[i // body.n][0] for i in range(len(jobs))] if body.return_token_ids else None
            return streaming(stream_completion(run, head, prompt_tokens, want_logprobs, include_usage, ids))
        choices = await collect(run, request)
        # Choices run prompt by prompt, n per prompt.
        echoed = [prompts[i // body.n] if body.echo else None for i in range(len(choices))]
        return {
            **head,
            "choices": [
                {
                    "index": i,
                    "text": (echo_text(prompt) if prompt is not None else "") + c.text,
                    "logprobs": completion_logprobs(c, prompt) if want_logprobs else None,
                    "finish_reason": c.finish_reason,
                    **(token_ids(prompts[i // body.n][0], c) if body.return_token_ids else {}),
                }
                for i, (c, prompt) in enumerate(zip(choices, echoed))
            ],
            "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
        }

    def token_ids(prompt: list[int], c: Choice) -> dict[str, list[int]]:
        return {"prompt_token_ids": list(prompt), "token_ids": c.token_ids}

    def echo_text(prompt: tuple[list[int], str | None]) -> str:
        """The prompt as sent, or its token ids' text (special tokens too, as the tokens list shows them)."""
        ids, text = prompt
        return text if text is not None else engine.tokenizer.decode(ids)

    def completion_logprobs(c: Choice, echoed: tuple[list[int], str | None] | None) -> dict[str, Any]:
        if echoed is None:
            return legacy_logprobs(tokens, c.logprobs, 0)
        ids = echoed[0]
        entries = [lp for lp in (c.prompt_logprobs or [])[1:] if lp is not None]
        if len(entries) != len(ids) - 1:  # the engine reports all of them or none (see Sequence.emit)
            raise generation_failed("the prompt's log-probs are missing")
        return legacy_logprobs(tokens, [*entries, *c.logprobs], 0, first=ids[0])

    def completion_prompts(
        prompt: str | list[str] | list[int] | list[list[int]],
    ) -> list[tuple[list[int], str | None]]:
        """One prompt or a batch of them, as text or token ids, encoded and checked: (ids, the text as
        sent, None for token ids)."""
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
                prompts.append((engine.encode(item), item))
            else:
                if not all(0 <= t < vocab_size for t in item):
                    raise APIError(400, f"prompt: token ids must be in [0, {vocab_size})", param="prompt")
                prompts.append((list(item), None))
        return prompts

    async def stream_choices(
        run: Run,
        head: dict[str, Any],
        prompt_tokens: int,
        include_usage: bool,
        choice: Callable[[int, str, list[TokenLogprob], str | None], dict[str, Any]],
        opening: Callable[[int], dict[str, Any]] | None = None,
        prompt_ids: list[list[int]] | None = None,
    ) -> AsyncIterator[str]:
        """The server-sent events both endpoints share: a chunk per piece of text, then a finish chunk
        with no text of its own, an optional usage chunk and [DONE]; a failed engine ends with an error.
        With `prompt_ids` (vLLM's return_token_ids), each chunk carries the ids of its tokens, and a
        choice's first chunk its prompt's."""
        extra = {"usage": None} if include_usage else {}
        held: list[list[TokenLogprob]] = [[] for _ in run.seqs]  # logprobs of tokens whose text is held back
        held_ids: list[list[int]] = [[] for _ in run.seqs]
        opened = [False] * len(run.seqs)
        completion_tokens = 0

        def chunk(index: int, body: dict[str, Any]) -> str:
            if prompt_ids is not None:
                if not opened[index]:
                    body["prompt_token_ids"] = list(prompt_ids[index])
                body["token_ids"], held_ids[index] = held_ids[index], []
            opened[index] = True
            return sse({**head, "choices": [body], **extra})

        try:
            for index in range(len(run.seqs)) if opening else ():
                yield chunk(index, opening(index))
            async for index, event in run.events():
                if event.finish_reason == "error":
                    yield sse(generation_failed(event.error).body())
                    yield DONE
                    return
                held[index] += event.logprobs
                held_ids[index] += event.token_ids
                if event.text:
                    yield chunk(index, choice(index, event.text, held[index], None))
                    held[index] = []
                if event.finish_reason:
                    completion_tokens += event.completion_tokens
                    yield chunk(index, choice(index, "", held[index], event.finish_reason))
            if include_usage:
                yield sse({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
            yield DONE
        finally:
            run.cancel()  # a client that went away (Starlette cancels this generator) frees its batch rows

    def stream_completion(
        run: Run,
        head: dict[str, Any],
        prompt_tokens: int,
        want_logprobs: bool,
        include_usage: bool,
        prompt_ids: list[list[int]] | None,
    ) -> AsyncIterator[str]:
        offsets = [0] * len(run.seqs)  # characters sent so far per choice, for text_offset

        def choice(index: int, text: str, held: list[TokenLogprob], finish: str | None) -> dict[str, Any]:
            wanted = want_logprobs and (held or text)
            logprobs = legacy_logprobs(tokens, held, offsets[index]) if wanted else None
            offsets[index] += len(text)
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

        return stream_choices(run, head, prompt_tokens, include_usage, choice, prompt_ids=prompt_ids)

    @v1.post("/chat/completions", summary="Answer a conversation")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        check_model(body.model)
        # OpenAI's newer "developer" role is what the templates call "system".
        messages = [{**m, "role": "system"} if m.get("role") == "developer" else m for m in body.messages]
        try:
            ids = engine.encode_chat(messages)
        except PacosError as e:
            raise APIError(400, str(e), param=param_of(str(e)) or "messages") from None
        except Exception as e:  # a chat template's own check ("roles must alternate") is the client's to fix
            if type(e).__module__.startswith("jinja2"):
                raise APIError(400, f"messages: {first_line(e)}", param="messages") from None
            raise
        max_new = budget(ids, body.max_new_tokens(), "messages")
        stops = list(dict.fromkeys([*body.stop_list(), *engine.chat_stops()]))
        k = (body.top_logprobs or 0) if body.logprobs else None
        await check_format(body)
        run = start(scheduler, [(ids, sampling(body, max_new, stops, k, i)) for i in range(body.n)])
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
        }
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            head["object"] = "chat.completion.chunk"
            prompt_ids = [ids] * body.n if body.return_token_ids else None
            return streaming(stream_chat(run, head, len(ids), body.logprobs, include_usage, prompt_ids))
        choices = await collect(run, request)
        return {
            **head,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": chat_logprobs(tokens, c.logprobs) if body.logprobs else None,
                    "finish_reason": c.finish_reason,
                    **(token_ids(ids, c) if body.return_token_ids else {}),
                }
                for i, c in enumerate(choices)
            ],
            "usage": usage(len(ids), sum(c.completion_tokens for c in choices)),
        }

    def stream_chat(
        run: Run,
        head: dict[str, Any],
        prompt_tokens: int,
        want_logprobs: bool,
        include_usage: bool,
        prompt_ids: list[list[int]] | None,
    ) -> AsyncIterator[str]:
        def choice(index: int, text: str, held: list[TokenLogprob], finish: str | None) -> dict[str, Any]:
            # Content and the finish reason never share a chunk: the finish chunk's delta is empty.
            delta = {"content": text} if finish is None else {}
            logprobs = chat_logprobs(tokens, held) if want_logprobs and held else None
            return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

        def opening(index: int) -> dict[str, Any]:
            return {
                "index": index,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }

        return stream_choices(run, head, prompt_tokens, include_usage, choice, opening, prompt_ids)

    app.include_router(v1)

    @app.get("/health", summary="Liveness and load")
    async def health() -> JSONResponse:
        alive = scheduler.alive
        return JSONResponse(
            {
                "status": "ok" if alive else "unavailable",
                "running": scheduler.running,
                "queued": scheduler.queued,
            },
            status_code=200 if alive else 503,
        )

    add_chat_page(app)
    return app
