"""Greedy decoding speed: the pacos engine and `pacos serve` vs transformers `generate` vs llama.cpp.

Same machine, same run, same model, same prompts (Alpaca prompts of the bundled seed tasks), greedy,
a fixed number of new tokens per prompt (EOS ignored, so every run does the same work), batch 1 (4
prompts, one after another), batch 8 and batch 32 (different prompts in one call). tokens/s = new tokens
/ wall time of the call, prefill included. Each configuration runs in a fresh process (its own threads
and memory), warms up once, then takes the median of `--repeats` timed calls.

- hf: `model.generate(do_sample=False)` on the model loaded with `AutoModelForCausalLM`, in fp32 (what
  `from_pretrained` gives for this checkpoint) and, where the CPU computes bf16 natively (AMX,
  AVX512-BF16) or on a GPU, in bf16 (elsewhere bf16 is emulated, about 100x slower: skipped).
- hfcb: transformers' own continuous batching (`model.generate_batch`: paged KV cache, prompts and
  decode steps of all rows flattened in one forward), fp32, its cache sized for the batch (its default
  sizes it to free memory and took 30+ s per call here).
- pacos: `pacos.infer.TorchEngine` with fp32 weights, fp16 weights (`--quantize fp16`), the int8 head
  (`--quantize int8`), bf16 where native; `-compiled`: the same with `--compile` (decode-only steps
  through torch.compile; its compile time is reported apart, before the timed calls).
- pacos-fp16-json: fp16 with every row constrained to JSON_SCHEMA (llguidance computes each row's
  allowed-token mask every step): the price of constrained output. The schema cannot be completed
  within the budget, so every row generates `--new-tokens` tokens.
- serve: `pacos serve --max-batch-size B` (fp16 or int8 weights; `-compiled`: `--compile`) in its own
  process, B concurrent `/v1/completions` requests (prompt token ids, temperature 0, `ignore_eos`,
  `return_token_ids` to read the tokens back; before 2026-12-05, `logprobs: 0`)
  sent together; what a client of the server gets, HTTP and streaming included.
- llama.cpp (when llama-cpp-python is installed): the GGUF files `pacos export --format gguf` writes
  (F16, Q8_0) and the original Q4_K_M, batch 1 only (its Python API decodes one sequence), its own
  greedy sampler, all cores.

`agree` is the share of new tokens that equal transformers fp32 greedy tokens, position by position up
to the first difference in each row (a quality check: lower precision may pick another token at a
near-tie, after which the texts part ways).

    .venv/bin/python benchmarks/bench_generate.py [--model gemma-3-270m] [--new-tokens 64] [--repeats 3]
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

SEQUENTIAL = 4  # prompts per timed call at batch 1
CONFIGS = [
    "hf-fp32",
    "hf-bf16",
    "hfcb-fp32",
    "pacos-fp32",
    "pacos-bf16",
    "pacos-bf16-int8",
    "pacos-bf16-fp16",
    "pacos-fp16",
    "pacos-int8",
    "pacos-bf16-compiled",
    "pacos-fp16-compiled",
    "pacos-int8-compiled",
    "pacos-fp16-json",
    "serve-bf16",
    "serve-bf16-fp16",
    "serve-fp16",
    "serve-int8",
    "serve-fp16-compiled",
    "serve-int8-compiled",
    "llamacpp-f16",
    "llamacpp-q8_0",
    "llamacpp-q4_k_m",
]
WEIGHTS = {  # variant: (dtype, quantize)
    "fp32": ("float32", "none"),
    "bf16": ("bfloat16", "none"),
    "bf16-int8": ("bfloat16", "int8"),  # bf16 activations (native bf16 CPUs) with the int8 head
    "bf16-fp16": ("bfloat16", "fp16"),  # bf16 activations, fbgemm fp16 below 16 rows, bf16 weights above
    "fp16": ("float32", "fp16"),
    "int8": ("float32", "int8"),
    "bf16-compiled": ("bfloat16", "none"),
    "fp16-compiled": ("float32", "fp16"),
    "int8-compiled": ("float32", "int8"),
    "fp16-json": ("float32", "fp16"),
}


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

    records = read_records("seed-tasks")[:: 175 // n][:n]
    return [render_prompt(r, "alpaca") for r in records]


def _reference_tokens(results: dict, batches: list[int]) -> dict:
    return {batch: results.get(f"hf-fp32/{batch}", {}).get("tokens") for batch in batches}


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


def _serve_call(model: str, variant: str, batch: int, groups: list[list[str]], new_tokens: int):
    """Start `pacos serve` for this batch size; a call sends each group's prompts as concurrent requests."""
    import asyncio

    import httpx2

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_serve import API_KEY, free_port, start_server

    from pacos.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    port = free_port()
    dtype, quantize = WEIGHTS[variant]
    extra = ["--quantize", quantize, "--dtype", dtype, "--max-batch-size", str(batch), "--template", "alpaca"]
    extra += ["--compile"] if variant.endswith("compiled") else []
    extra += os.environ.get("BENCH_SERVE_ARGS", "").split()  # e.g. "--prefill-chunk 64"
    server = start_server(model, port, extra)
    ids = [[tokenizer(p).input_ids for p in group] for group in groups]

    async def send(client: httpx2.AsyncClient, prompt: list[int]) -> list[int]:
        body = {"model": model, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0,
                "ignore_eos": True, "return_token_ids": True}  # fmt: skip
        reply = await client.post(f"http://127.0.0.1:{port}/v1/completions", json=body)
        reply.raise_for_status()
        return reply.json()["choices"][0]["token_ids"]

    async def run() -> list:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx2.AsyncClient(timeout=3600, headers=headers) as client:
            rows = []
            for group in ids:
                rows += await asyncio.gather(*(send(client, prompt) for prompt in group))
            return rows

    return server, lambda: asyncio.run(run())


