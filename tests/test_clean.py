from __future__ import annotations

import json

import pytest

from pacos.data.clean import RULES_BY_NAME, CleanConfig, clean_records, expected_arithmetic
from pacos.data.io import read_records

from .conftest import write_jsonl


def rec(instruction: str, output: str = "A fine answer.", input: str = "") -> dict:
    return {"instruction": instruction, "input": input, "output": output}


DROPPED = {
    "empty_instruction": [rec("   ")],
    "empty_output": [rec("Name a colour.", ""), rec("Name a colour.", " \n\t")],
    "na_output": [
        rec("List the verbs.", "N/A"),
        rec("List the verbs.", "<No Output>"),
        rec("列出动词。", "无。"),
    ],
    "merged_items": [
        rec("Name a colour.", "Blue.\n\n##\n\n18. Instruction: Name a fruit.\n18. Input:\n<noinput>"),
        rec("Name a colour.", "Blue.\n### Instruction:\nName a fruit."),
    ],
    "repetitive_output": [
        rec("List 3 fruits.", "1. Apples are red.\n2. Apples are red.\n3. Apples are red."),
        rec("Tell me a story.", "I'm the man. I'm the man. I'm the man. The end."),
        rec("写几条标语。", "1. 社区防电信诈骗。\n2. 社区防电信诈骗。\n3. 社区防电信诈骗。"),
    ],
    "url_or_attachment": [
        rec("Summarise the article.", input="https://example.com/news/123"),
        rec("Describe what is shown.", input="<Picture Attached>"),
        rec("Summarise https://example.com/post for me."),
    ],
    "non_text_modality": [
        rec("Draw a cat sitting on a wall."),
        rec("Generate an image of a sunset."),
        rec("Describe the following photo."),
        rec("画一幅山水画。"),
        rec("描述这张图片的内容。"),
    ],
    "wrong_arithmetic": [
        rec("What is 17 * 23?", "17 * 23 = 381"),
        rec("Calculate 15% of 80.", "15% of 80 is 14."),
        rec("计算 1250 ÷ 5 等于多少？", "等于 240。"),
    ],
    "too_long": [rec("Summarise this.", "x" * 30, input="y" * 20_000)],
}
KEPT = [
    rec("Summarise the plot of Hamlet in two sentences."),
    rec("Give a shell command that counts the files in a directory."),
    rec("Draw a conclusion from the survey results below.", input="70% said yes."),
    rec("画蛇添足是什么意思？", "比喻做了多余的事，反而不恰当。"),
    rec("What is 17 * 23?", "17 * 23 = 391"),
    rec("What is 1/3 as a decimal, to two places?", "About 0.33."),
    rec("Calculate 15% of 80.", "15% of 80 is 12."),
    rec("What is the date 12/05/2020 written out?", "December 5, 2020."),
    rec("What is None in Python?", "None is Python's null value."),
    rec("Explain this function.", "It returns the input unchanged.", input="def f(x):\n    return x"),
    rec("下面这句话的情感是积极还是消极？", "积极", input="这家餐厅的菜非常好吃！"),
    rec("Answer each.", "Yes.\nYes.\nYes.\nNo."),  # short pieces repeat legitimately
    rec("Write it.", "```python\nx = f(a)\nprint(x)\nx = f(a)\nprint(x)\nx = f(a)\n```\nIt prints twice."),
    rec("Twice is fine.", "Keep the receipt safe.\nPay on time.\nKeep the receipt safe."),
]


@pytest.mark.parametrize("rule", sorted(DROPPED))
def test_drop_rule_fires_and_names_itself(rule):
    result = clean_records(DROPPED[rule])
    assert result.kept == []
    assert [r["_rejected"]["rule"] for r in result.rejected] == [rule] * len(DROPPED[rule])
    assert result.counts[rule] == len(DROPPED[rule])


def test_legitimate_records_are_kept():
    result = clean_records(KEPT)
    assert result.rejected == [], [r["_rejected"] for r in result.rejected]
    assert result.kept == KEPT


def test_exact_duplicates_after_normalisation():
    records = [rec("Name a colour.", "Blue."), rec("name  a COLOUR.", "blue."), rec("Name a colour.", "Red.")]
    result = clean_records(records)
    assert result.kept == [records[0], records[2]]
    assert result.rejected[0]["_rejected"] == {"rule": "exact_duplicate", "reason": "same as kept record #1"}


