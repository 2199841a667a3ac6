"""The LM client: one interface (`LLM`) over an OpenAI-compatible endpoint, the pacos engine in-process, and
llama.cpp. Generation uses it as the teacher, evaluation and scoring as the judge, self-training as the
answerer.

`--teacher http://host:port/v1` reaches any OpenAI-compatible server (OpenAI, vLLM, llama.cpp's server,
`pacos serve`): at scale that is a fleet of vLLM or llama.cpp servers behind one endpoint. Requests are
async with a concurrency limit, retried with exponential backoff and full jitter on 429, 5xx, timeouts
and connection errors (a `Retry-After` header wins), held to requests- and tokens-per-minute limits,
and counted from `usage`. The key comes from an environment variable, never from a flag.

`--teacher local:NAME` runs the pacos engine in this process (batched), `--teacher llama.cpp:FILE.gguf`
runs llama-cpp-python; both cost nothing.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from pacos.errors import PacosError, first_line
from pacos.llm.config import ClientConfig
from pacos.llm.limits import Price, RateLimiter


@dataclass
class Request:
    id: str
    prompt: str  # the text to continue (completions API), or the user message (chat API)
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None = None
    top_logprobs: int | None = None  # ask for the k most likely first tokens (LLM judges read them)
    # The whole conversation for the chat API (a follow-up turn); None: `prompt` is the one user message.
    messages: list[dict[str, str]] | None = None

    def chat_messages(self) -> list[dict[str, str]]:
        return self.messages or [{"role": "user", "content": self.prompt}]


@dataclass
class Reply:
    request_id: str
    text: str = ""
    finish_reason: str | None = None  # "stop" or "length"; None when the request failed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    attempts: int = 0
    seconds: float = 0.0
    error: str | None = None  # a reason name: rate_limited, server_error, timeout, connection, malformed ...
    detail: str | None = None  # the last error's message, for requests.jsonl
    first_token_logprobs: dict[str, float] | None = None  # token text -> logprob, when asked for


class LLMError(PacosError):
    """Every request would fail (a refused key, an unknown model, a wrong URL): stop, files intact."""


class LLM:
    """What generation needs: `run` a batch of requests, get a reply for each (never an exception for
    one failed request), and whether prompts travel as chat messages."""

    name: str  # the --teacher value
    model: str  # the model's name, for provenance and prices
    chat: bool
    batch_size: int  # requests worth sending together

    async def run(
        self, requests: list[Request], stop_spending: Any = None, on_reply: Any = None
    ) -> list[Reply]:
        """The replies in the order of the requests; `on_reply(reply)` hears of each as it comes."""
        raise NotImplementedError

    async def close(self) -> None:
        return None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _first_token_logprobs(logprobs: Any, chat: bool) -> dict[str, float] | None:
    """The first generated token's top alternatives, from either API's logprobs shape (absent: None)."""
    try:
        if chat:
            top = logprobs["content"][0]["top_logprobs"]
            return {item["token"]: float(item["logprob"]) for item in top}
        return {token: float(value) for token, value in logprobs["top_logprobs"][0].items()}
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None


class OpenAILLM(LLM):
    def __init__(self, base_url: str, model: str | None, config: ClientConfig, price: Price | None) -> None:
        import httpx2

        self.name = base_url
        self.base_url = base_url.rstrip("/")
        self.model = model or ""
        self.config = config
        self.chat = config.api != "completions"
        self.batch_size = config.concurrency
        self.price = price
        self.limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute)
        self.semaphore = asyncio.Semaphore(config.concurrency)
        key = os.environ.get(config.api_key_env)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx2.AsyncClient(
            timeout=config.timeout,
            headers=self.headers,
            limits=httpx2.Limits(max_connections=config.concurrency),
        )

    async def resolve_model(self) -> str:
        """With no --model, the endpoint's only model (vLLM and pacos serve list exactly one)."""
        if self.model:
            return self.model
        import httpx2

        try:
            response = await self.client.get(f"{self.base_url}/models")
            response.raise_for_status()
            names = [m["id"] for m in response.json()["data"]]
        except (httpx2.HTTPError, ValueError, KeyError, TypeError) as e:
            raise LLMError(
                f"teacher {self.name}: cannot list its models ({first_line(e)}); pass --model NAME"
            ) from None
        if len(names) != 1:
            raise LLMError(
                f"teacher {self.name} serves {len(names)} models ({', '.join(names)}): pass --model"
            )
        self.model = names[0]
        return self.model

    def _body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.stop:
            body["stop"] = request.stop[:4]  # OpenAI accepts at most four
        if request.seed is not None:
            body["seed"] = request.seed
        if request.top_logprobs is not None:
            if self.chat:
                body["logprobs"], body["top_logprobs"] = True, request.top_logprobs
            else:
                body["logprobs"] = request.top_logprobs
        if self.chat:
            body["messages"] = request.chat_messages()
        else:
            body["prompt"] = request.prompt
        return body

    def _read(self, payload: Any, reply: Reply) -> bool:
        """Fill `reply` from a 200 response body; False when it is not a usable completion."""
        try:
            choice = payload["choices"][0]
            text = choice["message"]["content"] if self.chat else choice["text"]
            if not isinstance(text, str):
                return False
            reply.text, reply.finish_reason = text, choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError):
            return False
        reply.first_token_logprobs = _first_token_logprobs(choice.get("logprobs"), self.chat)
        usage = payload.get("usage") or {}
        reply.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        reply.completion_tokens = int(usage.get("completion_tokens") or 0)
        if self.price is not None:
            reply.cost = self.price.cost(reply.prompt_tokens, reply.completion_tokens)
        return True

    async def _one(self, request: Request, stop_spending: Any) -> Reply:
        import httpx2

        reply = Reply(request.id)
        url = f"{self.base_url}/{'chat/completions' if self.chat else 'completions'}"
        body = self._body(request)
        estimate = sum(len(m["content"]) for m in request.chat_messages()) // 3 + request.max_tokens
        start = time.monotonic()
        async with self.semaphore:
            for attempt in range(self.config.max_retries + 1):
                if stop_spending is not None and stop_spending():
                    reply.error, reply.detail = "budget", "the budget was reached before this request"
                    break
                entry = await self.limiter.acquire(estimate)
                reply.attempts = attempt + 1
                wait = None
                try:
                    response = await self.client.post(url, json=body)
                except httpx2.TimeoutException:
                    reply.error, reply.detail = "timeout", f"no answer within {self.config.timeout:g} s"
                except httpx2.TransportError as e:
                    reply.error, reply.detail = "connection", first_line(e)
                else:
                    status = response.status_code
                    if status == 200:
                        try:
                            payload = response.json()
                        except ValueError:
                            payload = None
                        if self._read(payload, reply):
                            reply.error = reply.detail = None
                            RateLimiter.settle(entry, reply.prompt_tokens + reply.completion_tokens)
                            break
                        reply.error, reply.detail = "malformed", f"not a completion: {response.text[:200]!r}"
                    elif status in (401, 403):
                        raise LLMError(
                            f"teacher {self.name} refused the request ({status}): set the key in "
                            f"${self.config.api_key_env}"
                        )
                    elif status == 404:
                        raise LLMError(
                            f"teacher {self.name}: {url} or model '{self.model}' not found (404): "
                            f"{response.text[:200]}"
                        )
                    elif status == 429:
                        reply.error, reply.detail = "rate_limited", response.text[:200]
                        wait = _retry_after(response.headers.get("retry-after"))
                    elif status >= 500 or status == 408:
                        reply.error, reply.detail = "server_error", f"{status}: {response.text[:200]}"
                        wait = _retry_after(response.headers.get("retry-after"))
                    else:  # the request itself is wrong: the same request would fail again
                        reply.error, reply.detail = "bad_request", f"{status}: {response.text[:200]}"
                        break
                if attempt < self.config.max_retries:
                    backoff = min(self.config.backoff_max, self.config.backoff_base * 2**attempt)
                    await asyncio.sleep(min(wait, 600.0) if wait is not None else random.uniform(0, backoff))
        reply.seconds = time.monotonic() - start
        return reply

    async def run(
        self, requests: list[Request], stop_spending: Any = None, on_reply: Any = None
    ) -> list[Reply]:
        async def one(request: Request) -> Reply:
            reply = await self._one(request, stop_spending)
            if on_reply is not None:
                on_reply(reply)
            return reply

        return list(await asyncio.gather(*(one(r) for r in requests)))

    async def close(self) -> None:
        await self.client.aclose()


