"""`pacos serve`: a real uvicorn server over the tiny random Llama, driven by the official openai client
and by raw HTTP (for error bodies and the exact server-sent events)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk

from pacos.errors import PacosError
from pacos.infer import TorchEngine
from pacos.infer.sampling import SamplingParams
from pacos.infer.scheduler import Scheduler
from pacos.serve import create_app
from pacos.serve.protocol import ANY_VALUE

API_KEY = "test-key"
MODEL = "tiny"
CHAT = [{"role": "user", "content": "Say something."}]


class Served:
    """A uvicorn server on a free port, in a background thread."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def engine(tiny_llama: Path) -> TorchEngine:
    return TorchEngine.load(str(tiny_llama), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def server(engine: TorchEngine):
    scheduler = Scheduler(engine, max_batch_size=8, max_waiting=64).start()
    served = Served(create_app(engine, scheduler, api_key=API_KEY, model_name=MODEL))
    yield SimpleNamespace(port=served.port, scheduler=scheduler, engine=engine)
    served.stop()
    scheduler.stop()
    assert not scheduler.thread.is_alive()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=API_KEY, max_retries=0)


def call(port: int, method: str, path: str, body: Any = None, key: str | None = API_KEY):
    """(status, headers, JSON body) of one raw request; `body` may be raw bytes (invalid JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(raw) if raw else None


def sse(port: int, path: str, body: dict[str, Any]) -> list[str]:
    """The `data:` payloads of a streamed response, [DONE] included."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(
        "POST",
        path,
        json.dumps({**body, "stream": True}),
        {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    response = conn.getresponse()
    assert response.status == 200, response.read()
    assert response.getheader("content-type").startswith("text/event-stream")
    lines = [line.decode() for line in response]
    conn.close()
    assert all(line in ("\n",) or line.startswith("data: ") for line in lines)
    return [line.removeprefix("data: ").rstrip("\n") for line in lines if line.startswith("data: ")]


def assert_error(status: int, body: Any, expected: int, param: str | None = None, code: str | None = None):
    assert status == expected, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"] and body["error"]["type"]
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body


def reference(engine: TorchEngine, prompt: str | list[int], **params: Any):
    return engine.generate([prompt], SamplingParams(**params))[0]


# -- the official client -----------------------------------------------------------------------------------


def test_completion_is_the_engines_greedy_and_seeded_text(client, engine):
    got = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0)
    want = reference(engine, "Once upon a time", max_new_tokens=12)
    assert got.id.startswith("cmpl-") and got.object == "text_completion" and got.model == MODEL
    assert got.choices[0].text == want.text and got.choices[0].finish_reason == want.finish_reason == "length"
    assert got.usage.prompt_tokens == want.prompt_tokens and got.usage.completion_tokens == 12
    assert got.usage.total_tokens == want.prompt_tokens + 12
    # Seeded sampling is reproducible too: each sequence draws from its own generator.
    got = client.completions.create(model=MODEL, prompt="abc", max_tokens=16, temperature=0.8, seed=5)
    assert got.choices[0].text == reference(engine, "abc", max_new_tokens=16, temperature=0.8, seed=5).text
    # Token ids as the prompt, and a batch of prompts (choices indexed prompt by prompt).
    ids = engine.encode("abc")
    for prompt in (["abc", "12345"], [ids, engine.encode("12345")]):
        got = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
        assert [c.index for c in got.choices] == [0, 1]
        assert got.choices[0].text == reference(engine, ids, max_new_tokens=4).text
        assert got.choices[1].text == reference(engine, "12345", max_new_tokens=4).text