def test_fix_rules_flag_without_fix_and_repair_with_it():
    dirty = [
        rec("  Name a colour.\u200b ", "Blue.\r\nReally\x07.", input="<noinput>"),
        rec("Translate.", "Hola.", input="No input"),
    ]
    flagged = clean_records(dirty)
    assert flagged.kept == dirty  # unchanged, only counted
    assert flagged.counts["control_chars"] == 1 and flagged.counts["whitespace"] == 1
    assert flagged.counts["no_input_marker"] == 2
    fixed = clean_records(dirty, CleanConfig(fix=True))
    assert fixed.kept[0] == rec("Name a colour.", "Blue.\nReally.")
    assert fixed.kept[1]["input"] == ""
    actions = {r["name"]: r["action"] for r in fixed.report["rules"]}
    assert actions["control_chars"] == "fix" and flagged.report["rules"][0]["action"] == "flag"


def test_fix_rules_repair_every_turn_of_a_conversation():
    messages = [
        {"role": "user", "content": "Name a colour.\u200b "},
        {"role": "assistant", "content": " Blue.\r\n"},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Red. "},
    ]
    record = rec("Name a colour.\u200b ", "Red. ") | {"messages": messages}
    fixed = clean_records([record], CleanConfig(fix=True)).kept[0]
    assert [m["content"] for m in fixed["messages"]] == ["Name a colour.", "Blue.", "Another?", "Red."]
    assert fixed["instruction"] == "Name a colour." and fixed["output"] == "Red."
    assert record["messages"][1]["content"] == " Blue.\r\n"  # the input record is not changed in place


def test_lone_surrogates_are_removed_so_output_can_be_written(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"instruction": "Say hi \\ud800.", "output": "Hi."}\n', encoding="utf-8")
    result = clean_records(read_records(path), CleanConfig(fix=True))
    assert result.kept[0]["instruction"] == "Say hi ."


def test_report_lists_every_rule_with_counts_and_examples():
    records = [r for group in DROPPED.values() for r in group] + KEPT
    result = clean_records(records)
    names = [r["name"] for r in result.report["rules"]]
    assert names == list(RULES_BY_NAME)
    for entry in result.report["rules"]:
        assert entry["count"] == len(DROPPED.get(entry["name"], [])) or entry["kind"] == "fix"
        assert len(entry["examples"]) == min(entry["count"], 3)
    assert result.report["records_in"] == len(records)
    assert result.report["records_kept"] + result.report["records_dropped"] == len(records)


def test_disabled_rules_do_nothing():
    result = clean_records(DROPPED["non_text_modality"], CleanConfig(disable=["non_text_modality"]))
    assert len(result.kept) == len(DROPPED["non_text_modality"])
    assert {r["name"]: r["action"] for r in result.report["rules"]}["non_text_modality"] == "disabled"


@pytest.mark.parametrize(
    "text,value",
    [
        ("What is 2 + 3 * 4?", 14),
        ("Compute (7 - 2) ^ 2", 25),
        ("Evaluate 1,200 / 4.", 300),
        ("What is 20% of 150?", 30),
        ("计算 12 × 12", 144),
        ("What is the capital of France?", None),
        ("Add 2 and 3.", None),
        ("What is the population of people aged 18-25 in large cities in Europe and Asia today?", None),
        ("What is 1/0?", None),
    ],
)
def test_expected_arithmetic(text, value):
    assert expected_arithmetic(text) == value


def test_clean_command_writes_output_rejected_and_report(cli, tmp_path):
    src = write_jsonl(
        tmp_path / "in.jsonl", [*DROPPED["na_output"], *KEPT[:3], rec("X", "Y", input="<noinput>")]
    )
    out = tmp_path / "clean.json"
    result = cli("data", "clean", src, "--out", out, "--report", tmp_path / "report.json", "--fix")
    assert result.code == 0, result.err
    kept = json.loads(out.read_text())
    assert len(kept) == 4 and kept[-1]["input"] == ""
    rejected = [json.loads(line) for line in (tmp_path / "clean.rejected.jsonl").read_text().splitlines()]
    assert [r["_rejected"]["rule"] for r in rejected] == ["na_output"] * 3
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["records_in"] == 7 and report["rejected"].endswith("clean.rejected.jsonl")
    assert "kept 4 of 7 records" in result.out


def test_clean_keeps_chinese_intact(cli, tmp_path):
    out = tmp_path / "zh.jsonl"
    result = cli("data", "clean", "seed-tasks-zh", "--out", out, "--fix")
    assert result.code == 0
    assert read_records(out) == read_records("seed-tasks-zh")
