"""The llama.cpp backend: the same requests give the same answers as the torch engine.

The first test runs real llama-cpp-python (skipped where it is not installed, as in CI); the rest run
`LlamaCppEngine` over a stand-in `llama_cpp` module (tests/fake_llama_cpp.py: llama.cpp's stateful
reset/eval/logits calls, computed by transformers from the same GGUF file), through the engine interface,
the HTTP server and the `pacos serve --backend llama.cpp` command.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pacos.errors import PacosError
from pacos.export.gguf import export_gguf
from pacos.infer import SamplingParams, TorchEngine, load_engine
from pacos.infer.llamacpp import LlamaCppEngine
from pacos.infer.scheduler import Scheduler
from pacos.serve import create_app
from tests import fake_llama_cpp
from tests.test_export_gguf import lively
from tests.test_serve import API_KEY, Served, assert_error, call, sse

PROMPT = "The quick brown fox jumps over the lazy dog."
OTHER = "abc"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHAT = [{"role": "user", "content": "Say something."}]
GREEDY = SamplingParams(max_new_tokens=10, ignore_eos=True)


def test_llama_cpp_backend_answers_like_the_torch_engine(tiny_llama, tmp_path):
    pytest.importorskip("llama_cpp")
    source = lively(tiny_llama, tmp_path / "model")
    gguf = export_gguf(source, tmp_path / "model.gguf", "f16")
    torch_engine = TorchEngine.load(str(source), dtype="float32")
    cpp = load_engine(str(gguf), backend="llama.cpp")
    assert (cpp.template, cpp.max_batch_size) == ("alpaca", 1)
    assert cpp.encode(PROMPT) == torch_engine.encode(PROMPT)
    greedy = SamplingParams(max_new_tokens=10, ignore_eos=True)
    expected = torch_engine.generate([PROMPT], greedy)[0]
    got = cpp.generate([PROMPT, PROMPT], greedy)  # one at a time, queued
    assert got[0].token_ids == expected.token_ids == got[1].token_ids
    assert "".join(e.text for e in cpp.stream(PROMPT, greedy)) == expected.text
    sampled = SamplingParams(max_new_tokens=10, temperature=1.0, seed=3, ignore_eos=True)
    assert cpp.generate([PROMPT], sampled)[0].token_ids == cpp.generate([PROMPT], sampled)[0].token_ids


def test_llama_cpp_backend_errors_are_clear(tiny_llama, tmp_path, monkeypatch, cli):
    with pytest.raises(PacosError, match=r"needs a \.gguf file or an embedded model name"):
        load_engine(str(tiny_llama), backend="llama.cpp")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(PacosError, match=r"needs llama-cpp-python \(pip install 'pacos\[llama\]'") as e:
        load_engine(str(gguf), backend="llama.cpp")
    assert "\n" not in str(e.value)
    result = cli("serve", "--backend", "llama.cpp", "--model", gguf)
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("pacos: error: the llama.cpp backend needs llama-cpp-python")
    assert result.err.count("\n") == 1  # one line, no traceback
    # A file llama.cpp cannot read (llama-cpp-python raises ValueError) is one line too.
    monkeypatch.setitem(sys.modules, "llama_cpp", fake_llama_cpp)
    with pytest.raises(PacosError, match=r"model\.gguf: llama\.cpp could not load it: Failed to load") as e:
        load_engine(str(gguf), backend="llama.cpp")
    assert "\n" not in str(e.value)


def test_a_tokenizer_transformers_cannot_read_is_named_as_such(stand_in, chat_model, monkeypatch):
    """llama.cpp loaded the file, so the error must not say it could not; the loaded model is closed."""
    import transformers

    def unreadable(*args, **kwargs):
        raise ValueError("GGUF model with architecture foo is not supported yet.\nmore")

    closed = []
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unreadable)
    monkeypatch.setattr(stand_in.Llama, "close", lambda self: closed.append(self))
    with pytest.raises(PacosError) as e:
        load_engine(str(chat_model.gguf), backend="llama.cpp")
    assert str(e.value) == (
        f"{chat_model.gguf}: transformers could not read its tokenizer: "
        "GGUF model with architecture foo is not supported yet."
    )
    assert len(closed) == 1


# -- through the stand-in ----------------------------------------------------------------------------------


@pytest.fixture
def stand_in(monkeypatch):
    """`import llama_cpp` gives the stand-in (LlamaCppEngine imports it at load and at every step)."""
    monkeypatch.setitem(sys.modules, "llama_cpp", fake_llama_cpp)
    return fake_llama_cpp


@pytest.fixture(scope="module")
def chat_model(tiny_llama, tmp_path_factory) -> SimpleNamespace:
    """The tiny Llama with weights that give clear logits and a chat template, and its f16 GGUF file."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("llamacpp")
    source = lively(tiny_llama, root / "model")
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(source)
    return SimpleNamespace(source=source, gguf=export_gguf(source, root / "model.gguf", "f16"))


