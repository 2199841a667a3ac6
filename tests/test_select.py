"""`pacos data select`: the best records by a score, ties in input order, and Deita's diversity walk."""

from __future__ import annotations

import json

import pytest

from pacos.data.select import select_records
from pacos.errors import PacosError

from .conftest import write_jsonl


def rec(instruction: str, **scores) -> dict:
    return {"instruction": instruction, "input": "", "output": "An answer.", "scores": scores}


def test_top_fraction_best_first_ties_in_input_order_output_in_input_order():
    scores = [3.0, 5.0, 4.0, 5.0, 1.0, 4.0, 2.0, 5.0, 0.5, 4.0]
    records = [rec(f"task {i}") for i in range(10)]
    picked = select_records(records, scores, top=0.4)  # 4 of 10: the three 5.0s and the first 4.0
    assert [r["instruction"] for r in picked.records] == ["task 1", "task 2", "task 3", "task 7"]
    assert picked.report["kept_score_range"] == [4.0, 5.0] and picked.report["budget"] == 4
    lowest = select_records(records, scores, top=0.2, lowest=True)
    assert [r["instruction"] for r in lowest.records] == ["task 4", "task 8"]


def test_bounds_and_a_fraction_of_all_records():
    scores = [4.6, 4.4, 4.5, 5.0, 3.0]
    records = [rec(f"t{i}") for i in range(5)]
    assert [r["instruction"] for r in select_records(records, scores, min_score=4.5).records] == [
        "t0",
        "t2",
        "t3",
    ]
    both = select_records(records, scores, min_score=4.5, top=0.4)  # 2 of 5, among those >= 4.5
    assert [r["instruction"] for r in both.records] == ["t0", "t3"] and both.report["outside_bounds"] == 2
    assert [r["instruction"] for r in select_records(records, scores, max_score=4.4).records] == ["t1", "t4"]


@pytest.mark.parametrize(
    "options,message",
    [({}, "say how many to keep"), ({"top": 1.5}, "0 < top <= 1"), ({"top": 0.5, "diverse": 2.0}, "cosine")],
)
def test_bad_options(options, message):
    with pytest.raises(PacosError, match=message):
        select_records([rec("a")], [1.0], **options)


@pytest.fixture(scope="module")
def embedder():
    from pacos.data.embed import Embedder

    return Embedder()


# Best scores all on one topic (bread); the diversity walk must reach the other topics.
TOPICAL = [
    rec("How do I bake bread at home?", judge=5.0),
    rec("What's the best way to bake bread at home?", judge=4.9),
    rec("How can I bake bread at home?", judge=4.8),
    rec("Explain how photosynthesis works.", judge=4.7),
    rec("How does photosynthesis work?", judge=4.6),
    rec("Who wrote Romeo and Juliet?", judge=4.5),
    rec("如何在家烤面包？", judge=4.4),
    rec("在家里怎样做面包？", judge=4.3),
]


def test_diverse_walk_skips_what_is_too_close_to_a_selected_record(embedder):
    scores = [r["scores"]["judge"] for r in TOPICAL]
    plain = select_records(TOPICAL, scores, top=0.5)
    assert [r["scores"]["judge"] for r in plain.records] == [5.0, 4.9, 4.8, 4.7]  # three about bread
    diverse = select_records(TOPICAL, scores, top=0.5, diverse=0.9, embedder=embedder)
    assert [r["instruction"] for r in diverse.records] == [
        "How do I bake bread at home?",
        "Explain how photosynthesis works.",
        "Who wrote Romeo and Juliet?",
        "如何在家烤面包？",
    ]
    # Walked 5.0 .. 4.4 (7 records) to fill 4 places: skipped two bread paraphrases and one photosynthesis.
    assert diverse.report["skipped_for_diversity"] == 3 and diverse.report["records_kept"] == 4


def test_cli_select_writes_and_summarises(cli, tmp_path):
    src = write_jsonl(tmp_path / "scored.jsonl", TOPICAL)
    out, report = tmp_path / "best.json", tmp_path / "r.json"
    result = cli("data", "select", src, "--by", "judge", "--top", "0.5", "--diverse", "0.9", "--out", out,
                 "--report", report)  # fmt: skip
    assert result.code == 0, result.err
    assert result.out.startswith(f"kept 4 of 8 records (judge 4.4..5) -> {out}; 3 skipped for diversity")
    assert [r["scores"]["judge"] for r in json.loads(out.read_text(encoding="utf-8"))] == [5.0, 4.7, 4.5, 4.4]
    summary = json.loads(report.read_text())
    assert summary["by"] == "judge" and summary["diverse"] == 0.9 and summary["budget"] == 4


def test_missing_score_names_file_and_line_or_is_dropped(cli, tmp_path):
    rows = [
        rec("a", judge=4.0),
        {"instruction": "b", "output": "x", "scores": {"ifd": 0.5}},
        rec("c", judge=5),
    ]
    src = write_jsonl(tmp_path / "scored.jsonl", rows)
    result = cli("data", "select", src, "--by", "judge", "--top", "0.5", "--out", tmp_path / "o.jsonl")
    assert result.code == 1 and "Traceback" not in result.err
    assert f"{src}:2: no score 'judge' under 'scores' (has: ifd)" in result.err
    assert not (tmp_path / "o.jsonl").exists()
    dropped = cli("data", "select", src, "--by", "judge", "--top", "0.5", "--out", tmp_path / "o.jsonl",
                  "--drop-unscored")  # fmt: skip
    assert (
        dropped.code == 0
        and "1 without the score dropped" in dropped.out
        and "kept 1 of 3 records" in dropped.out
    )
    assert [json.loads(line)["instruction"] for line in (tmp_path / "o.jsonl").read_text().splitlines()] == [
        "c"
    ]


@pytest.mark.parametrize(
    "scores,message",
    [("bad", "field 'scores': expected an object, got string"),
     ({"judge": "4.5"}, "field 'scores.judge': expected a finite number, got '4.5'"),
     ({"judge": True}, "field 'scores.judge': expected a finite number, got True")],
)  # fmt: skip
def test_malformed_scores_are_one_line_errors(cli, tmp_path, scores, message):
    src = write_jsonl(
        tmp_path / "s.jsonl", [rec("a", judge=1.0), {"instruction": "b", "output": "", "scores": scores}]
    )
    result = cli("data", "select", src, "--by", "judge", "--min", "0", "--out", tmp_path / "o.jsonl")
    assert result.code == 1 and f"{src}:2: {message}" in result.err and "Traceback" not in result.err
