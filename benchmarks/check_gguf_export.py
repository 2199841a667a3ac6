"""End-to-end check of `pacos export --format gguf` on the real model: a LoRA-tuned gemma-3-270m.

The claim checked: "A LoRA-tuned gemma-3-270m exported to F16 GGUF loads in llama-cpp-python and in
transformers and gives the same greedy continuation (first 20 tokens) as the pacos engine; Q8_0 agrees
on >= 90% of next-token argmaxes over a test text."

1. Greedy continuations: for 4 Alpaca prompts (one Chinese, one with an input), the first 20 greedy
   tokens (EOS not special) of the pacos engine (LoRA merged in fp32) vs transformers on the F16 GGUF
   (de-quantized to fp32) vs llama.cpp on the F16 GGUF, all fed the same prompt ids (the engine's
   tokenizer). Per prompt: identical or not, the first differing index, and there the reference model's
   gap between its top-2 logits (a small gap = a genuine near-tie). Q8_0's continuations are reported
   too, for information.
2. Next-token argmax agreement at every position of a test text (seed-task examples, English and
   Chinese; `--text-tokens`, default 400, under the 512-token sliding window) between the merged fp32
   model and llama.cpp / transformers on the Q8_0 file (pass: >= 0.90) and on the F16 file.
3. Tokenizers: llama.cpp's own tokenizer (and transformers' tokenizer read from the GGUF) vs the engine's
   on the prompts and the text.
4. File sizes and export times (each export merges the adapter into its base first).

`--adapter` defaults to the one `pacos quickstart` trains (runs/quickstart/model); when it is missing, a
3-step LoRA run on the seed tasks makes one. Progress goes to stderr; stdout is one JSON document.

    .venv/bin/python benchmarks/check_gguf_export.py [--adapter DIR] [--out-dir DIR]
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
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODEL = "gemma-3-270m"
NEW_TOKENS = 20
Q8_MIN_AGREEMENT = 0.90
PROMPTS = [
    {"instruction": "Give three tips for staying healthy.", "input": ""},
    {"instruction": "Translate the following sentence into French.", "input": "The weather is lovely today."},
    {"instruction": "用一句话解释什么是光合作用。", "input": ""},
    {"instruction": "Write a short poem about autumn leaves.", "input": ""},
]


def log(message: str) -> None:
    print(f"[check_gguf_export] {message}", file=sys.stderr, flush=True)


def ensure_adapter(adapter: Path, out_dir: Path) -> tuple[Path, bool]:
    """The adapter to test, and whether this script had to train it."""
    if adapter.is_dir():
        return adapter, False
    from pacos.train.config import TrainConfig
    from pacos.train.run import train

    target = out_dir / "adapter"
    log(f"{adapter} not found: training a 3-step LoRA adapter into {target}")
    config = TrainConfig(
        model=MODEL,
        data="seed-tasks",
        method="lora",
        max_steps=3,
        batch_size=4,
        micro_batch_size=2,
        max_length=256,
        lr=2e-4,
        output_dir=str(target),
        tensorboard=False,
    )
    train(config)
    return target, True


def test_text(engine: Any, n_tokens: int) -> tuple[str, list[int]]:
    """Whole Alpaca examples from the seed tasks (English, then Chinese), cut to `n_tokens` ids with BOS."""
    import re

    from pacos.data.io import read_records
    from pacos.data.templates import render_prompt

    records = read_records("seed-tasks")
    zh = [r for r in records if re.search(r"[\u4e00-\u9fff]", r["output"])]
    en = [r for r in records if r not in zh]
    picked = [en[0], en[10], zh[1], zh[5], en[20], zh[10]]  # zh[1] has an input
    text = "\n\n".join(render_prompt(r, "alpaca") + r["output"] for r in picked)
    ids = engine.encode(text)
    if len(ids) < n_tokens:
        raise SystemExit(f"test text has only {len(ids)} tokens; ask for fewer with --text-tokens")
    ids = ids[:n_tokens]
    return engine.tokenizer.decode(ids[1:]), ids  # the text those ids spell (BOS left out)


def top2(logits: torch.Tensor) -> dict[str, Any]:
    values, ids = logits.float().topk(2)
    return {"top1": int(ids[0]), "top2": int(ids[1]), "gap": round(float(values[0] - values[1]), 4)}


@torch.inference_mode()
def ref_logits(model: Any, ids: list[int]) -> torch.Tensor:
    """[positions, vocab] float32 logits of the merged fp32 model."""
    return model(input_ids=torch.tensor([ids])).logits[0].float()


@torch.inference_mode()
def hf_greedy(model: Any, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    x, cache = torch.tensor([ids]), None
    for _ in range(n):
        result = model(input_ids=x, past_key_values=cache, use_cache=True)
        cache = result.past_key_values
        out.append(int(result.logits[0, -1].argmax()))
        x = torch.tensor([[out[-1]]])
    return out


def llama_greedy(llm: Any, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for i in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        if i < n - 1:
            llm.eval([out[-1]])
    return out


def llama_all_logits(llm: Any, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)]))


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def compare_generation(ref_model: Any, prompt: list[int], ref: list[int], got: list[int]) -> dict[str, Any]:
    """`got` against the engine's `ref`; at a difference, the reference model's top-2 there."""
    diff = first_difference(ref, got)
    result: dict[str, Any] = {"identical": ref == got, "first_difference": diff}
    if diff is not None:
        result["tokens"] = got
        result["reference_top2_at_difference"] = top2(ref_logits(ref_model, prompt + ref[:diff])[-1])
    return result


def agreement(ref: torch.Tensor, got: torch.Tensor) -> dict[str, Any]:
    """Next-token argmax agreement at every position; each disagreement with the reference's top-2 gap."""
    want, have = ref.argmax(-1), got.argmax(-1)
    where = (want != have).nonzero().flatten().tolist()
    misses = [{"position": p, "got": int(have[p]), **top2(ref[p])} for p in where]
    return {
        "agreement": round(1 - len(where) / len(want), 4),
        "positions": len(want),
        "disagreements": len(where),
        "max_reference_gap_at_disagreement": max((m["gap"] for m in misses), default=None),
        "disagreement_detail": misses[:10],
        "max_abs_logit_diff": round(float((ref - got).abs().max()), 3),
    }