def test_return_token_ids_gives_each_choices_prompt_and_answer_tokens(server, engine):
    """vLLM's `return_token_ids`: the tokens themselves, without asking for logprobs to read them."""
    prompts = [engine.encode("abc"), engine.encode("12345")]
    body = {"prompt": prompts, "max_tokens": 5, "temperature": 0, "return_token_ids": True}
    status, _, got = call(server.port, "POST", TEXT_URL, body)
    assert status == 200
    for choice, prompt in zip(got["choices"], prompts, strict=True):
        want = reference(engine, prompt, max_new_tokens=5)
        assert choice["prompt_token_ids"] == prompt and choice["token_ids"] == want.token_ids
        assert choice["logprobs"] is None and len(want.token_ids) == 5
    chat = {"messages": CHAT, "max_tokens": 6, "temperature": 0, "return_token_ids": True}
    status, _, got = call(server.port, "POST", CHAT_URL, chat)
    want = reference(engine, engine.encode_chat(CHAT), max_new_tokens=6, stop=engine.chat_stops())
    assert status == 200 and got["choices"][0]["prompt_token_ids"] == engine.encode_chat(CHAT)
    assert got["choices"][0]["token_ids"] == want.token_ids
    status, _, got = call(server.port, "POST", TEXT_URL, {**body, "return_token_ids": False})
    assert status == 200 and "token_ids" not in got["choices"][0]
    # Streamed, as vLLM: each chunk carries its own tokens' ids, a choice's first chunk its prompt's.
    for url, request, prompt_of, stops, n in (
        (TEXT_URL, body, lambda i: prompts[i], {}, 2),
        (CHAT_URL, chat, lambda i: engine.encode_chat(CHAT), {"stop": engine.chat_stops()}, 1),
    ):
        events = [json.loads(e) for e in sse(server.port, url, request)[:-1]]
        pieces = [c for e in events for c in e["choices"]]
        assert {c["index"] for c in pieces} == set(range(n))
        for index in range(n):
            mine = [c for c in pieces if c["index"] == index]
            assert mine[0]["prompt_token_ids"] == prompt_of(index)
            assert all("prompt_token_ids" not in c for c in mine[1:])
            whole = [t for c in mine for t in c["token_ids"]]
            want = reference(engine, prompt_of(index), max_new_tokens=request["max_tokens"], **stops)
            assert whole == want.token_ids


def test_chat_and_streamed_chat_agree(client, engine):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=10, temperature=0)
    answer = client.chat.completions.create(**kwargs)
    want = reference(engine, engine.encode_chat(CHAT), max_new_tokens=10, stop=engine.chat_stops())
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == want.text
    assert answer.usage.prompt_tokens == len(engine.encode_chat(CHAT))

    chunks = list(
        client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    finish = chunks[-2].choices[0]
    assert finish.finish_reason in ("length", "stop") and finish.delta.content is None
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-1].choices == [] and chunks[-1].usage == answer.usage


def test_n_choices_with_a_seed(client, engine):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=8, temperature=1.0, seed=11, n=2)
    first = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1]
    texts = [c.message.content for c in first.choices]
    assert texts[0] != texts[1]  # seed, seed+1
    again = client.chat.completions.create(**kwargs)
    assert [c.message.content for c in again.choices] == texts
    ids = engine.encode_chat(CHAT)
    stops = engine.chat_stops()
    for i, text in enumerate(texts):
        assert text == reference(engine, ids, max_new_tokens=8, temperature=1.0, seed=11 + i, stop=stops).text
    assert first.usage.completion_tokens == sum(
        reference(engine, ids, max_new_tokens=8, temperature=1.0, seed=11 + i, stop=stops).completion_tokens
        for i in range(2)
    )


def test_logprobs_in_both_formats(client, engine):
    got = client.completions.create(model=MODEL, prompt="abc", max_tokens=6, temperature=0, logprobs=3)
    lp = got.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == got.choices[0].text and lp.text_offset == list(range(6))
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and top[token] == logprob and 1 <= len(top) <= 4  # the 3 best + the chosen one
        assert logprob == max(top.values())  # greedy picks the most likely token

    chat = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens == 5
    assert "".join(item.token for item in content) == chat.choices[0].message.content
    for item in content:
        assert item.bytes == list(item.token.encode()) and len(item.top_logprobs) == 2
        assert item.top_logprobs[0].logprob == item.logprob and item.top_logprobs[1].logprob <= item.logprob
    plain = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, temperature=0)
    assert plain.choices[0].logprobs is None

    # Streamed logprobs add up to the same tokens.
    stream = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2, stream=True
    )
    streamed = [
        i.token for c in stream if c.choices and c.choices[0].logprobs for i in c.choices[0].logprobs.content
    ]
    assert streamed == [item.token for item in content]


