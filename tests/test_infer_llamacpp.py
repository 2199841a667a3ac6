"""The llama.cpp backend (optional): the same requests give the same answers as the torch engine."""

from __future__ import annotations

import sys

import pytest

from pacos.errors import PacosError
from pacos.export.gguf import export_gguf
from pacos.infer import SamplingParams, TorchEngine, load_engine
from tests.test_export_gguf import lively

PROMPT = "The quick brown fox jumps over the lazy dog."


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


def test_llama_cpp_backend_errors_are_clear(tiny_llama, tmp_path, monkeypatch):
    with pytest.raises(PacosError, match=r"needs a \.gguf file or an embedded model name"):
        load_engine(str(tiny_llama), backend="llama.cpp")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(PacosError, match=r"needs llama-cpp-python \(pip install 'pacos\[llama\]'"):
        load_engine(str(gguf), backend="llama.cpp")
