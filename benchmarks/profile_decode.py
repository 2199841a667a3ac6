"""Where the milliseconds of one decode step go: Gemma 3 270M at batch 1, 8 and 32.

For each configuration (weights: fp32, bf16, fp16, int8), in its own process: prefill B Alpaca prompts
of the seed tasks, warm up, then time decode steps of the running batch (`Decoder.step`, greedy and
sampled at temperature 0.7 / top_p 0.9) and profile them with torch.profiler, ops grouped into matmuls
of the layers, the LM head's matmul, attention, KV-cache copies, sampling and the rest (norms,
activations, rotary, masks: the small ops between matmuls). Also prints this machine's floor for a step:
the larger of (weight bytes / measured read bandwidth) and (FLOPs / measured matmul rate).

    .venv/bin/python benchmarks/profile_decode.py [--configs fp32,int8] [--batches 1,8,32] [--steps 8]

Runs on any pacos version whose Decoder has add/step (PYTHONPATH=another checkout for "before").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

MODEL = "gemma-3-270m"
CONFIGS = {  # name: (dtype, quantize)
    "fp32": ("float32", "none"),
    "bf16": ("bfloat16", "none"),
    "fp16": ("float32", "fp16"),
    "int8": ("float32", "int8"),
}


def _machine_rates() -> dict:
    import torch

    def seconds(call, n: int = 5) -> float:
        call()
        start = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - start) / n

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    big = torch.randn(64 * 1024 * 1024)  # 256 MB, written: pages really exist
    return {
        "fp32_matmul_gflops": round(2 * 2048**3 / seconds(lambda: a @ b) / 1e9, 1),
        "read_gb_per_s": round(big.numel() * 4 / seconds(lambda: big.sum()) / 1e9, 1),
    }


def _group(name: str, shape: list) -> str:
    if name in {"aten::mm", "aten::addmm", "aten::bmm", "quantized::linear_dynamic",
                "quantized::linear_dynamic_fp16", "aten::_weight_int8pack_mm"}:  # fmt: skip
        return "matmul"
    if "attention" in name:
        return "attention"
    if name in {"aten::cat", "aten::index_select", "aten::constant_pad_nd"}:
        return "kv_cache_and_masks"
    if name in {"aten::argmax", "aten::topk", "aten::sort", "aten::multinomial", "aten::softmax",
                "aten::_softmax", "aten::cumsum", "aten::logsumexp", "aten::log_softmax"}:  # fmt: skip
        return "sampling"
    return "other_ops"


def child(config: str, batch: int, steps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pacos.data.io import read_records
    from pacos.data.templates import render_prompt
    from pacos.infer import SamplingParams, TorchEngine
    from pacos.infer.decoder import Decoder

    dtype, quantize = CONFIGS[config]
    engine = TorchEngine.load(MODEL, dtype=dtype, quantize=quantize, template="alpaca")
    records = read_records("seed-tasks")[:batch]
    prompts = [engine.encode(render_prompt(r, "alpaca")) for r in records]
    out: dict = {"config": config, "batch": batch}
    for mode, params in {
        "greedy": SamplingParams(max_new_tokens=10_000, ignore_eos=True),
        "sampled": SamplingParams(max_new_tokens=10_000, ignore_eos=True, temperature=0.7, top_p=0.9, seed=1),
    }.items():
        decoder = Decoder(engine)
        decoder.add([engine.new_sequence(p, params, lambda e: None) for p in prompts])
        for _ in range(4):  # prefill, then warm-up steps
            decoder.step()
        start = time.perf_counter()
        for _ in range(steps):
            decoder.step()
        out[f"{mode}_step_ms"] = round((time.perf_counter() - start) / steps * 1000, 1)
        if mode == "greedy":
            head = engine.model.get_output_embeddings()
            hidden = torch.randn(batch, 1, engine.model.config.get_text_config().hidden_size)
            hidden = hidden.to(engine.dtype)
            with torch.inference_mode():
                head(hidden)
                start = time.perf_counter()
                for _ in range(steps):
                    head(hidden)
            out["lm_head_ms"] = round((time.perf_counter() - start) / steps * 1000, 1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                decoder.step()
        groups: dict[str, float] = {}
        total = 0.0
        for event in prof.key_averages():
            group = _group(event.key, [])
            groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total / 1000 / steps
            total += event.self_cpu_time_total / 1000 / steps
        out[f"{mode}_profile_ms"] = {k: round(v, 1) for k, v in sorted(groups.items())}
        out[f"{mode}_profiled_ms"] = round(total, 1)
    params = sum(p.numel() for p in engine.model.parameters()) + sum(
        b.numel() for b in engine.model.buffers()
    )
    out["tokens_per_s_greedy"] = round(batch / out["greedy_step_ms"] * 1000, 1)
    out["parameters_and_buffers"] = params
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="fp32,int8")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.steps)))
        return
    report: dict = {"model": MODEL, "machine": _machine_rates(), "results": []}
    # Floor of a step: Gemma 3 270M's 268M weights are 100M in the layers and 168M in the LM head (tied to
    # the embedding, of which a step reads one row): every weight is read once and multiplied by each row.
    matmul_weights = 268_098_176
    rate = report["machine"]
    for config in args.configs.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            command = [sys.executable, __file__, "--child", config, "--batch", str(batch),
                       "--steps", str(args.steps)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                report["results"].append({"config": config, "batch": batch, "error": done.stderr[-500:]})
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            bytes_per_weight = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": (100 * 2 + 168 * 1) / 268}[config]
            bytes_ms = matmul_weights * bytes_per_weight / (rate["read_gb_per_s"] * 1e9) * 1000
            flops_ms = 2 * matmul_weights * batch / (rate["fp32_matmul_gflops"] * 1e9) * 1000
            result["floor_ms"] = round(max(bytes_ms, flops_ms), 1)
            result["fraction_of_floor"] = round(result["floor_ms"] / result["greedy_step_ms"], 2)
            report["results"].append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
