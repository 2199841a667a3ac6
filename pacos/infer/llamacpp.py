"""The llama.cpp backend: a GGUF file run by llama-cpp-python (optional: `pip install pacos[llama]`).

llama.cpp only computes the logits here; choosing tokens, stop strings, streaming text and logprobs
are pacos's own, so both backends answer the same request the same way. One sequence at a time:
llama-cpp-python's high-level API keeps one KV cache, so the server queues requests for it.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pacos.errors import PacosError, first_line
from pacos.infer.engine import Engine
from pacos.infer.loading import pick_template


def gguf_file(spec: str) -> Path:
    from pacos.models import EMBEDDED_MODELS

    if spec in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[spec].gguf()
    path = Path(spec)
    if path.suffix.lower() != ".gguf" or not path.is_file():
        raise PacosError(
            f"model '{spec}': the llama.cpp backend needs a .gguf file or an embedded model name"
        )
    return path


class LlamaCppEngine(Engine):
    def __init__(self, llm: Any, tokenizer: Any, template: str, name: str) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.template = template
        self.name = name
        self.device = torch.device("cpu")
        self.dtype = "gguf"  # whatever the file holds; llama.cpp computes in its own types
        self.context_length = llm.n_ctx()
        self.eos_ids = {
            llm.token_eos(),
            *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []),
        }
        self.pad_id = 0
        self.max_batch_size = 1
        # llama-cpp-python keeps logits at every position only with logits_all, an n_ctx x vocab array
        # for the whole session (8 GiB for Gemma 3 at 8K context): prompt log-probs stay torch's.
        self.scores_prompts = False

    @classmethod
    def load(
        cls, spec: str, *, template: str | None = None, context_length: int = 8192, threads: int | None = None
    ) -> LlamaCppEngine:
        path = gguf_file(spec)
        try:
            import llama_cpp
        except ImportError:
            raise PacosError(
                "the llama.cpp backend needs llama-cpp-python (pip install 'pacos[llama]'; on CPUs where a "
                'native build crashes: CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON")'
            ) from None
        from transformers import AutoTokenizer

        threads = threads or len(os.sched_getaffinity(0))  # llama.cpp's default is half the cores
        try:
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=context_length,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except Exception as e:  # llama.cpp raises ValueError for a file it cannot load
            raise PacosError(f"{path}: llama.cpp could not load it: {first_line(e)}") from None
        try:  # pacos tokenizes and detokenizes itself, with transformers' reading of the file's vocabulary
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        except Exception as e:
            llm.close()
            raise PacosError(f"{path}: transformers could not read its tokenizer: {first_line(e)}") from None
        atexit.register(llm.close)  # closing it during interpreter shutdown raises inside llama-cpp-python
        return cls(llm, tokenizer, pick_template(spec, tokenizer, template), name=spec)

    def logits_width(self) -> int:
        return int(self.llm.n_vocab())

    def _logits(self) -> torch.Tensor:
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),)).copy())[None]

    def prefill(
        self, prompt: list[int], state: int | None = None, every: bool = False
    ) -> tuple[int, torch.Tensor]:
        if every:
            raise PacosError("prompt log-probs (echo with logprobs) need the torch backend")
        if state is None:  # a new row: the one KV cache starts afresh
            self.llm.reset()
        self.llm.eval(prompt)
        return 1, self._logits()

    def decode(self, state: int, tokens: list[int]) -> torch.Tensor:
        self.llm.eval(tokens)
        return self._logits()

    def join(self, a: Any, b: Any) -> Any:
        raise PacosError("the llama.cpp backend runs one sequence at a time")

    def keep(self, state: int, rows: list[int]) -> int | None:
        return state if rows else None
