"""A stand-in for llama-cpp-python's `llama_cpp` module, for CI (which does not build llama.cpp): the calls
pacos makes (pacos.infer.llamacpp), with llama.cpp's stateful semantics, over transformers reading the
same GGUF file.

- `Llama(model_path=..., n_ctx=..., n_threads=..., n_threads_batch=..., verbose=...)` loads the file (a
  file it cannot read is a ValueError, as in llama-cpp-python); n_vocab and token_eos come from the
  file's metadata, and weights whose rows do not match the vocabulary are refused, as llama.cpp does.
- `reset()` only sets n_tokens to 0; `eval(tokens)` first drops the cache past n_tokens (llama-cpp-python's
  `kv_cache_seq_rm(-1, n_tokens, -1)`), then appends the tokens and computes the last one's logits.
  Going past n_ctx fails like llama_decode does.
- `llama_get_logits_ith(llm.ctx, -1)` is a ctypes float pointer to those n_vocab logits.

Tests install it with `monkeypatch.setitem(sys.modules, "llama_cpp", fake_llama_cpp)`; a subprocess gets
it through a directory on PYTHONPATH holding `llama_cpp.py` that imports this module.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Llama", "llama_get_logits_ith"]


class _Context:
    """What `Llama.ctx` points to: the last eval's logits (llama.cpp's output buffer)."""

    def __init__(self, n_vocab: int) -> None:
        self.logits = (ctypes.c_float * n_vocab)()
        self.has_logits = False


def llama_get_logits_ith(ctx: _Context, i: int) -> Any:
    if not isinstance(ctx, _Context):
        raise TypeError(f"llama_get_logits_ith: not a context: {ctx!r}")
    if i != -1:  # pacos asks for the last position only; the stand-in keeps no others
        raise NotImplementedError("the stand-in keeps the last position's logits only (i=-1)")
    if not ctx.has_logits:
        raise RuntimeError("llama_get_logits_ith: no logits (nothing evaluated since the context was made)")
    return ctypes.cast(ctx.logits, ctypes.POINTER(ctypes.c_float))


def _metadata(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    return {
        "n_vocab": len(fields["tokenizer.ggml.tokens"].data),
        "eos": int(fields["tokenizer.ggml.eos_token_id"].contents()),
    }


class Llama:
    def __init__(
        self,
        model_path: str,
        *,
        n_ctx: int = 512,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        verbose: bool = True,
    ) -> None:
        from transformers import AutoModelForCausalLM

        path = Path(model_path)
        try:
            meta = _metadata(path)
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32
            )
        except Exception:
            raise ValueError(f"Failed to load model from file: {model_path}") from None
        width = model.get_output_embeddings().weight.shape[0]
        if width != meta["n_vocab"]:
            raise ValueError(f"Failed to load model from file: {model_path}")
        self.model_path = model_path
        self.model = model.eval()
        self.verbose = verbose
        self._n_ctx = n_ctx
        self._n_vocab = meta["n_vocab"]
        self._eos = meta["eos"]
        self._ctx: _Context | None = _Context(self._n_vocab)
        self._cache: Any = None
        self.n_tokens = 0
        self.evals = 0  # model calls, for tests

    @property
    def ctx(self) -> _Context:
        assert self._ctx is not None, "the model is closed"
        return self._ctx

    def n_ctx(self) -> int:
        return self._n_ctx

    def n_vocab(self) -> int:
        return self._n_vocab

    def token_eos(self) -> int:
        return self._eos

    def reset(self) -> None:
        self.n_tokens = 0

    @torch.inference_mode()
    def eval(self, tokens: list[int]) -> None:
        from transformers import DynamicCache

        ctx = self.ctx
        tokens = [int(t) for t in tokens]
        if not tokens:
            return
        if self.n_tokens + len(tokens) > self._n_ctx:
            raise RuntimeError("llama_decode returned 1")  # what llama-cpp-python raises for a full context
        if self._cache is None or self.n_tokens == 0:
            self._cache = DynamicCache()
        elif self._cache.get_seq_length() > self.n_tokens:
            self._cache.crop(self.n_tokens)
        out = self.model(input_ids=torch.tensor([tokens]), past_key_values=self._cache, use_cache=True)
        self._cache = out.past_key_values
        np.ctypeslib.as_array(ctx.logits)[:] = out.logits[0, -1].float().numpy()
        ctx.has_logits = True
        self.n_tokens += len(tokens)
        self.evals += 1

    def close(self) -> None:
        self._ctx = None
        self._cache = None
