"""Prompt-lookup speculative decoding: tokens/s with and without, on answers that copy their input and on
answers that do not, pacos's engine vs transformers' `generate(prompt_lookup_num_tokens=K)`.

Same machine, same run, same model (SmolLM2-135M-Instruct by default: the embedded teacher and judge),
greedy, EOS respected (the same text with and without lookup: that is the point), up to `--new-tokens`.
Two kinds of prompts, 8 each, English and Chinese:
- copy: rewrite, correct or extract from a passage given in the prompt (what the judge, data cleaning
  and editing requests do): the answer repeats spans of its prompt;
- open: Alpaca prompts of the bundled seed tasks: the answer is new text.
Batch 1 (the prompts one after another, as `pacos chat` and one client of `pacos serve` see it) and batch 8
(all eight in one `generate` call; transformers' prompt lookup takes one sequence at a time, so it has no
batch-8 row). Each configuration runs in a fresh process and takes the median of `--repeats` calls.

    .venv/bin/python benchmarks/bench_lookup.py [--model smollm2-135m-instruct] [--k 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

PASSAGES = [
    "Our team met on Tuesday to discuss the new budget. We agreed to spend less on travel and more on "
    "training, and Maria will send the final numbers to everyone by Friday.",
    "The library opens at 9 am on weekdays and at 10 am on weekends. Books can be borrowed for three weeks "
    "and renewed twice online, unless someone else has reserved them.",
    "Preheat the oven to 180 degrees. Mix the flour, sugar and butter, add two eggs, and bake the dough "
    "for 25 minutes until the top is golden brown.",
    "The meeting with the suppliers is moved from March 3 to March 10. Please update your calendars and "
    "tell Tom, who is travelling until March 5.",
]
PASSAGES_ZH = [
    "我们周二开会讨论了新的预算。大家同意减少差旅费用，增加培训投入，玛丽会在周五前把最终数字发给所有人。",
    "图书馆工作日上午九点开门，周末上午十点开门。图书可以借三周，如果没有其他人预约，可以在网上续借两次。",
]
COPY_TASKS = [
    "Rewrite the following text with every sentence in the past tense, changing nothing else:\n\n{}",
    "Correct any spelling or grammar mistakes in the following text and return the whole corrected text:"
    "\n\n{}",
    "Copy the following text, putting each sentence on its own line:\n\n{}",
]
COPY_TASKS_ZH = ["把下面这段话原样抄写一遍，每句话单独一行：\n\n{}"]


def _prompts(kind: str) -> list[str]:
    if kind == "copy":
        english = [task.format(p) for p in PASSAGES for task in COPY_TASKS][:6]
        return english + [COPY_TASKS_ZH[0].format(p) for p in PASSAGES_ZH]
    from pacos.data.io import read_records

    records = read_records("seed-tasks")
    english = [r for r in records if not any("\u4e00" <= c <= "\u9fff" for c in r["instruction"])][:6]
    chinese = [r for r in records if any("\u4e00" <= c <= "\u9fff" for c in r["instruction"])][:2]
    return [f"{r['instruction']}\n\n{r['input']}".strip() for r in english + chinese]


def child(config: str, model_name: str, kind: str, batch: int, k: int, new_tokens: int, repeats: int) -> dict:
    import torch

    prompts = _prompts(kind)
    groups = [[p] for p in prompts] if batch == 1 else [prompts]
    if config.startswith("hf"):
        from pacos.models import load_model, load_tokenizer

        tokenizer = load_tokenizer(model_name)
        model = load_model(model_name, dtype=torch.bfloat16 if "bf16" in config else torch.float32).eval()
        from pacos.infer.prompting import chat_prompt

        # The token ids pacos's engine runs: the chat template's text, which writes its own BOS.
        ids = [
            tokenizer(
                chat_prompt([{"role": "user", "content": p}], "chat", tokenizer), add_special_tokens=False
            ).input_ids
            for p in prompts
        ]
        lookup = {"prompt_lookup_num_tokens": k} if config.endswith("lookup") else {}

        def call() -> list[list[int]]:
            rows = []
            for row in ids:
                with torch.inference_mode():
                    out = model.generate(
                        torch.tensor([row]), max_new_tokens=new_tokens, do_sample=False, **lookup
                    )
                rows.append(out[0, len(row) :].tolist())
            return rows

    else:
        from pacos.infer import SamplingParams, TorchEngine

        engine = TorchEngine.load(model_name, quantize="auto")  # what chat and serve load by default
        engine.prompt_lookup = k if config.endswith("lookup") else 0
        params = SamplingParams(max_new_tokens=new_tokens)
        encoded = [[engine.encode_chat([{"role": "user", "content": p}]) for p in group] for group in groups]

        def call() -> list[list[int]]:
            return [c.token_ids for group in encoded for c in engine.generate(group, params)]

    call()  # warm-up
    times, rows = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        rows = call()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens = sum(len(r) for r in rows)
    return {
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 2),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--k", type=int, default=5, help="Drafted tokens per step.")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", default="hf-bf16,hf-bf16-lookup,pacos,pacos-lookup")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = child(args.child, args.model, args.kind, args.batch, args.k, args.new_tokens, args.repeats)
        print(json.dumps(out))
        return
    results: dict = {
        "model": args.model,
        "k": args.k,
        "new_tokens": args.new_tokens,
        "machine": platform.processor(),
    }
    for kind in ("copy", "open"):
        for batch in [int(b) for b in args.batches.split(",")]:
            for config in args.configs.split(","):
                if config.startswith("hf") and batch > 1:
                    continue  # transformers' prompt lookup decodes one sequence at a time
                command = [sys.executable, __file__, "--child", config, "--kind", kind, "--batch", str(batch),
                           "--model", args.model, "--k", str(args.k), "--new-tokens", str(args.new_tokens),
                           "--repeats", str(args.repeats)]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    print(done.stderr[-2000:], file=sys.stderr)
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                key = f"{kind} b{batch} {config}"
                plain = results.get(f"{kind} b{batch} {config.removesuffix('-lookup')}")
                if config.endswith("lookup") and plain:
                    result["speedup"] = round(result["tokens_per_s"] / plain["tokens_per_s"], 2)
                    result["same_tokens"] = result["rows"] == plain["rows"]
                results[key] = result
                shown = {k: v for k, v in result.items() if k != "rows"}
                print(key, json.dumps(shown), file=sys.stderr, flush=True)
    for value in results.values():
        if isinstance(value, dict):
            value.pop("rows", None)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