def test_models_health_and_openapi(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    status, _, body = call(server.port, "GET", "/health", key=None)
    assert status == 200 and body == {"status": "ok", "running": 0, "queued": 0}
    status, _, schema = call(server.port, "GET", "/openapi.json", key=None)
    assert status == 200
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"} <= set(schema["paths"])
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/docs")
    assert conn.getresponse().status == 200


# -- stop strings ------------------------------------------------------------------------------------------


def test_stop_strings_never_leak_into_the_stream(server, engine):
    params = dict(max_tokens=32, temperature=1.0, seed=1)
    full = reference(engine, "Hello world", max_new_tokens=32, temperature=1.0, seed=1).text
    start = next(
        i for i in range(4, len(full)) if full[i : i + 3].isascii() and full[i : i + 3].isprintable()
    )
    stop = full[start : start + 3]
    want = full[: full.index(stop)]

    status, _, body = call(
        server.port, "POST", "/v1/completions", {"prompt": "Hello world", "stop": stop, **params}
    )
    assert (
        status == 200 and body["choices"][0]["text"] == want and body["choices"][0]["finish_reason"] == "stop"
    )

    events = sse(server.port, "/v1/completions", {"prompt": "Hello world", "stop": [stop], **params})
    assert events[-1] == "[DONE]"
    # (Not validated with openai's Completion: it types finish_reason as never null, yet OpenAI's own
    # stream sends null until the end; the client does not validate, so both work.)
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and len(c["choices"]) == 1 for c in chunks)
    texts = [c["choices"][0]["text"] for c in chunks]
    assert "".join(texts) == want and all(stop not in t for t in texts)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]

    # Chat: the request's stops join the template's own.
    messages = [{"role": "user", "content": "Hello"}]
    full = reference(engine, engine.encode_chat(messages), max_new_tokens=32, temperature=1.0, seed=1).text
    start = next(
        i for i in range(4, len(full)) if full[i : i + 2].isascii() and full[i : i + 2].isprintable()
    )
    stop = full[start : start + 2]
    events = sse(server.port, "/v1/chat/completions", {"messages": messages, "stop": stop, **params})
    chunks = [ChatCompletionChunk.model_validate(json.loads(e)) for e in events[:-1]]
    deltas = [c.choices[0].delta.content or "" for c in chunks]
    assert "".join(deltas) == full[: full.index(stop)] and all(stop not in d for d in deltas)
    assert chunks[-1].choices[0].finish_reason == "stop"


# -- constrained output ----------------------------------------------------------------------------------


def test_response_format_json_schema_through_the_official_client(client):
    from tests.test_constrain import SCHEMA, violations

    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    for seed in range(3):
        reply = client.chat.completions.create(
            model=MODEL, messages=CHAT, response_format=fmt, temperature=1.0, seed=seed, max_tokens=400
        )
        answer = reply.choices[0].message.content
        assert reply.choices[0].finish_reason == "stop" and violations(json.loads(answer), SCHEMA) == []
    text = client.completions.create(
        model=MODEL, prompt="Person:", max_tokens=400, extra_body={"response_format": fmt}
    )
    assert violations(json.loads(text.choices[0].text), SCHEMA) == []
    streamed = client.chat.completions.create(
        model=MODEL, messages=CHAT, response_format=fmt, max_tokens=400, stream=True, temperature=0
    )
    assert violations(json.loads("".join(c.choices[0].delta.content or "" for c in streamed)), SCHEMA) == []