class EngineLLM(LLM):
    """A model in this process: the pacos engine (batched) or llama.cpp (one request at a time)."""

    def __init__(self, spec: str, backend: str, config: ClientConfig) -> None:
        from pacos.infer import load_engine

        self.engine = load_engine(spec, backend=backend, dtype=config.dtype, quantize=config.quantize)
        prefix = "local" if backend == "torch" else backend
        self.name, self.model = f"{prefix}:{spec}", spec
        has_chat = self.engine.template == "chat"
        if config.api == "chat" and not has_chat:
            raise PacosError(f"teacher {self.name}: api 'chat' needs a model with a chat template")
        self.chat = has_chat if config.api == "auto" else config.api == "chat"
        if backend == "torch":  # more rows per decoding step, more tokens/s (SmolLM2 here: 16 rows 1.2x 8)
            self.engine.max_batch_size = max(self.engine.max_batch_size, config.concurrency)
        if self.engine.takes_drafts:
            self.engine.prompt_lookup = config.prompt_lookup
        self.batch_size = self.engine.max_batch_size

    def _generate(self, requests: list[Request]) -> list[Reply]:
        from pacos.infer import SamplingParams

        engine = self.engine
        prompts = [
            engine.encode_chat(r.chat_messages()) if self.chat else engine.encode(r.prompt) for r in requests
        ]
        params = [
            SamplingParams(
                max_new_tokens=r.max_tokens,
                temperature=r.temperature,
                top_p=r.top_p,
                seed=r.seed,
                stop=r.stop,
                logprobs=r.top_logprobs,
            )
            for r in requests
        ]
        start = time.monotonic()
        done = engine.generate(prompts, params)
        seconds = (time.monotonic() - start) / max(len(requests), 1)
        replies = []
        for r, c in zip(requests, done, strict=True):
            reply = Reply(
                request_id=r.id,
                text=c.text,
                finish_reason=c.finish_reason,
                prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens,
                attempts=1,
            )
            reply.seconds = seconds
            if r.top_logprobs is not None and c.logprobs:
                decode = engine.tokenizer.decode
                reply.first_token_logprobs = {decode([i]): v for i, v in c.logprobs[0].top}
            replies.append(reply)
        return replies

    async def run(
        self, requests: list[Request], stop_spending: Any = None, on_reply: Any = None
    ) -> list[Reply]:
        # On the calling thread, which loaded the model, not a worker thread: a second thread computing
        # gets a second OpenMP pool, 1.5x slower on a CPU (pacos.infer.scheduler.Scheduler.run). Nothing
        # else needs the event loop meanwhile: this process is the model.
        replies = self._generate(requests)
        for reply in replies if on_reply is not None else []:
            on_reply(reply)
        return replies


