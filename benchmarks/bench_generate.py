"""Greedy decoding speed: the pacos engine vs transformers `generate` vs llama.cpp, Gemma 3 270M.

Same machine, same run, same model, same prompts (Alpaca prompts of the bundled seed tasks), greedy,
a fixed number of new tokens per prompt (EOS ignored, so every run does the same work), batch 1 (4
prompts, one after another) and batch 8 (8 different prompts, left-padded, one call). tokens/s = new
tokens / wall time of the call, prefill included. Each configuration runs in a fresh process (its own
threads and memory), warms up once, then takes the median of `--repeats` timed calls.

- hf: `model.generate(do_sample=False)` on the model loaded with `AutoModelForCausalLM`, in fp32 (what
  `from_pretrained` gives for this checkpoint) and in bf16.
- pacos: `pacos.infer.TorchEngine` in fp32, bf16, fp32 with int8 weights (`--quantize int8`; the matmuls
  take bf16 activations), and that with `--compile` (torch.compile of the decode step; its one-off
  compile time is reported apart, as `compile_seconds`).
- pacos-bf16-json: pacos bf16 with every row constrained to JSON_SCHEMA (`response_format` json_schema;
  llguidance computes each row's allowed-token mask every step): the price of constrained output. The
  schema cannot be completed within the budget, so every row generates `--new-tokens` tokens.
- llama.cpp (when llama-cpp-python is installed): the GGUF files `pacos export --format gguf` writes
  (F16, Q8_0) and the original Q4_K_M, batch 1 only (its Python API decodes one sequence), its own
  greedy sampler, all cores.

`agree` is the share of new tokens that equal transformers fp32 greedy tokens, position by position up
to the first difference in each row (a quality check: lower precision may pick another token at a
near-tie, after which the texts part ways).

    .venv/bin/python benchmarks/bench_generate.py [--new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "gemma-3-270m"
SEQUENTIAL = 4  # prompts per timed call at batch 1
CONFIGS = [
    "hf-fp32",
    "hf-bf16",
    "pacos-fp32",
    "pacos-bf16",
    "pacos-int8",
    "pacos-int8-compiled",
    "pacos-bf16-json",
    "llamacpp-f16",
    "llamacpp-q8_0",
    "llamacpp-q4_k_m",
]


# At least 64 list items: no row can finish its JSON within the token budget, so constrained and free
# rows generate the same number of tokens and the tokens/s compare like for like.
JSON_SCHEMA = {
    "type": "object",
    "properties": {"points": {"type": "array", "items": {"type": "string"}, "minItems": 64}},
    "required": ["points"],
}


def _prompts(n: int) -> list[str]:
    from pacos.data.io import read_records
    from pacos.data.templates import render_prompt

    records = read_records("seed-tasks")[:: 186 // n][:n]
    return [render_prompt(r, "alpaca") for r in records]


def _reference_tokens(results: dict) -> dict:
    return {batch: results.get(f"hf-fp32/{batch}", {}).get("tokens") for batch in (1, 8)}


def _agreement(tokens: list[list[int]], reference: list[list[int]] | None) -> float | None:
    if reference is None:
        return None
    same = total = 0
    for row, ref in zip(tokens, reference, strict=True):
        total += len(ref)
        for a, b in zip(row, ref):
            if a != b:
                break
            same += 1
    return round(same / total, 3)


def _time(call, repeats: int) -> tuple[float, list]:
    call()  # warm-up: first-call allocations and kernel selection
    seconds, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), out


def child(config: str, batch: int, new_tokens: int, repeats: int, gguf_dir: str) -> dict:
    import torch

    # Batch 1: four prompts, one after another; batch 8: eight prompts in one call.
    groups = [[p] for p in _prompts(SEQUENTIAL)] if batch == 1 else [_prompts(batch)]
    kind, variant = config.split("-", 1)
    compile_seconds = None
    if kind == "hf":
        from pacos.models import load_model, load_tokenizer

        tokenizer = load_tokenizer(MODEL)
        tokenizer.padding_side = "left"
        model = load_model(MODEL, dtype=torch.float32 if variant == "fp32" else torch.bfloat16).eval()
        encoded = [tokenizer(group, return_tensors="pt", padding=True) for group in groups]

        def call():
            rows = []
            for inputs in encoded:
                with torch.inference_mode():
                    out = model.generate(
                        **inputs,
                        max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                rows += out[:, inputs.input_ids.shape[1] :].tolist()
            return rows

    elif kind == "pacos":
        from pacos.infer import SamplingParams, TorchEngine

        base = {"fp32": "float32", "bf16": "bfloat16", "bf16-json": "bfloat16"}.get(variant, "float32")
        quantize = "int8" if variant.startswith("int8") else "none"
        engine = TorchEngine.load(MODEL, dtype=base, quantize=quantize, template="alpaca")
        compile_seconds = round(engine.compile(), 1) if variant.endswith("compiled") else None
        schema = JSON_SCHEMA if variant.endswith("json") else None
        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True, json_schema=schema)

        def call():
            return [c.token_ids for group in groups for c in engine.generate(group, params)]

    else:
        import llama_cpp

        from pacos.models import EMBEDDED_MODELS, load_tokenizer

        path = EMBEDDED_MODELS[MODEL].gguf() if variant == "q4_k_m" else Path(gguf_dir) / f"{variant}.gguf"
        threads = len(os.sched_getaffinity(0))
        llm = llama_cpp.Llama(
            str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        tokenizer = load_tokenizer(MODEL)
        ids = [tokenizer(p).input_ids for group in groups for p in group]

        def call():
            rows = []
            for prompt in ids:
                row = []
                for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                    row.append(int(token))
                    if len(row) == new_tokens:
                        break
                rows.append(row)
            return rows

    seconds, tokens = _time(call, repeats)
    generated = sum(len(row) for row in tokens)  # new_tokens per row, unless a JSON answer ended first
    result = {"tokens_per_s": round(generated / seconds, 2), "seconds": round(seconds, 3)}
    if compile_seconds:
        result["compile_seconds"] = compile_seconds  # once per process, before the timed calls
    return {**result, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--gguf-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.new_tokens, args.repeats, args.gguf_dir)))
        return

    configs = args.configs.split(",")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        configs = [c for c in configs if not c.startswith("llamacpp")]
    results: dict = {}
    with tempfile.TemporaryDirectory() as gguf_dir:
        for outtype in ("f16", "q8_0"):
            if f"llamacpp-{outtype}" in configs:
                from pacos.export.gguf import export_gguf

                export_gguf(MODEL, Path(gguf_dir) / f"{outtype}.gguf", outtype)
        for batch in (1, 8):
            for config in configs:
                if config.startswith("llamacpp") and batch != 1:
                    continue
                command = [
                    sys.executable,
                    __file__,
                    "--child",
                    config,
                    "--batch",
                    str(batch),
                    "--new-tokens",
                    str(args.new_tokens),
                    "--repeats",
                    str(args.repeats),
                    "--gguf-dir",
                    gguf_dir,
                ]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    results[f"{config}/{batch}"] = {"error": done.stderr.strip().splitlines()[-1]}
                    continue
                results[f"{config}/{batch}"] = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"{config} batch {batch}: {results[f'{config}/{batch}']['tokens_per_s']} tokens/s",
                    file=sys.stderr,
                    flush=True,
                )
    reference = _reference_tokens(results)
    table = {}
    for key, value in results.items():
        batch = int(key.split("/")[1])
        if "tokens" in value:
            value["agree"] = _agreement(value.pop("tokens"), reference[batch])
        table[key] = value
    rate = {k: v.get("tokens_per_s") for k, v in table.items()}

    def ratio(a: str, b: str) -> float | None:
        return round(rate[a] / rate[b], 2) if rate.get(a) and rate.get(b) else None

    report = {
        "model": MODEL,
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform()},
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "results": table,
        "speedups": {
            "batch 1, pacos int8 compiled vs hf fp32": ratio("pacos-int8-compiled/1", "hf-fp32/1"),
            "batch 1, pacos int8 compiled vs hf bf16": ratio("pacos-int8-compiled/1", "hf-bf16/1"),
            "batch 1, pacos int8 vs hf fp32": ratio("pacos-int8/1", "hf-fp32/1"),
            "batch 1, pacos int8 vs hf bf16": ratio("pacos-int8/1", "hf-bf16/1"),
            "batch 1, pacos fp32 vs hf fp32": ratio("pacos-fp32/1", "hf-fp32/1"),
            "batch 1, pacos bf16 vs hf bf16": ratio("pacos-bf16/1", "hf-bf16/1"),
            "batch 8 vs batch 1, pacos int8": ratio("pacos-int8/8", "pacos-int8/1"),
            "batch 8 vs batch 1, pacos int8 compiled": ratio(
                "pacos-int8-compiled/8", "pacos-int8-compiled/1"
            ),
            "batch 8 vs batch 1, pacos fp32": ratio("pacos-fp32/8", "pacos-fp32/1"),
            "batch 8, pacos int8 vs hf fp32": ratio("pacos-int8/8", "hf-fp32/8"),
            "batch 1, pacos bf16 json-constrained vs free": ratio("pacos-bf16-json/1", "pacos-bf16/1"),
            "batch 8, pacos bf16 json-constrained vs free": ratio("pacos-bf16-json/8", "pacos-bf16/8"),
            "batch 1, pacos int8 compiled vs llama.cpp q8_0": ratio(
                "pacos-int8-compiled/1", "llamacpp-q8_0/1"
            ),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