def test_a_schema_the_grammar_cannot_enforce_is_a_400_naming_the_keyword(server):
    schema = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    status, _, body = call(server.port, "POST", CHAT_URL, {"messages": CHAT, "response_format": fmt})
    assert_error(status, body, 400, "response_format")
    assert "uniqueItems" in body["error"]["message"]


def test_the_empty_schema_means_any_json_value_not_free_text(server, monkeypatch):
    # {} is falsy: it once reached the engine as "no schema", and the answer was unconstrained text.
    schemas: list[Any] = []
    submit = server.scheduler.submit

    def spy(ids: list[int], params: SamplingParams, on_event: Any) -> Any:
        schemas.append(params.json_schema)
        return submit(ids, params, on_event)

    monkeypatch.setattr(server.scheduler, "submit", spy)
    fmt = {"type": "json_schema", "json_schema": {"name": "anything", "schema": {}}}
    stopped = 0
    for path, base in ((CHAT_URL, {"messages": CHAT}), (TEXT_URL, {"prompt": "Value:"})):
        for seed in range(3):
            body = {**base, "response_format": fmt, "max_tokens": 400, "temperature": 1.0, "seed": seed}
            status, _, got = call(server.port, "POST", path, body)
            assert status == 200, got
            choice = got["choices"][0]
            answer = choice["message"]["content"] if path == CHAT_URL else choice["text"]
            assert answer[:1] in set('{["-0123456789tfn'), answer  # a JSON value begins
            if choice["finish_reason"] == "stop":
                json.loads(answer)
                stopped += 1
    assert stopped > 0
    assert schemas == [ANY_VALUE] * 6  # {} spelled out: every JSON type, nothing else


def test_a_schema_the_grammar_refuses_is_a_400(server, monkeypatch):
    """JsonGrammars.check's PacosError (here a stand-in refusing the {"$ref": "#"} loop, whose only value
    would be infinite) is a 400 naming response_format, and nothing is decoded."""
    grammars = server.engine.json_grammars
    check = grammars.check

    def refuse_loops(schema: dict[str, Any]) -> None:
        if schema.get("$ref") == "#":
            raise PacosError("json schema: $ref '#' refers to itself: no finite JSON value matches")
        check(schema)

    monkeypatch.setattr(grammars, "check", refuse_loops)
    monkeypatch.setattr(server.scheduler, "submit", lambda *args: pytest.fail("a sequence was started"))
    fmt = {"type": "json_schema", "json_schema": {"name": "loop", "schema": {"$ref": "#"}}}
    for path, base in ((CHAT_URL, {"messages": CHAT}), (TEXT_URL, {"prompt": "x"})):
        status, _, body = call(server.port, "POST", path, {**base, "response_format": fmt})
        assert_error(status, body, 400, "response_format")
        assert body["error"]["message"] == (
            "response_format: json schema: $ref '#' refers to itself: no finite JSON value matches"
        )


# -- errors ------------------------------------------------------------------------------------------------

TEXT_URL, CHAT_URL = "/v1/completions", "/v1/chat/completions"
LONG = "a" * 3000  # byte-level: one token per byte, past the 2048-token context