def teacher_device(spec: str, config: ClientConfig) -> str | None:
    """Where a teacher computes ("cpu", "cuda:0", ...) without loading it: a local one by this machine,
    an endpoint by its /v1/models entry (pacos serve says; vLLM and OpenAI do not: None)."""
    if not spec.startswith(("http://", "https://")):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    import httpx2

    base = spec.rstrip("/") + ("/v1" if spec.rstrip("/").count("/") == 2 else "")
    key = os.environ.get(config.api_key_env)
    try:
        response = httpx2.get(
            f"{base}/models", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=5.0
        )
        devices = {m.get("device") for m in response.json()["data"]}
    except Exception:  # unreachable or not OpenAI-shaped: the run itself will say so clearly
        return None
    return devices.pop() if len(devices) == 1 else None


def make_llm(spec: str, model: str | None, config: ClientConfig, price: Price | None) -> LLM:
    """`http(s)://HOST[:PORT]/v1`, `local:NAME_OR_PATH` or `llama.cpp:FILE.gguf`."""
    if spec.startswith(("http://", "https://")):
        base = spec.rstrip("/")
        if base.count("/") == 2:  # http://host:port with no path: OpenAI-compatible servers live at /v1
            base += "/v1"
        return OpenAILLM(base, model, config, price)
    kind, sep, target = spec.partition(":")
    if sep and kind in ("local", "llama.cpp") and target:
        return EngineLLM(target, "torch" if kind == "local" else "llama.cpp", config)
    raise PacosError(
        f"teacher '{spec}': expected http(s)://HOST:PORT/v1 (an OpenAI-compatible server), "
        "local:NAME_OR_PATH (the pacos engine) or llama.cpp:FILE.gguf"
    )


def reply_record(reply: Reply, request: Request, extra: dict[str, Any]) -> str:
    """One line of requests.jsonl."""
    return json.dumps(
        {
            "id": request.id,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
            "finish_reason": reply.finish_reason,
            "error": reply.error,
            "detail": reply.detail,
            "attempts": reply.attempts,
            "seconds": round(reply.seconds, 3),
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "cost": reply.cost,
            "text": reply.text,
        },
        ensure_ascii=False,
    )