def run(adapter_arg: Path, out_dir: Path, text_tokens: int) -> dict[str, Any]:
    import llama_cpp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pacos.data.templates import render_prompt
    from pacos.export.gguf import export_gguf
    from pacos.infer import SamplingParams, TorchEngine

    start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> None:
        timings[name] = round(time.perf_counter() - since, 1)

    adapter, trained_here = ensure_adapter(adapter_arg, out_dir)
    if trained_here:
        lap("train_adapter", start)

    # 1. The pacos engine: LoRA merged in fp32; its tokenizer gives every backend's input ids.
    t = time.perf_counter()
    engine = TorchEngine.load(str(adapter), dtype="float32")
    lap("engine_load", t)
    prompts = [render_prompt(p, "alpaca") for p in PROMPTS]
    prompt_ids = [engine.encode(p) for p in prompts]
    t = time.perf_counter()
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    engine_tokens = [c.token_ids for c in engine.generate(prompt_ids, params)]
    lap("engine_generate", t)
    text, text_ids = test_text(engine, text_tokens)
    reference = ref_logits(engine.model, text_ids)

    # 2. Export.
    files: dict[str, dict[str, Any]] = {}
    for outtype in ("f16", "q8_0"):
        t = time.perf_counter()
        path = export_gguf(adapter, out_dir / f"{MODEL}-lora-{outtype}.gguf", outtype)
        files[outtype] = {
            "path": str(path),
            "bytes": path.stat().st_size,
            "mib": round(path.stat().st_size / 2**20, 1),
            "export_seconds": round(time.perf_counter() - t, 1),
        }
        log(f"exported {path} in {files[outtype]['export_seconds']} s")

    gen: dict[str, list[list[int]]] = {}
    agree: dict[str, dict[str, Any]] = {}
    tokenizers: dict[str, Any] = {}
    texts = {f"prompt_{i}": p for i, p in enumerate(prompts)} | {"test_text": text}
    want_ids = {k: engine.encode(v) for k, v in texts.items()}

    def tokenizer_check(name: str, encode: Any) -> None:
        mismatches = [k for k, v in texts.items() if encode(v) != want_ids[k]]
        tokenizers[name] = {"same_ids": not mismatches, "mismatches": mismatches}

    # 3. llama.cpp: greedy continuations, all-position logits, its own tokenizer.
    for outtype in ("f16", "q8_0"):
        t = time.perf_counter()
        llm = llama_cpp.Llama(
            model_path=files[outtype]["path"], n_ctx=2048, logits_all=True, verbose=False, n_threads=2
        )
        gen[f"llamacpp_{outtype}"] = [llama_greedy(llm, ids, NEW_TOKENS) for ids in prompt_ids]
        agree[f"llamacpp_{outtype}"] = agreement(reference, llama_all_logits(llm, text_ids))
        tokenizer_check(
            f"llamacpp_{outtype}", lambda s, llm=llm: llm.tokenize(s.encode(), add_bos=True, special=True)
        )
        llm.close()
        lap(f"llamacpp_{outtype}", t)
        log(f"llama.cpp {outtype} done")

    # 4. transformers reading the GGUF (de-quantized to fp32).
    for outtype in ("f16", "q8_0"):
        t = time.perf_counter()
        name = Path(files[outtype]["path"]).name
        model = AutoModelForCausalLM.from_pretrained(str(out_dir), gguf_file=name, dtype=torch.float32)
        model.eval()
        timings[f"transformers_{outtype}_load"] = round(time.perf_counter() - t, 1)
        gen[f"transformers_{outtype}"] = [hf_greedy(model, ids, NEW_TOKENS) for ids in prompt_ids]
        agree[f"transformers_{outtype}"] = agreement(reference, ref_logits(model, text_ids))
        if outtype == "f16":
            tok = AutoTokenizer.from_pretrained(str(out_dir), gguf_file=name)
            tokenizer_check("transformers_gguf", lambda s, tok=tok: tok(s).input_ids)
        del model
        gc.collect()
        lap(f"transformers_{outtype}", t)
        log(f"transformers {outtype} done")

    # Per prompt: every backend's continuation against the engine's.
    per_prompt = []
    for i, (record, ids, ref) in enumerate(zip(PROMPTS, prompt_ids, engine_tokens)):
        row: dict[str, Any] = {
            "instruction": record["instruction"],
            "input": record["input"],
            "prompt_tokens": len(ids),
            "pacos_tokens": ref,
            "pacos_text": engine.tokenizer.decode(ref),
        }
        for backend, outs in gen.items():
            row[backend] = compare_generation(engine.model, ids, ref, outs[i])
        per_prompt.append(row)

    def all_identical(backend: str) -> bool:
        return all(row[backend]["identical"] for row in per_prompt)

    checks = {
        "f16_greedy_20_identical_transformers": all_identical("transformers_f16"),
        "f16_greedy_20_identical_llamacpp": all_identical("llamacpp_f16"),
        "q8_0_argmax_agreement_llamacpp_ge_0.90": agree["llamacpp_q8_0"]["agreement"] >= Q8_MIN_AGREEMENT,
        "q8_0_argmax_agreement_transformers_ge_0.90": agree["transformers_q8_0"]["agreement"]
        >= Q8_MIN_AGREEMENT,
        "llamacpp_tokenizer_same_ids": all(tokenizers[f"llamacpp_{o}"]["same_ids"] for o in ("f16", "q8_0")),
        "transformers_gguf_tokenizer_same_ids": tokenizers["transformers_gguf"]["same_ids"],
    }
    claim = [k for k in checks if not k.endswith("tokenizer_same_ids")]
    timings["total"] = round(time.perf_counter() - start, 1)
    return {
        "claim": (
            "A LoRA-tuned gemma-3-270m exported to F16 GGUF loads in llama-cpp-python and in transformers "
            "and gives the same greedy continuation (first 20 tokens) as the pacos engine; Q8_0 agrees on "
            ">= 90% of next-token argmaxes over a test text."
        ),
        "claim_passed": all(checks[k] for k in claim),
        "all_passed": all(checks.values()),
        "checks": checks,
        "adapter": str(adapter),
        "adapter_trained_here": trained_here,
        "files": files,
        "greedy_continuations": {"new_tokens": NEW_TOKENS, "prompts": per_prompt},
        "argmax_agreement": {
            "reference": "pacos engine.model (LoRA merged, fp32)",
            "text_tokens": len(text_ids),
            "text_head": text[:120],
            **agree,
        },
        "tokenizers": tokenizers,
        "seconds": timings,
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "torch_threads": torch.get_num_threads(),
            **{p: version(p) for p in ("torch", "transformers", "llama_cpp_python", "gguf", "peft")},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, default=Path("runs/quickstart/model"))
    parser.add_argument("--out-dir", type=Path, default=None, help="where the GGUF files go (default: temp)")
    parser.add_argument("--text-tokens", type=int, default=400, help="length of the agreement test text")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.out_dir is None:
            out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacos-gguf-check-")))
        else:
            out_dir = args.out_dir
            out_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON alone
            report = run(args.adapter, out_dir, args.text_tokens)
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