@pytest.mark.parametrize(
    "path, body, status, param, code",
    [
        (TEXT_URL, b"{not json", 400, None, None),
        (TEXT_URL, b"[1, 2]", 400, None, None),
        (TEXT_URL, {"prompt": "x", "max_tokens": "many"}, 400, "max_tokens", None),
        (TEXT_URL, {"prompt": "x", "max_tokens": -1}, 400, "max_tokens", None),
        (TEXT_URL, {"prompt": "x", "temperature": 2.5}, 400, "temperature", None),
        (TEXT_URL, {"prompt": "x", "top_p": 0}, 400, "top_p", None),
        (TEXT_URL, {"prompt": "x", "n": 0}, 400, "n", None),
        (TEXT_URL, {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
        (TEXT_URL, {"prompt": "x", "logprobs": 6}, 400, "logprobs", None),
        (TEXT_URL, {"prompt": "x", "echo": True, "stream": True}, 400, "echo", None),  # echo: not streamed
        (TEXT_URL, {"prompt": 5}, 400, "prompt", None),
        (TEXT_URL, {"prompt": "\ud800"}, 400, "prompt", None),  # valid JSON, not Unicode: was a 500
        (TEXT_URL, {"prompt": ["ok", "a\udfffb"]}, 400, "prompt[1]", None),
        (TEXT_URL, {"prompt": "x", "stream": "yes"}, 400, "stream", None),  # was taken as true
        (TEXT_URL, {"prompt": "x", "echo": 1}, 400, "echo", None),
        (TEXT_URL, {"prompt": ""}, 400, "prompt", None),
        (TEXT_URL, {"prompt": [[1, 2], []]}, 400, "prompt", None),
        (TEXT_URL, {"prompt": [1, 10**9]}, 400, "prompt", None),
        (TEXT_URL, {"prompt": "x", "model": "gpt-4o"}, 404, "model", "model_not_found"),
        (TEXT_URL, {"prompt": LONG}, 400, "prompt", "context_length_exceeded"),
        (TEXT_URL, {"prompt": "x", "max_tokens": 2048}, 400, "prompt", "context_length_exceeded"),
        (CHAT_URL, {"model": MODEL}, 400, "messages", None),
        (CHAT_URL, {"messages": []}, 400, "messages", None),
        (CHAT_URL, {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role", None),
        (CHAT_URL, {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", None),
        (CHAT_URL, {"messages": [{"role": "user", "content": "\udc00"}]}, 400, "messages[0].content", None),
        (CHAT_URL, {"messages": CHAT, "logprobs": "true"}, 400, "logprobs", None),
        (CHAT_URL, {"messages": CHAT, "stream": 1}, 400, "stream", None),
        (
            CHAT_URL,
            {"messages": [{"role": "user", "content": LONG}]},
            400,
            "messages",
            "context_length_exceeded",
        ),
        (CHAT_URL, {"messages": CHAT, "top_logprobs": 2}, 400, "top_logprobs", None),
        (CHAT_URL, {"messages": CHAT, "top_logprobs": 21, "logprobs": True}, 400, "top_logprobs", None),
        (CHAT_URL, {"messages": CHAT, "frequency_penalty": 0.5}, 400, "frequency_penalty", None),
        (CHAT_URL, {"messages": CHAT, "response_format": {"type": "xml"}}, 400, "response_format", None),
        (
            CHAT_URL,
            {"messages": CHAT, "response_format": {"type": "json_schema"}},
            400,
            "response_format",
            None,
        ),
        (CHAT_URL, {"messages": CHAT, "model": "other"}, 404, "model", "model_not_found"),
        ("/v1/nowhere", {}, 404, None, None),
    ],
)
def test_bad_requests_get_openai_errors(server, path, body, status, param, code):
    got_status, _, got = call(server.port, "POST", path, body)
    assert_error(got_status, got, status, param, code)


@pytest.mark.parametrize("path, base", [(TEXT_URL, {"prompt": "hi"}), (CHAT_URL, {"messages": CHAT})])
@pytest.mark.parametrize(
    "field", ["temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty"]
)
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_a_400_naming_the_field(server, path, base, field, literal):
    # Python's json (what the server parses bodies with) reads these literals; 1e999 overflows to inf.
    # NaN used to fail a range check ("less than or equal to 2") and Infinity passed repetition_penalty > 0.
    raw = json.dumps(base)[:-1] + f', "{field}": {literal}}}'
    status, _, body = call(server.port, "POST", path, raw.encode())
    assert_error(status, body, 400, field)
    assert body["error"]["message"] == f"{field}: must be a finite number"


@pytest.mark.parametrize(
    "extra, param",
    [
        ('"n": NaN', "n"),
        ('"max_tokens": Infinity', "max_tokens"),
        ('"seed": -Infinity', "seed"),
        ('"top_k": NaN', "top_k"),
        ('"logit_bias": {"5": NaN}', "logit_bias.5"),
        ('"stop": ["x", NaN]', "stop[1]"),
        (
            '"response_format": {"type": "json_schema", "json_schema": {"name": "x", '
            '"schema": {"type": "number", "maximum": Infinity}}}',
            "response_format.json_schema.schema.maximum",
        ),
    ],
)
def test_non_finite_numbers_anywhere_in_a_field_are_a_400_naming_where(server, extra, param):
    raw = json.dumps({"messages": CHAT})[:-1] + f", {extra}}}"
    status, _, body = call(server.port, "POST", CHAT_URL, raw.encode())
    assert_error(status, body, 400, param)
    assert body["error"]["message"] == f"{param}: must be a finite number"


def test_non_finite_numbers_in_unknown_fields_are_ignored_like_the_fields(server):
    raw = json.dumps({"prompt": "hi", "max_tokens": 1})[:-1] + ', "unknown_field": NaN}'
    status, _, body = call(server.port, "POST", TEXT_URL, raw.encode())
    assert status == 200 and body["usage"]["completion_tokens"] == 1, body


def test_lenient_where_clients_differ(server):
    # No model, an empty model, unknown fields, the "developer" role, content parts, null sampling fields.
    body = {
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
        "max_completion_tokens": 3,
        "temperature": None,
        "top_p": None,
        "unknown_field": {"x": 1},
    }
    for model in ({}, {"model": ""}, {"model": MODEL}):
        status, _, got = call(server.port, "POST", "/v1/chat/completions", {**body, **model})
        assert status == 200 and got["usage"]["completion_tokens"] <= 3


def test_api_key(server, client):
    for key in (None, "wrong-key"):
        status, _, body = call(server.port, "POST", "/v1/completions", {"prompt": "x"}, key=key)
        assert_error(status, body, 401, code="invalid_api_key")
        status, _, body = call(server.port, "GET", "/v1/models", key=key)
        assert status == 401
    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert call(server.port, "GET", "/health", key=None)[0] == 200  # for load balancers: no key


def test_any_content_type_is_read_as_json_and_the_model_by_any_path_form(server, engine, tiny_llama):
    body = json.dumps({"prompt": "x", "max_tokens": 2}).encode()
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):  # curl -d, others
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        headers = {
            "Authorization": f"Bearer {API_KEY}",
            **({"Content-Type": content_type} if content_type else {}),
        }
        conn.request("POST", "/v1/completions", body=body, headers=headers)
        response = conn.getresponse()
        assert response.status == 200, (content_type, response.read())
        conn.close()
    relative = os.path.relpath(tiny_llama)
    for name in (engine.name, relative, f"{tiny_llama}/", "./" + relative):
        status, _, got = call(
            server.port, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1, "model": name}
        )
        assert status == 200, (name, got)
    status, _, got = call(server.port, "POST", "/v1/completions", {"prompt": "x", "model": "other/model"})
    assert_error(status, got, 404, "model", "model_not_found")


def test_queue_full_is_429_and_a_stopped_scheduler_503(engine):
    scheduler = Scheduler(engine, max_batch_size=8, max_waiting=0).start()  # every submit finds it full
    served = Served(create_app(engine, scheduler))
    try:
        status, headers, body = call(served.port, "POST", "/v1/completions", {"prompt": "x"}, key=None)
        assert_error(status, body, 429, code="rate_limit_exceeded")
        assert headers["retry-after"] == "1"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{served.port}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=engine.name, messages=CHAT)
        scheduler.stop()
        status, _, body = call(served.port, "POST", "/v1/completions", {"prompt": "x"}, key=None)
        assert_error(status, body, 503)
        assert call(served.port, "GET", "/health")[0] == 503
    finally:
        served.stop()
        scheduler.stop()


def test_a_model_failure_is_an_error_not_a_crash(server, client, engine, monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("device on fire")

    monkeypatch.setattr(engine, "step", broken)
    status, _, body = call(server.port, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 3})
    assert_error(status, body, 500)
    assert "device on fire" in body["error"]["message"]
    events = sse(server.port, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 3})
    assert events[-1] == "[DONE]" and "device on fire" in json.loads(events[-2])["error"]["message"]
    with pytest.raises(openai.APIError, match="device on fire"):
        list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3, stream=True))
    monkeypatch.undo()
    # ignore_eos: at the default temperature the random model may sample EOS first (a flaky 0 != 2)
    after = client.completions.create(model=MODEL, prompt="x", max_tokens=2, extra_body={"ignore_eos": True})
    assert after.usage.completion_tokens == 2


