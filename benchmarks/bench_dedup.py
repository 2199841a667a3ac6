"""Benchmark pacos's ROUGE-L novelty filter against Alpaca's rouge_score loop, and `pacos data dedup`.

Prints JSON. For initial pools of 1K, 5K and 20K real instructions, pacos (`NoveltyFilter.offer`) and the
reference (Alpaca's loop: `rouge_scorer._score_lcs(new, item)` for every pool item, keep iff the max
F1 <= 0.7, a kept candidate joins the pool) process the SAME candidate stream; their keep/drop decisions,
maximum scores and top-5 most similar items (with exact scores) are asserted identical; the speedup is
the ratio of their times on the stream. Peak memory comes from tracemalloc (a separate pass, since
tracing slows both), the memory of a 1M-item pool from the RSS of a child process, and the wall time of
the whole `pacos data dedup` command (start-up, read, dedup, writes) on 52K records, with ROUGE-L and
with `--semantic 0.9` (MiniLM embeddings, exact blocked search; embedding and search time reported apart).

Data: pacos's English seed tasks plus the inputs of BIG-bench 1.0.0's JSON tasks (human-written and
templated LM prompts: questions, puzzles, instructions), which the `bigbench` package on PyPI ships. No
package on PyPI ships Alpaca's or Dolly's instructions. The script fetches the sdist once with
`pip download --no-deps bigbench==1.0.0` (358 MB; nothing is installed) into --cache and keeps the
extracted corpus there. Candidates: half unseen corpus texts, half edits of earlier texts (word drops,
swaps, insertions, replacements, case and punctuation changes), so both decisions are common.

    .venv/bin/python benchmarks/bench_dedup.py [--pools 1000,5000,20000] [--candidates 3600,1100,300]
    .venv/bin/python benchmarks/bench_dedup.py --only semantic [--records 52000] [--semantic 0.9]
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path

BIGBENCH = "bigbench==1.0.0"
CORPUS_VERSION = 2
# English-looking BIG-bench inputs: 4..40 words, ASCII, at least 20% (and 2) function words; at most
# PER_TASK from each task so that no templated task dominates.
MIN_WORDS, MAX_WORDS, PER_TASK = 4, 25, 800
FUNCTION_WORDS = set(
    "the a an of to is are was were what which who whom how why when where in on at and or but not you "
    "your i my we our it its for this that these those be with from by as if then than do does did can "
    "could would should will have has had".split()
)


def _english(text: str) -> bool:
    words = [w.lower().strip(".,?!:;\"'()") for w in text.split()]
    return text.isascii() and sum(w in FUNCTION_WORDS for w in words) >= max(2, 0.2 * len(words))


def bigbench_corpus(cache: Path) -> list[str]:
    """Deduplicated English inputs of BIG-bench's JSON tasks, in task order (cached as JSON)."""
    corpus_file = cache / f"bigbench-inputs-v{CORPUS_VERSION}.json"
    if corpus_file.exists():
        return json.loads(corpus_file.read_text(encoding="utf-8"))
    cache.mkdir(parents=True, exist_ok=True)
    archives = sorted(cache.glob("bigbench-1.0.0.tar.gz"))
    if not archives:
        print(f"downloading {BIGBENCH} (358 MB) into {cache}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(cache)]
        subprocess.run([*cmd, BIGBENCH], check=True, stdout=subprocess.DEVNULL)
        archives = sorted(cache.glob("bigbench-1.0.0.tar.gz"))
    texts: list[str] = []
    seen: set[str] = set()
    with tarfile.open(archives[0], "r:gz") as tar:
        members = [m for m in tar if m.name.endswith("/task.json") and m.size < 20_000_000]
        for member in sorted(members, key=lambda m: m.name):
            f = tar.extractfile(member)
            if f is None:
                continue
            taken = 0
            for example in json.load(f).get("examples") or []:
                text = " ".join(str(example.get("input") or "").split())
                if not MIN_WORDS <= len(text.split()) <= MAX_WORDS or not _english(text):
                    continue
                if text.lower() in seen:
                    continue
                seen.add(text.lower())
                texts.append(text)
                taken += 1
                if taken >= PER_TASK:
                    break
    corpus_file.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    return texts


def real_instructions(cache: Path) -> list[str]:
    """Seed-task instructions first, then the BIG-bench inputs in a fixed shuffled order."""
    from pacos.data.seeds import load_seed_tasks

    seeds = [t["instruction"] for t in load_seed_tasks("en")]
    bigbench = bigbench_corpus(cache)
    random.Random(0).shuffle(bigbench)
    return seeds + bigbench


def mutate(rng: random.Random, text: str, vocabulary: list[str]) -> str:
    words = text.split()
    for _ in range(rng.choice((1, 1, 2, 3))):
        kind = rng.random()
        i = rng.randrange(len(words))
        if kind < 0.25 and len(words) > 2:
            del words[i]
        elif kind < 0.45 and len(words) > 1:
            j = min(i + 1, len(words) - 1)
            words[i], words[j] = words[j], words[i]
        elif kind < 0.65:
            words.insert(i, rng.choice(vocabulary))
        elif kind < 0.8:
            words[i] = rng.choice(vocabulary)
        elif kind < 0.9:
            words[i] = words[i].upper() if rng.random() < 0.5 else words[i].capitalize()
        else:
            words[i] = words[i] + rng.choice([",", ";", " -", "!", "..."])
    return " ".join(words)


def candidate_stream(corpus: list[str], pool_size: int, n: int, seed: int) -> list[str]:
    """Half unseen corpus texts, half edits of earlier texts (pool or stream)."""
    rng = random.Random(seed)
    vocabulary = " ".join(corpus[:2000]).split()
    fresh = iter(corpus[pool_size:])
    seen = corpus[:pool_size]
    stream = []
    for _ in range(n):
        text = next(fresh) if rng.random() < 0.5 else mutate(rng, rng.choice(seen), vocabulary)
        stream.append(text)
        seen.append(text)
    return stream


def _top(scores: list[float], k: int) -> list[tuple[int, float]]:
    best = heapq.nsmallest(k, ((-s, i) for i, s in enumerate(scores) if s > 0))
    return [(i, -s) for s, i in best]


def run_reference(pool: list[str], stream: list[str], k: int = 5) -> tuple[list, float]:
    """Alpaca's loop (generate_instruction.py) on one process, with rouge_score as it ships."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool_tokens = [scorer._tokenizer.tokenize(t) for t in pool]
    start = time.perf_counter()
    outcomes = []
    for text in stream:
        tokens = scorer._tokenizer.tokenize(text)
        scores = [rouge_scorer._score_lcs(tokens, item).fmeasure for item in pool_tokens]
        keep = max(scores) <= 0.7
        outcomes.append((keep, max(scores), _top(scores, k)))
        if keep:
            pool_tokens.append(tokens)
    return outcomes, time.perf_counter() - start


def run_pacos(pool: list[str], stream: list[str], k: int = 5) -> tuple[list, float, float]:
    from pacos.text.rouge import NoveltyFilter

    start = time.perf_counter()
    novelty = NoveltyFilter(0.7, "rouge", top_k=k)
    for i, text in enumerate(pool):
        novelty.add(text, key=i)
    built = time.perf_counter()
    outcomes = []
    for j, text in enumerate(stream):
        verdict = novelty.offer(text, key=len(pool) + j)
        outcomes.append((verdict.novel, verdict.max_score, verdict.most_similar))
    return outcomes, built - start, time.perf_counter() - built


def keys_to_positions(outcomes: list, pool_size: int) -> list:
    """pacos reports keys (stream positions); the reference, positions in its growing pool."""
    kept_keys = list(range(pool_size)) + [pool_size + j for j, (keep, _, _) in enumerate(outcomes) if keep]
    index_of = {key: i for i, key in enumerate(kept_keys)}
    return [(keep, best, [(index_of[key], s) for key, s in similar]) for keep, best, similar in outcomes]


def traced_peak_mb(fn) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return round(peak / 2**20, 1)


def compare_at(corpus: list[str], pool_size: int, n: int) -> dict:
    pool, stream = corpus[:pool_size], candidate_stream(corpus, pool_size, n, seed=pool_size)
    ours, build_s, ours_s = run_pacos(pool, stream)
    reference, ref_s = run_reference(pool, stream)
    ours_positions = keys_to_positions(ours, pool_size)
    for j, (a, b) in enumerate(zip(ours_positions, reference)):
        if a != b:
            raise SystemExit(f"pool {pool_size}, candidate {j}: pacos {a} != reference {b}: {stream[j]!r}")
    kept = sum(keep for keep, _, _ in reference)
    sample = stream[:200]
    # The reference's memory is its token lists plus one score list: one candidate shows its peak.
    return {
        "initial_pool": pool_size,
        "candidates": n,
        "kept": kept,
        "rejected": n - kept,
        "final_pool": pool_size + kept,
        "identical_decisions_scores_top5": True,
        "reference_seconds": round(ref_s, 2),
        "pacos_seconds": round(ours_s, 3),
        "pacos_index_build_seconds": round(build_s, 3),
        "reference_ms_per_candidate": round(1000 * ref_s / n, 2),
        "pacos_ms_per_candidate": round(1000 * ours_s / n, 3),
        "speedup": round(ref_s / ours_s, 1),
        "speedup_including_index_build": round(ref_s / (ours_s + build_s), 1),
        "peak_traced_mb_pacos": traced_peak_mb(lambda: run_pacos(pool, sample)),
        "peak_traced_mb_reference": traced_peak_mb(lambda: run_reference(pool, sample[:1])),
    }


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def big_pool_child(cache: Path, size: int) -> None:
    """In a child process: RSS growth and time to build a pool of `size` items, and check latency."""
    from pacos.text.rouge import NoveltyFilter

    corpus = real_instructions(cache)
    vocabulary = " ".join(corpus[:2000]).split()
    rng = random.Random(1)
    before = _rss_mb()
    novelty = NoveltyFilter(0.7, "rouge", top_k=5)
    start = time.perf_counter()
    for i in range(size):  # the corpus, then edited copies of it: realistic vocabulary and lengths
        text = corpus[i] if i < len(corpus) else mutate(rng, corpus[i % len(corpus)], vocabulary)
        novelty.add(text, key=i)
    build = time.perf_counter() - start
    grown = _rss_mb() - before
    probes = [mutate(rng, rng.choice(corpus), vocabulary) for _ in range(200)]
    start = time.perf_counter()
    for text in probes:
        novelty.check(text)
    check_ms = 1000 * (time.perf_counter() - start) / len(probes)
    result = {"pool_items": size, "build_seconds": round(build, 1), "rss_growth_mb": round(grown),
              "bytes_per_item": round(grown * 2**20 / size), "check_ms": round(check_ms, 2)}  # fmt: skip
    print(json.dumps(result))


def write_records(corpus: list[str], n: int, tmp: Path) -> tuple[Path, int]:
    """n records: every corpus text, then edited copies until n (seeded). Returns the file and how many
    records are real texts."""
    rng = random.Random(2)
    vocabulary = " ".join(corpus[:2000]).split()
    texts = corpus[:n]
    real = len(texts)
    while len(texts) < n:
        texts.append(mutate(rng, rng.choice(texts[:real]), vocabulary))
    records = [{"instruction": t, "input": "", "output": "-"} for t in texts]
    src = tmp / "records.json"
    src.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return src, real


def dedup_command(corpus: list[str], n: int, tmp: Path) -> dict:
    """`pacos data dedup` on n records: every corpus text, then edited copies until n."""
    src, real = write_records(corpus, n, tmp)
    report = tmp / "report.json"
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pacos", "data", "dedup", str(src), "--out", str(tmp / "kept.json")]
    proc = subprocess.run([*cmd, "--report", str(report)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pacos data dedup failed: {proc.stderr.strip()}")
    summary = json.loads(report.read_text())
    return {
        "records": n,
        "real_texts": real,
        "edited_copies": n - real,
        "kept": summary["records_kept"],
        "dropped": summary["records_dropped"],
        "seconds_whole_command": round(seconds, 1),
        "seconds_inside_command": summary["seconds"],
        "budget_seconds": 300,
        "within_budget": seconds < 300,
    }


def semantic_command(corpus: list[str], n: int, threshold: float, tmp: Path) -> dict:
    """`pacos data dedup --semantic` on the same n records as `dedup_command` (MiniLM embeddings, exact
    blocked search), with embedding and search time from its report."""
    src, _ = write_records(corpus, n, tmp)
    report = tmp / "semantic-report.json"
    cmd = [sys.executable, "-m", "pacos", "data", "dedup", str(src), "--out", str(tmp / "semantic.json")]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "--semantic", str(threshold), "--report", str(report)], capture_output=True,
                          text=True)  # fmt: skip
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pacos data dedup --semantic failed: {proc.stderr.strip()}")
    summary = json.loads(report.read_text())
    return {
        "records": n,
        "threshold": threshold,
        "index": summary["index"],
        "kept": summary["records_kept"],
        "dropped_near": summary["near_duplicates"],
        "dropped_exact": summary["exact_duplicates"],
        "embedded_records": summary["embedded_records"],
        "embed_seconds": summary["embed_seconds"],
        "search_seconds": summary["search_seconds"],
        "seconds_whole_command": round(seconds, 1),
        "seconds_inside_command": summary["seconds"],
        "examples": summary["examples"][:3],
        "budget_seconds": 300,
        "within_budget": seconds < 300,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "pacos-bench")
    parser.add_argument("--pools", default="1000,5000,20000")
    parser.add_argument("--candidates", default="3600,1100,300", help="Candidates per pool size.")
    parser.add_argument("--records", type=int, default=52_000, help="Records for `pacos data dedup`.")
    parser.add_argument("--big-pool", type=int, default=1_000_000, help="Pool size for the memory check.")
    parser.add_argument("--semantic", type=float, default=0.9, help="Cosine threshold of the semantic run.")
    parser.add_argument("--only", choices=("rouge", "semantic"), help="Run one part [default: both].")
    parser.add_argument("--child-big-pool", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_big_pool:
        big_pool_child(args.cache, args.child_big_pool)
        return
    corpus = real_instructions(args.cache)
    if args.only == "semantic":
        with tempfile.TemporaryDirectory() as tmp:
            result = semantic_command(corpus, args.records, args.semantic, Path(tmp))
        header = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
        print(json.dumps({**header, "semantic_command": result}, indent=2, ensure_ascii=False))
        return
    pools = [int(p) for p in args.pools.split(",")]
    counts = [int(c) for c in args.candidates.split(",")]
    results: dict = {
        "data": {
            "texts": len(corpus),
            "sources": "pacos seed tasks (en, 175) + BIG-bench 1.0.0 JSON task inputs (PyPI sdist "
            f"`bigbench`): English, {MIN_WORDS}-{MAX_WORDS} words, <= {PER_TASK} per task, "
            "exact duplicates removed",
            "mean_words": round(sum(len(t.split()) for t in corpus) / len(corpus), 1),
        },
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    results["pools"] = [compare_at(corpus, p, n) for p, n in zip(pools, counts)]
    results["candidates_compared"] = sum(counts)
    with tempfile.TemporaryDirectory() as tmp:
        results["dedup_command"] = dedup_command(corpus, args.records, Path(tmp))
        if args.only is None:
            results["semantic_command"] = semantic_command(corpus, args.records, args.semantic, Path(tmp))
    if args.big_pool:
        cmd = [sys.executable, __file__, "--cache", str(args.cache), "--child-big-pool", str(args.big_pool)]
        results["big_pool"] = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
