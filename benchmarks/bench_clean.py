"""Benchmark `pacos data clean` on a 50K-record Alpaca-like file with known, injected defects.

Prints JSON: wall time of the whole command (start-up, read, clean, write), records/s, peak RSS, and for
every rule the count found next to the number of defects injected for it (recall on known defects).
There is no maintained peer tool for this step (alpaca-cleaned was curated with one-off scripts and by
hand), so the yardstick is the 30 s budget on the 2-core reference machine.

    .venv/bin/python benchmarks/bench_clean.py [--n 50000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VERBS = [
    "Write",
    "Explain",
    "Describe",
    "List",
    "Summarize",
    "Generate",
    "Suggest",
    "Classify",
    "Rewrite",
    "Compare",
    "Identify",
    "Create",
    "Give",
    "Find",
    "Translate",
    "Edit",
    "Analyze",
    "Outline",
]
OBJECTS = [
    "a short story",
    "the main idea",
    "three tips",
    "a poem",
    "the difference",
    "a headline",
    "a plan",
    "the following sentence",
    "an email",
    "five examples",
    "a recipe",
    "the key points",
    "a slogan",
]
TOPICS = [
    "climate change",
    "healthy eating",
    "machine learning",
    "the French Revolution",
    "remote work",
    "ocean currents",
    "personal finance",
    "photosynthesis",
    "city planning",
    "time management",
]
WORDS = (
    "the of and to in is that for it as with was on be by this are from at or an have not which one all "
    "they were their has more about can when there so what some would out other into time very only "
    "people first new also because good these most many well work life world water energy plan idea"
).split()
ZH = [
    "请解释什么是光合作用。",
    "写一首关于秋天的短诗。",
    "列出三种保持健康的方法。",
    "总结下面这段话的主要内容。",
]

# Defect kinds injected, with the rule expected to catch each (fix rules flag; drop rules drop).
DEFECTS = {
    "empty_output": 0.004, "na_output": 0.004, "merged_items": 0.004, "url_or_attachment": 0.004,
    "non_text_modality": 0.006, "wrong_arithmetic": 0.003, "too_long": 0.001, "no_input_marker": 0.02,
    "control_chars": 0.003, "exact_duplicate": 0.01,
}  # fmt: skip


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def clean_record(rng: random.Random, i: int) -> dict:
    if rng.random() < 0.05:
        return {
            "instruction": rng.choice(ZH) + f"（{i}）",
            "input": "",
            "output": "好的。" * rng.randint(5, 60),
        }
    instruction = f"{rng.choice(VERBS)} {rng.choice(OBJECTS)} about {rng.choice(TOPICS)} (case {i})."
    has_input = rng.random() < 0.4
    output = " ".join(sentence(rng, rng.randint(6, 18)) for _ in range(rng.randint(1, 12)))
    return {
        "instruction": instruction,
        "input": sentence(rng, rng.randint(5, 40)) if has_input else "",
        "output": output,
    }


def inject(rng: random.Random, record: dict, kind: str, i: int) -> dict:
    r = dict(record)
    if kind == "empty_output":
        r["output"] = rng.choice(["", " ", "\n"])
    elif kind == "na_output":
        r["output"] = rng.choice(["N/A", "<No Output>", "<nooutput>", "Not applicable."])
    elif kind == "merged_items":
        r["output"] += f"\n\n##\n\n{rng.randint(2, 19)}. Instruction: {rng.choice(VERBS)} something else."
    elif kind == "url_or_attachment":
        r["input"] = rng.choice([f"https://example.com/article/{i}", "<Picture Attached>", "<image>"])
    elif kind == "non_text_modality":
        r["instruction"] = (
            rng.choice(
                [
                    "Draw a picture of",
                    "Generate an image of",
                    "Describe the following photo of",
                    "Create a flowchart for",
                ]
            )
            + f" {rng.choice(TOPICS)} ({i})."
        )
    elif kind == "wrong_arithmetic":
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        r.update(
            instruction=f"What is {a} * {b}?", input="", output=f"{a} * {b} = {a * b + rng.randint(1, 50)}"
        )
    elif kind == "too_long":
        r["output"] = sentence(rng, 5000)
    elif kind == "no_input_marker":
        r["input"] = rng.choice(["<noinput>", "No input", "noinput", "<no input>", "None", "N/A"])
    elif kind == "control_chars":
        r["output"] = r["output"][:20] + rng.choice(["\x00", "\x07", "\u200b", "\x1b"]) + r["output"][20:]
    return r


def build(n: int, seed: int) -> tuple[list[dict], dict[str, int]]:
    rng = random.Random(seed)
    records = [clean_record(rng, i) for i in range(n)]
    injected = dict.fromkeys(DEFECTS, 0)
    positions = rng.sample(range(n), k=int(n * sum(DEFECTS.values())))
    kinds = [k for k, share in DEFECTS.items() for _ in range(int(n * share))]
    for pos, kind in zip(positions, kinds):
        if kind == "exact_duplicate":
            source = records[rng.randrange(n)]
            if source["output"].strip() and source.get("_defect") is None:
                records[pos] = {**source, "_defect": kind}
                injected[kind] += 1
            continue
        records[pos] = {**inject(rng, records[pos], kind, pos), "_defect": kind}
        injected[kind] += 1
    return records, injected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    records, injected = build(args.n, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "alpaca_like.json"
        src.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        report = Path(tmp) / "report.json"
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pacos",
                "data",
                "clean",
                str(src),
                "--out",
                str(Path(tmp) / "clean.json"),
                "--report",
                str(report),
            ],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"pacos data clean failed: {proc.stderr.strip()}")
        rules = json.loads(report.read_text())["rules"]
        rejected = [
            json.loads(line) for line in (Path(tmp) / "clean.rejected.jsonl").read_text().splitlines()
        ]
    # Recall on injected drop defects: the dropped record carries the defect it was given. (Not for
    # duplicates, where whichever copy comes first is kept, nor for fix rules, which only flag.)
    caught = {k: 0 for k, action in ((r["name"], r["action"]) for r in rules) if action == "drop"}
    caught.pop("exact_duplicate")
    for r in rejected:
        if r.get("_defect") in caught and r["_defect"] == r["_rejected"]["rule"]:
            caught[r["_defect"]] += 1
    print(
        json.dumps(
            {
                "records": args.n,
                "file_mb": round(src_size_mb(records), 1),
                "seconds": round(seconds, 2),
                "records_per_second": round(args.n / seconds),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
                "budget_seconds": 30,
                "within_budget": seconds < 30,
                "rules": {
                    r["name"]: {
                        "action": r["action"],
                        "count": r["count"],
                        "injected": injected.get(r["name"], 0),
                        "caught_injected": caught.get(r["name"]),
                    }
                    for r in rules
                },
            },
            indent=2,
        )
    )


def src_size_mb(records: list[dict]) -> float:
    return len(json.dumps(records, ensure_ascii=False).encode()) / 1e6


if __name__ == "__main__":
    main()