# -- load --------------------------------------------------------------------------------------------------


def test_50_concurrent_streams_are_batched(server, engine, monkeypatch):
    decoder = server.scheduler.decoder
    sizes: list[int] = []
    step = decoder.step

    def recording_step() -> None:
        sizes.append(len(decoder))
        step()

    monkeypatch.setattr(decoder, "step", recording_step)
    prompts = ["Say something.", "abc", "12345", "Once upon a time", "The quick brown fox"]
    want = {
        p: reference(
            engine,
            engine.encode_chat([{"role": "user", "content": p}]),
            max_new_tokens=16,
            stop=engine.chat_stops(),
        ).text
        for p in prompts
    }

    def one(i: int) -> tuple[str, list[str]]:
        prompt = prompts[i % len(prompts)]
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 16,
            "temperature": 0,
            "stream_options": {"include_usage": True},
        }
        return prompt, sse(server.port, "/v1/chat/completions", body)

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert server.scheduler.arriving == 0  # each request stopped arriving once submitted
    for prompt, events in results:
        assert events[-1] == "[DONE]"
        chunks = [ChatCompletionChunk.model_validate(json.loads(e)) for e in events[:-1]]  # strict shapes
        assert (
            chunks[-2].choices[0].finish_reason in ("length", "stop")
            and chunks[-2].choices[0].delta.content is None
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want[prompt]
        assert chunks[-1].usage.completion_tokens <= 16
    assert max(sizes) == 8, f"batch sizes seen: {sorted(set(sizes))}"
    status, _, body = call(server.port, "GET", "/health")
    assert status == 200 and body["running"] == 0 and body["queued"] == 0


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_row(server, monkeypatch, stream):
    seqs = []
    submit = server.scheduler.submit

    def recording_submit(*args: Any, **kwargs: Any) -> Any:
        seqs.append(submit(*args, **kwargs))
        return seqs[-1]

    monkeypatch.setattr(server.scheduler, "submit", recording_submit)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = {"prompt": "abc", "max_tokens": 2040, "ignore_eos": True, "stream": stream}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    conn.request("POST", "/v1/completions", json.dumps(body), headers)
    if stream:
        response = conn.getresponse()
        assert response.status == 200 and response.readline().startswith(b"data: ")
    else:
        while not seqs or not seqs[0].output_ids:
            time.sleep(0.01)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    deadline = time.monotonic() + 10
    while not seqs[0].finished and time.monotonic() < deadline:
        time.sleep(0.02)
    # 2040 tokens take seconds; a streamed request stops at the next token, a plain one within a poll.
    assert seqs[0].cancelled and seqs[0].finished and len(seqs[0].output_ids) < 2040


# -- the command -------------------------------------------------------------------------------------------


def test_serve_command(cli, tiny_llama):
    result = cli("serve", "--help")
    assert result.code == 0 and "PACOS_API_KEY" in result.out and "--max-batch-size" in result.out
    assert "--api-key" not in result.out  # a key never goes on the command line
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PACOS_API_KEY": "k"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pacos",
            "serve",
            "--model",
            str(tiny_llama),
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--served-model-name",
            "t",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "pacos serve did not answer in time"
            try:
                status, _, body = call(port, "GET", "/health", key=None)
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200 and body["status"] == "ok"
        assert call(port, "GET", "/v1/models", key="k")[2]["data"][0]["id"] == "t"
        assert call(port, "GET", "/v1/models", key=None)[0] == 401
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "loaded" in out and "template alpaca" in out


# -- fuzz ----------------------------------------------------------------------------------------------

_SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
_TEXT = st.text(max_size=12)
# Floats include NaN and the infinities: json.dumps writes them as NaN/Infinity, which the server reads.
_NUMBERS = st.integers(-(10**30), 10**30) | st.floats() | st.sampled_from([0, 1, 2, 16, -1])
_SCALARS = st.none() | st.booleans() | _NUMBERS | _TEXT | st.sampled_from(["yes", "true", "", "text"])
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)
# Text with a lone surrogate in about half the draws (st.text leaves surrogates out whatever its alphabet).
_WORDS = st.builds(
    lambda a, odd, b: a + odd + b,
    st.text(max_size=6),
    _SURROGATES | st.just(""),
    st.text(min_size=1, max_size=6),
)
_MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]), "content": _WORDS}),
    min_size=1,
    max_size=3,
)
_KEYWORDS = ["type", "properties", "items", "enum", "const", "required", "maxLength", "minItems", "maxItems",
             "anyOf", "$ref", "pattern", "additionalProperties", "uniqueItems", "minimum"]  # fmt: skip
