"""Inference: one engine interface (`Engine`), its torch and llama.cpp backends, sampling, streaming text and
prompt formats; `load_engine` picks the backend."""

from __future__ import annotations

from pacos.errors import PacosError
from pacos.infer.decoder import Completion, Event
from pacos.infer.engine import Engine
from pacos.infer.sampling import SamplingParams, TokenLogprob
from pacos.infer.torch_engine import TorchEngine

__all__ = [
    "BACKENDS",
    "Completion",
    "Engine",
    "Event",
    "SamplingParams",
    "TokenLogprob",
    "TorchEngine",
    "load_engine",
]

BACKENDS = ("torch", "llama.cpp")


def load_engine(
    spec: str,
    *,
    backend: str = "torch",
    dtype: str = "auto",
    device: str = "auto",
    quantize: str = "none",
    compile: bool = False,
    template: str | None = None,
    trust_remote_code: bool = False,
) -> Engine:
    """An Engine for `spec` on the chosen backend (llama.cpp: GGUF files and embedded names only)."""
    if backend == "llama.cpp":
        from pacos.infer.llamacpp import LlamaCppEngine

        return LlamaCppEngine.load(spec, template=template)
    if backend != "torch":
        raise PacosError(f"backend '{backend}': choose {' or '.join(BACKENDS)}")
    return TorchEngine.load(
        spec,
        dtype=dtype,
        device=device,
        quantize=quantize,
        compile=compile,
        template=template,
        trust_remote_code=trust_remote_code,
    )
