"""`pacos data dedup` and `dedup_records`: Alpaca's novelty rule over an existing dataset."""

from __future__ import annotations

import json

import pytest

from pacos.data.dedup import dedup_records
from pacos.errors import PacosError

from .conftest import write_jsonl


def rec(instruction: str, input: str = "", output: str = "An answer.", **extra) -> dict:
    return {**extra, "instruction": instruction, "input": input, "output": output}


RECORDS = [
    rec("Give three tips for staying healthy."),
    rec("Give three tips for staying very healthy."),  # 0.92 with #0
    rec("Sort the numbers in ascending order.", "3, 1, 2"),
    rec("Sort the numbers in ascending order.", "9, 8, 7"),  # same instruction, another input
    rec("请解释什么是光合作用。", id="zh-1"),
    rec("请解释一下什么是光合作用。"),  # a Chinese near-copy of zh-1
    rec("Name the capital of France."),
]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_cli_keeps_the_first_of_each_group(cli, tmp_path):
    src = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    result = cli("data", "dedup", src, "--out", tmp_path / "kept.json", "--report", tmp_path / "r.json")
    assert result.code == 0, result.err
    assert result.out.startswith("kept 4 of 7 records -> ")
    assert "dropped 3 near-duplicates" in result.out
    kept = json.loads((tmp_path / "kept.json").read_text(encoding="utf-8"))
    assert [r["instruction"] for r in kept] == [
        "Give three tips for staying healthy.",
        "Sort the numbers in ascending order.",
        "请解释什么是光合作用。",
        "Name the capital of France.",
    ]
    assert all("_rejected" not in r for r in kept)
    rejected = read_jsonl(tmp_path / "kept.rejected.jsonl")
    notes = [r["_rejected"] for r in rejected]
    assert [n["similar_to"] for n in notes] == [0, 2, "zh-1"]  # input position, or the twin's id
    assert notes[0]["rule"] == "near_duplicate"
    assert notes[0]["similar_instruction"] == "Give three tips for staying healthy."
    assert notes[0]["score"] == pytest.approx(12 / 13) and notes[0]["score"] > 0.7
    assert "kept record #0" in notes[0]["reason"] and "'zh-1'" in notes[2]["reason"]
    assert rejected[1]["input"] == "9, 8, 7"  # the record itself is unchanged
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert (report["records_in"], report["records_kept"], report["records_dropped"]) == (7, 4, 3)
    assert report["tokenizer"] == "cjk" and report["fields"] == ["instruction"]


def test_cli_instruction_and_input_and_several_files(cli, tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", RECORDS[:4])
    second = write_jsonl(tmp_path / "b.jsonl", RECORDS[4:])
    out = tmp_path / "kept.jsonl"
    rejected = tmp_path / "dropped.jsonl"
    result = cli(
        "data", "dedup", first, second, "--out", out, "--fields", "instruction,input", "--rejected", rejected
    )
    assert result.code == 0, result.err
    assert [r["input"] for r in read_jsonl(out)[:3]] == ["", "3, 1, 2", "9, 8, 7"]  # different tasks
    assert [r["_rejected"]["similar_to"] for r in read_jsonl(rejected)] == [0, "zh-1"]


def test_cli_rouge_tokenizer_cannot_see_chinese(cli, tmp_path):
    src = write_jsonl(tmp_path / "data.jsonl", RECORDS[4:6])
    result = cli("data", "dedup", src, "--out", tmp_path / "kept.json", "--tokenizer", "rouge")
    assert result.code == 0 and result.out.startswith("kept 2 of 2 records")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold", "1.5"], "pacos: error: novelty threshold must be between 0 and 1, got 1.5\n"),
        (["--tokenizer", "words"], "pacos: error: unknown tokenizer 'words' (expected one of: rouge, cjk)\n"),
        (
            ["--fields", "instruction,title"],
            "pacos: error: fields must be some of instruction, input, output",
        ),
    ],
)
def test_cli_bad_options_are_one_line_errors(cli, tmp_path, args, message):
    src = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    result = cli("data", "dedup", src, "--out", tmp_path / "kept.json", *args)
    assert result.code == 1
    assert result.err.startswith(message) and result.err.count("\n") == 1
    assert not (tmp_path / "kept.json").exists()


def test_library_defaults_and_report():
    result = dedup_records(RECORDS, threshold=0.95)
    assert len(result.kept) == 6  # 0.92 and 0.91 are below 0.95; the identical instruction is not
    assert result.rejected[0]["_rejected"]["score"] == 1.0
    assert result.report["examples"][0]["similar_to"] == 2
    everything = dedup_records(RECORDS, threshold=1.0)
    assert everything.kept == RECORDS and not everything.rejected
    with pytest.raises(PacosError, match="fields"):
        dedup_records(RECORDS, fields=())