def child(config: str, batch: int, new_tokens: int, repeats: int, gguf_dir: str, model_name: str) -> dict:
    import torch

    # Batch 1: four prompts, one after another; batch 8 or 32: that many prompts in one call.
    groups = [[p] for p in _prompts(SEQUENTIAL)] if batch == 1 else [_prompts(batch)]
    kind, variant = config.split("-", 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # pacos and serve pick the same by themselves
    compile_seconds = None
    server = None
    if kind == "hf":
        from pacos.models import load_model, load_tokenizer

        tokenizer = load_tokenizer(model_name)
        tokenizer.padding_side = "left"
        dtype = torch.float32 if variant == "fp32" else torch.bfloat16
        model = load_model(model_name, dtype=dtype).to(device).eval()
        encoded = [tokenizer(group, return_tensors="pt", padding=True).to(device) for group in groups]

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

    elif kind == "hfcb":
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        from pacos.models import load_model, load_tokenizer

        tokenizer = load_tokenizer(model_name)
        model = load_model(model_name, dtype=torch.float32).to(device).eval()
        model.set_attn_implementation("sdpa")
        encoded = [[tokenizer(p).input_ids for p in group] for group in groups]
        longest = max(len(ids) for group in encoded for ids in group) + new_tokens
        cache = ContinuousBatchingConfig(
            num_blocks=len(encoded[0]) * (longest // 256 + 1) + 4,
            max_batch_tokens=max(sum(len(ids) for ids in group) for group in encoded),
        )
        settings = GenerationConfig(
            max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=tokenizer.pad_token_id
        )

        def call():
            rows = []
            for group in encoded:
                with torch.inference_mode():
                    out = model.generate_batch(
                        group, settings, continuous_batching_config=cache, progress_bar=False, warmup=False
                    )
                order = sorted(out, key=lambda request: int(request.rsplit("_", 1)[1]))  # req_0, req_1, ...
                rows += [out[request].generated_tokens for request in order]
            return rows

    elif kind == "pacos":
        from pacos.infer import SamplingParams, TorchEngine

        dtype, quantize = WEIGHTS[variant]
        engine = TorchEngine.load(model_name, dtype=dtype, quantize=quantize, template="alpaca")
        engine.max_batch_size = batch
        compile_seconds = round(engine.compile(), 1) if variant.endswith("compiled") else None
        schema = JSON_SCHEMA if variant.endswith("json") else None
        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True, json_schema=schema)

        def call():
            return [c.token_ids for group in groups for c in engine.generate(group, params)]

    elif kind == "serve":
        server, call = _serve_call(model_name, variant, batch, groups, new_tokens)
    else:
        import llama_cpp

        from pacos.models import EMBEDDED_MODELS, load_tokenizer

        path = (
            EMBEDDED_MODELS[model_name].gguf() if variant == "q4_k_m" else Path(gguf_dir) / f"{variant}.gguf"
        )
        threads = len(os.sched_getaffinity(0))
        llm = llama_cpp.Llama(
            str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        tokenizer = load_tokenizer(model_name)
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

    try:
        seconds, tokens = _time(call, repeats)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    generated = sum(len(row) for row in tokens)  # new_tokens per row, unless a JSON answer ended first
    result = {"tokens_per_s": round(generated / seconds, 2), "seconds": round(seconds, 3)}
    if compile_seconds:
        result["compile_seconds"] = compile_seconds  # once per process, before the timed calls
    return {**result, "tokens": tokens}


def _hf_best(rate: dict, batch: int) -> str | None:
    candidates = [k for k in (f"hf-fp32/{batch}", f"hf-bf16/{batch}", f"hfcb-fp32/{batch}") if rate.get(k)]
    return max(candidates, key=lambda k: rate[k]) if candidates else None


def _report(
    args: argparse.Namespace, results: dict, configs: list[str], batches: list[int], skipped: dict
) -> dict:
    """The JSON report of the configurations measured so far (their token lists become agreement rates)."""
    import torch

    results = {k: dict(v) for k, v in results.items()}
    reference = _reference_tokens(results, batches)
    table = {}
    for key, value in results.items():
        batch = int(key.split("/")[1])
        if "tokens" in value:
            rows = value.pop("tokens")
            value["agree"] = _agreement(rows, reference[batch])  # the server returns token ids too
        table[key] = value
    rate = {k: v.get("tokens_per_s") for k, v in table.items()}
    speedups = {}
    for batch in batches:
        best = _hf_best(rate, batch)
        if best is None:
            continue
        for config in configs:
            key = f"{config}/{batch}"
            if not config.startswith("hf") and rate.get(key):
                name = f"batch {batch}, {config} vs {best.split('/')[0]}"
                speedups[name] = round(rate[key] / rate[best], 2)
    report = {
        "model": args.model,
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "skipped": skipped,
        "results": table,
        "speedups_vs_transformers_best": speedups,
    }
    return report


def main() -> None:
    import torch

    from pacos.device import cpu_has_fast_bf16
    from pacos.fileio import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", help="Also write the report here, rewritten after each configuration.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--gguf-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child, args.batch, args.new_tokens, args.repeats, args.gguf_dir, args.model)
        print(json.dumps(result))
        return

    configs = args.configs.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    skipped = {}
    if not torch.cuda.is_available() and not cpu_has_fast_bf16():
        for config in [c for c in configs if "bf16" in c]:
            skipped[config] = "this CPU emulates bf16 (no AMX or AVX512-BF16): about 100x slower than fp32"
            configs.remove(config)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        configs = [c for c in configs if not c.startswith("llamacpp")]
    results: dict = {}
    with tempfile.TemporaryDirectory() as gguf_dir:
        for outtype in ("f16", "q8_0"):
            if f"llamacpp-{outtype}" in configs:
                from pacos.export.gguf import export_gguf

                export_gguf(args.model, Path(gguf_dir) / f"{outtype}.gguf", outtype)
        for batch in batches:
            for config in configs:
                if config.startswith("llamacpp") and batch != 1:
                    continue
                command = [sys.executable, __file__, "--child", config, "--batch", str(batch),
                           "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
                           "--gguf-dir", gguf_dir, "--model", args.model]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    results[f"{config}/{batch}"] = {"error": done.stderr.strip().splitlines()[-1]}
                    print(f"{config} batch {batch}: {done.stderr[-300:]}", file=sys.stderr, flush=True)
                    continue
                results[f"{config}/{batch}"] = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"{config} batch {batch}: {results[f'{config}/{batch}']['tokens_per_s']} tokens/s",
                    file=sys.stderr,
                    flush=True,
                )
                if args.out:  # rewritten (atomically) after each configuration: a cut run keeps its results
                    write_json(args.out, _report(args, results, configs, batches, skipped))
    report = _report(args, results, configs, batches, skipped)
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