_TYPES = st.sampled_from(["object", "array", "string", "integer", "number", "boolean", "null", "strin"])
_SCHEMAS = st.recursive(
    st.fixed_dictionaries({}, optional={"type": _TYPES | _JSON}),
    lambda inner: st.dictionaries(st.sampled_from(_KEYWORDS), inner | _JSON | st.dictionaries(_TEXT, inner)),
    max_leaves=6,
)
_FORMATS = (
    st.builds(
        lambda schema: {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}, _SCHEMAS
    )
    | st.fixed_dictionaries({"type": st.sampled_from(["json_schema", "json_object", "text", "xml"]) | _JSON})
    | _JSON
)
_COMMON = [
    "model", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed", "presence_penalty",
    "frequency_penalty", "logit_bias", "user", "top_k", "repetition_penalty", "ignore_eos", "unknown_field",
]  # fmt: skip


def _bodies(main: str, main_values: st.SearchStrategy, extra: list[str]) -> st.SearchStrategy:
    """A request with its main field and up to two other fields set to any JSON value (more fields would
    almost always hold one invalid value, and the fuzz would only ever reach the first check)."""
    others = st.dictionaries(st.sampled_from([*_COMMON, *extra]), _JSON, max_size=2)
    short = st.fixed_dictionaries(
        {main: main_values, "max_tokens": st.integers(0, 4)},  # bounded decoding
        optional={"response_format": _FORMATS},
    )
    return st.builds(lambda base, more: {**base, **more}, short, others) | _JSON


@pytest.mark.parametrize(
    "path, bodies",
    [
        (
            TEXT_URL,
            _bodies(
                "prompt", _WORDS | st.lists(_WORDS, min_size=1, max_size=2), ["logprobs", "echo", "suffix"]
            ),
        ),
        (
            CHAT_URL,
            _bodies(
                "messages",
                _MESSAGES,
                ["logprobs", "top_logprobs", "tools", "response_format", "max_completion_tokens"],
            ),
        ),
    ],
)
def test_fuzzed_requests_never_get_a_5xx(server, path, bodies):
    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=bodies)
    def check(body):
        if isinstance(body, dict) and isinstance(body.get("n"), int) and body["n"] > 2:
            body["n"] = 2  # bounds the decoding work; validation of n is tested above
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        data = json.dumps(body).encode()  # lone surrogates become \ud800 escapes: valid JSON, not Unicode
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
        conn.request("POST", path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        assert response.status < 500, (body, raw[:300])
        if response.status >= 400:
            error = json.loads(raw)["error"]
            assert error["message"] and "\n" not in error["message"], error

    check()
