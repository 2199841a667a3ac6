"""`pacos data dedup --semantic`: the blocked keep-first search, and MiniLM finding what ROUGE-L misses."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from pacos.data.clean import RULES, CleanConfig, clean_records
from pacos.data.dedup import dedup_records, greedy_keep_first, semantic_dedup_records
from pacos.errors import PacosError

from .conftest import write_jsonl

# --- the search, on random vectors --------------------------------------------------------------------


def clustered(n: int, dim: int = 12, centers: int = 150, noise: float = 0.35, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres: many pairs above a threshold, many below."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(centers, dim))[rng.integers(0, centers, n)] + noise * rng.normal(size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def brute_force(vectors: np.ndarray, threshold: float) -> tuple[list[bool], list[int], list[float]]:
    """The rule as written, one record at a time, in float64: keep iff cosine <= threshold with every kept."""
    sims = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    kept: list[int] = []
    keep, twin, score = [], [], []
    for i in range(len(vectors)):
        row = sims[i, kept]
        if kept and row.max() > threshold:
            j = int(row.argmax())
            keep.append(False), twin.append(kept[j]), score.append(float(row[j]))
        else:
            kept.append(i)
            keep.append(True), twin.append(-1), score.append(0.0)
    return keep, twin, score


@pytest.mark.parametrize("threshold", [0.75, 0.9])
@pytest.mark.parametrize("block_size,kept_chunk", [(1, 16_384), (7, 5), (64, 16_384), (500, 33), (4096, 64)])
def test_blocked_search_matches_brute_force(threshold, block_size, kept_chunk):
    vectors = clustered(500)
    keep, twin, score = brute_force(vectors, threshold)
    assert 50 < sum(keep) < 450  # both decisions are common
    got = greedy_keep_first(vectors, threshold, block_size=block_size, kept_chunk=kept_chunk)
    assert got.kept.tolist() == keep
    assert got.twin.tolist() == twin
    assert got.score == pytest.approx(np.array(score, dtype=np.float32), abs=1e-5)
    assert got.reached == 500


@pytest.mark.parametrize("block_size,kept_chunk", [(1, 1), (2, 1), (4, 16_384)])
def test_ties_threshold_is_kept_and_the_earliest_twin_wins(block_size, kept_chunk):
    # Exact binary fractions: every cosine below is computed exactly in float32.
    e1, e2, e3 = np.eye(4, dtype=np.float32)[:3]
    half = np.full(4, 0.5, dtype=np.float32)  # cosine 0.5 with e1, e2 and e3
    vectors = np.stack([e1, e2, e3, half])
    at = greedy_keep_first(vectors, 0.5, block_size=block_size, kept_chunk=kept_chunk)
    assert at.kept.tolist() == [True, True, True, True]  # == threshold is kept (<=)
    below = greedy_keep_first(vectors, 0.4, block_size=block_size, kept_chunk=kept_chunk)
    assert below.kept.tolist() == [True, True, True, False]
    assert below.twin[3] == 0 and below.score[3] == 0.5  # a three-way tie: the earliest kept record


def test_keep_first_order_a_dropped_record_does_not_drop_others():
    # b is close to a (dropped), c close to b but not to a: c stays, since only kept records count.
    a = np.array([1.0, 0.0], dtype=np.float32)
    b = np.array([np.cos(0.4), np.sin(0.4)], dtype=np.float32)
    c = np.array([np.cos(0.8), np.sin(0.8)], dtype=np.float32)
    got = greedy_keep_first(np.stack([a, b, c]), float(np.cos(0.5)), block_size=2)
    assert got.kept.tolist() == [True, False, True] and got.twin.tolist() == [-1, 0, -1]


def test_limit_stops_and_rows_are_fetched_lazily():
    vectors = clustered(400)
    calls: list[tuple[int, int]] = []

    def rows(start: int, end: int) -> np.ndarray:
        calls.append((start, end))
        return vectors[start:end]

    full = greedy_keep_first(vectors, 0.8)
    got = greedy_keep_first(rows, 0.8, n=400, limit=30, block_size=16)
    assert got.kept.sum() == 30
    last = int(np.flatnonzero(full.kept)[29])
    assert got.reached == last + 1 and got.kept[: last + 1].tolist() == full.kept[: last + 1].tolist()
    assert calls[-1][0] <= last < calls[-1][1] and calls[-1][1] < 400  # later blocks never embedded


def test_hnsw_index_agrees_with_the_exact_search():
    pytest.importorskip("faiss")
    vectors = clustered(3000, dim=24, centers=1500, noise=0.25)
    exact = greedy_keep_first(vectors, 0.85, block_size=256)
    approx = greedy_keep_first(vectors, 0.85, index="hnsw", block_size=256)
    assert 500 < exact.kept.sum() < 2500
    assert (exact.kept == approx.kept).mean() > 0.98


def test_hnsw_without_faiss_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    with pytest.raises(PacosError, match=r"faiss-cpu: pip install 'pacos\[ann\]'"):
        greedy_keep_first(clustered(10), 0.9, index="hnsw")


# --- records, with the real all-MiniLM-L6-v2 ----------------------------------------------------------


@pytest.fixture(scope="module")
def embedder():
    from pacos.data.embed import Embedder

    return Embedder()


def rec(instruction: str, input: str = "", output: str = "An answer.", **extra) -> dict:
    return {**extra, "instruction": instruction, "input": input, "output": output}


# (kept first, paraphrase): ROUGE-L F1 between 0.29 and 0.58, MiniLM cosine between 0.91 and 0.96.
PARAPHRASES = [
    ("What is the capital of France?", "Which city is France's capital?"),
    ("How do I bake bread at home?", "What's the best way to bake bread at home?"),
    ("Explain how photosynthesis works.", "How does photosynthesis work?"),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by whom?"),
    ("What causes earthquakes?", "Why do earthquakes happen?"),
    ("如何在家烤面包？", "在家里怎样做面包？"),
    ("请解释什么是光合作用。", "光合作用是什么？请说明。"),
    ("给出三个保持健康的建议。", "列出三条保持身体健康的方法。"),
]
# Different tasks in the same words: ROUGE-L F1 0.78-0.88 (> 0.7: ROUGE-L drops the second), cosine <= 0.85.
SAME_WORDS_OTHER_TASK = [
    ("Write a poem about the ocean.", "Write a poem about the mountains."),
    ("What is the capital of Germany?", "What is the capital of Spain?"),
    ("写一首关于大海的诗。", "写一首关于高山的诗。"),
    ("德国的首都是哪里？", "西班牙的首都是哪里？"),
]


def test_semantic_finds_paraphrases_rouge_l_misses(embedder):
    records = [rec(a) for a, _ in PARAPHRASES] + [rec(b) for _, b in PARAPHRASES]
    rouge = dedup_records(records, 0.7)
    assert rouge.rejected == []  # ROUGE-L sees eight different tasks twice
    result = semantic_dedup_records(records, 0.9, embedder=embedder)
    assert [r["instruction"] for r in result.kept] == [a for a, _ in PARAPHRASES]
    notes = [r["_rejected"] for r in result.rejected]
    assert [n["similar_to"] for n in notes] == list(range(len(PARAPHRASES)))
    assert all(n["rule"] == "near_duplicate" and 0.9 < n["score"] <= 1.0 for n in notes)
    assert notes[0]["similar_instruction"] == "What is the capital of France?"
    assert "MiniLM cosine" in notes[0]["reason"] and "kept record #0" in notes[0]["reason"]
    report = result.report
    assert (report["records_in"], report["records_kept"], report["records_dropped"]) == (16, 8, 8)
    assert report["fields"] == ["instruction", "input"] and report["index"] == "exact"


def test_semantic_keeps_other_tasks_that_share_words(embedder):
    records = [rec(t) for pair in SAME_WORDS_OTHER_TASK for t in pair]
    assert len(dedup_records(records, 0.7).rejected) == 4  # ROUGE-L drops every second one
    assert semantic_dedup_records(records, 0.9, embedder=embedder).rejected == []


def test_a_lower_threshold_reaches_looser_paraphrases(embedder):
    # cosine 0.78 and 0.85: found at 0.75, not at 0.9. English only: MiniLM is an English model, and Chinese
    # tasks that share a template reach 0.78-0.84 (SAME_WORDS_OTHER_TASK), so 0.75 is too low there.
    records = [
        rec("How do I bake bread at home?"),
        rec("Write a poem about the ocean."),
        rec("What is the way to make a loaf of bread in my kitchen?"),
        rec("Translate this sentence into French."),
        rec("Convert this sentence to the French language."),
        rec("Write a poem about the mountains."),
    ]
    assert semantic_dedup_records(records, 0.9, embedder=embedder).rejected == []
    loose = semantic_dedup_records(records, 0.75, embedder=embedder)
    assert [r["_rejected"]["similar_to"] for r in loose.rejected] == [0, 3]


def test_same_instruction_with_another_input_is_another_task_by_default(embedder):
    records = [rec("Sort the numbers in ascending order.", "3, 1, 2"), rec("Sort the numbers.", "9, 8, 7")]
    assert semantic_dedup_records(records, 0.9, embedder=embedder).rejected == []
    by_instruction = semantic_dedup_records(records, 0.9, fields=("instruction",), embedder=embedder)
    assert len(by_instruction.rejected) == 1


VARIANTS = [
    rec("Name a primary colour.", output="Red."),
    rec("  name a PRIMARY colour. ", output="red."),  # case and whitespace: an exact duplicate
    rec("Name a primary colour.", output="Blue."),  # another output: not an exact duplicate
    rec("Ｎａｍｅ a primary colour.", output="Red."),  # full-width letters: NFKC makes it an exact duplicate
    rec("List the planets of the solar system.", output="Mercury, Venus, ..."),
    rec("List the planets of the solar system.", "in order", output="Mercury, Venus, ..."),
]


def test_exact_duplicates_match_pacos_data_clean_and_always_go(embedder):
    others = [r.name for r in RULES]
    cleaned = clean_records(VARIANTS, CleanConfig(disable=others))
    expected = [r["instruction"] for r in cleaned.rejected]
    assert len(expected) == 2
    # A threshold no cosine exceeds: only exact duplicates go, the same ones as in `pacos data clean`.
    result = semantic_dedup_records(VARIANTS, 1.0, embedder=embedder)
    assert [r["instruction"] for r in result.rejected] == expected
    notes = [r["_rejected"] for r in result.rejected]
    assert all(n["rule"] == "exact_duplicate" and n["score"] == 1.0 and n["similar_to"] == 0 for n in notes)
    assert "as record #0" in notes[0]["reason"] and result.report["exact_duplicates"] == 2


def test_an_exact_copy_of_a_near_duplicate_names_the_kept_record(embedder):
    records = [
        rec("Who wrote Romeo and Juliet?", id="r"),
        rec("Romeo and Juliet was written by whom?"),
        rec("romeo and juliet was written by whom?"),
    ]
    result = semantic_dedup_records(records, 0.9, embedder=embedder)
    first, copy = (r["_rejected"] for r in result.rejected)
    assert (first["rule"], copy["rule"]) == ("near_duplicate", "exact_duplicate")
    assert first["similar_to"] == copy["similar_to"] == "r" and copy["score"] == pytest.approx(first["score"])
    assert "as record #1" in copy["reason"] and "near-duplicate of id 'r'" in copy["reason"]


def test_cli_semantic(cli, tmp_path):
    rows = [rec(a) for a, _ in PARAPHRASES[:3]] + [rec(b) for _, b in PARAPHRASES[:3]] + [rec("无关的问题。")]
    src = write_jsonl(tmp_path / "data.jsonl", rows)
    out, report = tmp_path / "kept.jsonl", tmp_path / "r.json"
    result = cli("data", "dedup", src, "--semantic", "0.9", "--out", out, "--report", report)
    assert result.code == 0, result.err
    assert result.out.startswith("kept 4 of 7 records")
    kept = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["instruction"] for r in kept] == [a for a, _ in PARAPHRASES[:3]] + ["无关的问题。"]
    rejected = tmp_path / "kept.rejected.jsonl"
    notes = [json.loads(line)["_rejected"] for line in rejected.read_text(encoding="utf-8").splitlines()]
    assert [n["similar_to"] for n in notes] == [0, 1, 2]
    summary = json.loads(report.read_text())
    assert summary["mode"] == "semantic" and summary["threshold"] == 0.9 and "search_seconds" in summary


@pytest.mark.parametrize(
    "args,message",
    [
        (["--semantic", "1.5"], "a cosine threshold is between -1 and 1"),
        (["--semantic", "0.9", "--index", "ivf"], "index must be one of auto, exact, hnsw"),
        (["--semantic", "0.9", "--fields", "title"], "fields must be some of"),
    ],
)
def test_cli_semantic_bad_options(cli, tmp_path, args, message):
    src = write_jsonl(tmp_path / "data.jsonl", [rec("One task.")])
    result = cli("data", "dedup", src, "--out", tmp_path / "kept.json", *args)
    assert result.code == 1 and message in result.err and "Traceback" not in result.err


def test_bf16_embeddings_make_the_same_decisions(embedder):
    """The bulk path (bf16 matmuls under autocast) stays within rounding of fp32 and decides alike."""
    from pacos.data.embed import Embedder

    texts = [t for pair in PARAPHRASES + SAME_WORDS_OTHER_TASK for t in pair]
    fp32 = embedder.encode(texts)
    bf16 = Embedder(bf16=True).encode(texts)
    assert bf16.dtype == fp32.dtype and np.allclose(bf16.norm(dim=-1), 1.0, atol=1e-5)
    assert not np.array_equal(bf16.numpy(), fp32.numpy())  # the matmuls did run in bf16
    cos32, cos16 = (fp32[0::2] * fp32[1::2]).sum(-1), (bf16[0::2] * bf16[1::2]).sum(-1)
    assert (cos32 - cos16).abs().max() < 0.01
    assert ((cos32 > 0.9) == (cos16 > 0.9)).all()