@pytest.fixture(scope="module")
def torch_engine(chat_model) -> TorchEngine:
    return TorchEngine.load(str(chat_model.source), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def cpp(chat_model) -> LlamaCppEngine:
    """Loaded once; a test that runs it asks for `stand_in` too (each step imports llama_cpp)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "llama_cpp", fake_llama_cpp)
        return load_engine(str(chat_model.gguf), backend="llama.cpp")  # type: ignore[return-value]


def test_engine_through_the_stand_in_answers_like_the_torch_engine(stand_in, cpp, torch_engine):
    assert isinstance(cpp.llm, stand_in.Llama)
    assert (cpp.template, cpp.max_batch_size, cpp.dtype, cpp.context_length) == ("chat", 1, "gguf", 8192)
    assert cpp.eos_ids == torch_engine.eos_ids == {2}
    assert cpp.logits_width() == torch_engine.logits_width()
    assert cpp.encode(PROMPT) == torch_engine.encode(PROMPT)
    assert cpp.encode_chat(CHAT) == torch_engine.encode_chat(CHAT)
    # The logits read through the ctypes pointer are the model's (f16 weights: close, not equal).
    ids = torch_engine.encode(PROMPT)
    state, want = torch_engine.prefill(ids)
    _, got = cpp.prefill(ids)
    assert got.shape == want.shape and want.std() > 0.5
    assert torch.allclose(got, want, atol=5e-2), (got - want).abs().max()
    torch.testing.assert_close(cpp.decode(1, [5]), torch_engine.decode(state, [5]), atol=5e-2, rtol=0)
    # Greedy tokens equal the torch engine's. Two prompts run one after the other in the one KV cache:
    # the second (shorter) answer is only right if prefill starts it afresh.
    want_both = torch_engine.generate([PROMPT, OTHER], GREEDY)
    evals = cpp.llm.evals
    got_both = cpp.generate([PROMPT, OTHER], GREEDY)
    assert [c.token_ids for c in got_both] == [c.token_ids for c in want_both]
    assert [c.text for c in got_both] == [c.text for c in want_both]
    assert cpp.llm.evals - evals == 2 * 10  # a prefill and 9 decode steps per prompt: no batching
    assert "".join(e.text for e in cpp.stream(OTHER, GREEDY)) == want_both[1].text
    chat = SamplingParams(max_new_tokens=12, stop=cpp.chat_stops())
    assert (
        cpp.generate([cpp.encode_chat(CHAT)], chat)[0].token_ids
        == torch_engine.generate([torch_engine.encode_chat(CHAT)], chat)[0].token_ids
    )
    # Seeded sampling is reproducible.
    sampled = SamplingParams(max_new_tokens=10, temperature=1.0, seed=3, ignore_eos=True)
    assert cpp.generate([PROMPT], sampled)[0].token_ids == cpp.generate([PROMPT], sampled)[0].token_ids


def test_an_answer_stops_at_the_llama_cpp_context(stand_in, chat_model):
    small = LlamaCppEngine.load(str(chat_model.gguf), context_length=16)  # the stand-in fails past n_ctx
    assert small.context_length == small.llm.n_ctx() == 16
    ids = small.encode(OTHER)
    done = small.generate([ids], SamplingParams(max_new_tokens=100, ignore_eos=True))[0]
    assert done.finish_reason == "length" and len(ids) + len(done.token_ids) == 16
    assert small.generate([[1] * 16], GREEDY)[0].finish_reason == "length"  # a full prompt: no model call
    with pytest.raises(RuntimeError, match="llama_decode"):
        small.llm.eval([1] * 17)


@pytest.fixture
def cpp_server(stand_in, cpp):
    scheduler = Scheduler(cpp, max_batch_size=8, max_waiting=64).start()
    served = Served(create_app(cpp, scheduler, api_key=API_KEY, model_name="tiny-gguf"))
    yield SimpleNamespace(port=served.port, scheduler=scheduler)
    served.stop()
    scheduler.stop()
    assert not scheduler.thread.is_alive()


def test_serve_with_the_llama_cpp_backend(cpp_server, torch_engine):
    port = cpp_server.port
    want = torch_engine.generate([PROMPT], GREEDY)[0]
    status, _, body = call(
        port,
        "POST",
        "/v1/completions",
        {"prompt": PROMPT, "max_tokens": 10, "temperature": 0, "ignore_eos": True},
    )
    assert status == 200, body
    assert body["model"] == "tiny-gguf" and body["choices"][0]["text"] == want.text
    assert body["usage"] == {
        "prompt_tokens": want.prompt_tokens,
        "completion_tokens": 10,
        "total_tokens": want.prompt_tokens + 10,
    }
    events = sse(
        port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 10, "temperature": 0, "ignore_eos": True}
    )
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == want.text

    chat_want = torch_engine.generate([torch_engine.encode_chat(CHAT)], SamplingParams(max_new_tokens=12))[0]
    body = {"messages": CHAT, "max_tokens": 12, "temperature": 0}
    status, _, answer = call(port, "POST", "/v1/chat/completions", body)
    assert status == 200, answer
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": chat_want.text}
    assert answer["choices"][0]["finish_reason"] == chat_want.finish_reason
    events = sse(port, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == chat_want.text
    )
    assert chunks[-1]["usage"] == answer["usage"]

    # Concurrent requests queue for the one KV cache (llama.cpp runs one sequence at a time), each
    # answered as if alone.
    prompts = [PROMPT, OTHER, "12345", "Once upon a time"]
    wanted = {p: c.text for p, c in zip(prompts, torch_engine.generate(prompts, GREEDY))}

    def one(prompt: str) -> str:
        body = {"prompt": prompt, "max_tokens": 10, "temperature": 0, "ignore_eos": True}
        return "".join(json.loads(e)["choices"][0]["text"] for e in sse(port, "/v1/completions", body)[:-1])

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, prompts * 2)) == [wanted[p] for p in prompts * 2]
    status, _, health = call(port, "GET", "/health")
    assert status == 200 and health == {"status": "ok", "running": 0, "queued": 0}


def test_echo_with_logprobs_is_a_clear_400_on_llama_cpp(cpp_server, cpp):
    # llama-cpp-python keeps every position's logits only with logits_all (n_ctx x vocab floats).
    body = {"prompt": PROMPT, "echo": True, "logprobs": 1, "max_tokens": 0}
    status, _, got = call(cpp_server.port, "POST", "/v1/completions", body)
    assert_error(status, got, 400, "echo")
    assert got["error"]["message"] == "echo: echo with logprobs needs the torch backend (--backend torch)"
    with pytest.raises(PacosError, match="need the torch backend"):
        cpp.generate([PROMPT], SamplingParams(max_new_tokens=0, prompt_logprobs=1))
    # echo alone needs no prompt log-probs: the prompt comes back before the answer.
    status, _, got = call(cpp_server.port, "POST", "/v1/completions", {**body, "logprobs": None})
    assert status == 200 and got["choices"][0]["text"] == PROMPT, got


def test_pacos_serve_command_with_the_llama_cpp_backend(chat_model, torch_engine, tmp_path):
    """`pacos serve --backend llama.cpp` in its own process, given the stand-in as `llama_cpp`."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "llama_cpp.py").write_text("from tests.fake_llama_cpp import *  # noqa: F403\n")
    root = Path(__file__).resolve().parents[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PACOS_API_KEY": API_KEY, "PYTHONPATH": os.pathsep.join([str(shim), str(root)])}
    command = [sys.executable, "-m", "pacos", "serve", "--backend", "llama.cpp", "--model",
               str(chat_model.gguf), "--port", str(port), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "pacos serve did not answer in time"
            try:
                call(port, "GET", "/health", key=None)
                break
            except OSError:
                time.sleep(0.2)
        body = {"prompt": PROMPT, "max_tokens": 10, "temperature": 0, "ignore_eos": True}
        status, _, answer = call(port, "POST", "/v1/completions", body)
        assert (
            status == 200 and answer["choices"][0]["text"] == torch_engine.generate([PROMPT], GREEDY)[0].text
        )
        chat_want = torch_engine.generate(
            [torch_engine.encode_chat(CHAT)], SamplingParams(max_new_tokens=12)
        )[0]
        status, _, answer = call(
            port, "POST", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 12, "temperature": 0}
        )
        assert status == 200 and answer["choices"][0]["message"]["content"] == chat_want.text
        assert answer["model"] == str(chat_model.gguf)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "(gguf on cpu, template chat, context 8192 tokens)" in out, out
    # transformers' GGUF conversion bar and its deprecation notices stay out of pacos's output.
    assert "%|" not in out and "deprecated" not in out, out
