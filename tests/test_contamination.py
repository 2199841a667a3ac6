"""`pacos data contamination`: training records that overlap evaluation prompts (13-gram overlap and
ROUGE-L near-copies), English and Chinese; --drop, one-line errors, and the exclusion in `pacos data mix`,
`pacos generate` and the quickstart's mix stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacos.data.contamination import (
    ContaminationIndex,
    EvalPrompt,
    contamination_report,
    find_contamination,
    load_eval_set,
    split_clean,
)
from pacos.data.io import read_records
from pacos.errors import PacosError

IFEVAL = {p.id: p.text for p in load_eval_set("ifeval")}
INDEX = ContaminationIndex(load_eval_set("ifeval"))
HELD = "Compose a limerick about a forgetful octopus who keeps losing its socks on the beach."


def found(records: list[dict], index: ContaminationIndex = INDEX) -> dict[str, set[tuple[str, str]]]:
    """record id -> {(check, eval prompt id)}."""
    result: dict[str, set[tuple[str, str]]] = {}
    for m in find_contamination(records, index):
        result.setdefault(records[m.record]["id"], set()).add((m.by, m.prompt.id))
    return result


def rec(id: str, instruction: str, output: str = "An answer.", input: str = "") -> dict:
    return {"id": id, "instruction": instruction, "input": input, "output": output}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_planted_english_copies_and_near_copies_are_found():
    records = [
        rec("copy", IFEVAL["en-004"]),
        # Casing, punctuation and spacing changed: the normalized words are the same.
        rec("case", IFEVAL["en-001"].upper().replace(".", "!").replace(" ", "  ")),
        # A few words changed, so no 13 words in a row survive: ROUGE-L still sees the copy.
        rec(
            "near",
            'Explain how one brews pour-over coffee. End the response with the exact phrase "Is there '
            'anything else I could help with?" and nothing after that.',
        ),
        # The prompt quoted in the answer of an unrelated instruction: only the n-grams see it.
        rec("quoted", "Reply to the user.", f"The user wrote: {IFEVAL['en-002']} Here is my reply."),
        rec("in input", "Respond to the following message.", input=IFEVAL["en-010"]),
        # A conversation: every turn is compared.
        {
            "id": "chat",
            "instruction": "Hi!",
            "input": "",
            "output": "Sure.",
            "messages": [
                {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello. How can I help?"},
                {"role": "user", "content": IFEVAL["en-005"]},
                {"role": "assistant", "content": "SURE."},
            ],
        },
        # en-012 has 9 words, fewer than 13: it is compared whole.
        rec("short", "Tell me about water.", "Describe the water cycle in at most 4 sentences, they said."),
    ]
    hits = found(records)
    assert hits["copy"] == {("ngram", "en-004"), ("rouge_l", "en-004")}
    assert hits["case"] == {("ngram", "en-001"), ("rouge_l", "en-001")}
    assert hits["near"] == {("rouge_l", "en-010")}
    assert hits["quoted"] == {("ngram", "en-002")}
    assert ("ngram", "en-010") in hits["in input"]
    assert hits["short"] == {("ngram", "en-012")}
    assert ("ngram", "en-005") in hits["chat"]


def test_planted_chinese_copies_and_near_copies_are_found_on_characters():
    records = [
        rec("punct", IFEVAL["zh-001"].replace("，", ", ").replace("。", ". "), "老师好。"),
        rec("near", "请用中文介绍长城的历史，回答里必须包含“秦始皇”与“明朝”两个词。", "长城很长。"),
        rec("quoted", "请回答用户的问题。", f"用户说：{IFEVAL['zh-010']}我的回答如下。"),
    ]
    hits = found(records)
    assert hits["punct"] == {("ngram", "zh-001"), ("rouge_l", "zh-001")}
    assert hits["near"] == {("rouge_l", "zh-005")}
    assert hits["quoted"] == {("ngram", "zh-010")}


def test_unrelated_records_are_kept():
    # The bundled seed tasks (English and Chinese) overlap none of the evaluation prompts.
    seeds = read_records("seed-tasks")
    assert len(seeds) > 200 and find_contamination(seeds, INDEX) == []
    clean, rejects = split_clean(seeds, [])
    assert clean == seeds and rejects == []


def test_short_prompts_and_settings():
    prompts = [EvalPrompt(text="Name three primary colors.", id="tiny", source="mine")]
    index = ContaminationIndex(prompts)
    assert index.short == 1  # under 8 words: only ROUGE-L compares it
    records = [
        rec("a", "Name three primary colors please"),
        rec("b", "Paint a fence.", "First name three primary colors you like, then choose one of them."),
    ]
    assert found(records, index) == {"a": {("rouge_l", "tiny")}}
    # Plain evaluation records work too; n-gram and ROUGE-L checks can be turned off.
    plain = [{"instruction": IFEVAL["en-004"], "input": ""}]
    copy = [rec("x", IFEVAL["en-004"])]
    assert {m.by for m in find_contamination(copy, plain)} == {"ngram", "rouge_l"}
    assert {m.by for m in find_contamination(copy, plain, ngram=0)} == {"rouge_l"}
    assert {m.by for m in find_contamination(copy, plain, rouge=None)} == {"ngram"}
    assert find_contamination(copy, plain)[0].prompt.id == 0  # no id: its position
    with pytest.raises(PacosError, match="between 0 and 1"):
        ContaminationIndex(prompts, rouge=1.5)


def test_split_clean_and_report_name_the_eval_prompt():
    records = [rec("copy", IFEVAL["zh-002"]), rec("fine", "Give three tips for staying healthy.")]
    matches = find_contamination(records, INDEX, where=["t.jsonl:1", "t.jsonl:2"])
    clean, rejects = split_clean(records, matches)
    assert [r["id"] for r in clean] == ["fine"]
    why = rejects[0]["_rejected"]
    assert (
        why["rule"] == "contaminated"
        and why["eval_id"] == "zh-002"
        and why["eval_prompt"] == IFEVAL["zh-002"]
    )
    assert "ifeval zh-002" in why["reason"] and [m["by"] for m in why["matches"]] == ["ngram", "rouge_l"]
    assert why["matches"][0]["where"] == "t.jsonl:1"
    report = contamination_report(len(records), INDEX, matches)
    assert report["records_dropped"] == 1 and report["records_kept"] == 1
    assert report["by_reason"]["ngram"] == {"records": 1, "by_eval_set": {"ifeval": 1}}
    assert report["eval_sets"] == [{"name": "ifeval", "prompts": 105}]


def test_cli_reports_and_drop_writes_clean_and_rejected_files(cli, tmp_path):
    held = write_jsonl(tmp_path / "held.jsonl", [rec("h1", HELD)])
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [
            rec("t1", "Give three tips for staying healthy.", "Eat well, sleep, move."),
            rec("t2", IFEVAL["en-004"].lower().replace(",", "")),
            rec("t3", "Write a poem.", f"Sure: {HELD.lower()[:-1]}? Here it is."),
            rec("t4", IFEVAL["zh-005"], "长城始建于秦始皇时期。"),
        ],
    )
    out = tmp_path / "clean.jsonl"
    result = cli(
        "data", "contamination", train, "--against", "ifeval", held, "--drop", out,
        "--report", tmp_path / "report.json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert (
        f"{train}: 4 records against ifeval (105 prompts), {held} (1 prompts): 3 contaminated" in result.out
    )
    assert f"13-gram overlap: 3 records (ifeval 2, {held} 1)" in result.out
    assert "ROUGE-L > 0.7: 2 records (ifeval 2)" in result.out
    assert "id t3" in result.out and "kept 1 of 4 records" in result.out
    assert [r["id"] for r in read_records(out)] == ["t1"]
    rejects = [json.loads(line) for line in (tmp_path / "clean.rejected.jsonl").read_text().splitlines()]
    assert [(r["id"], r["_rejected"]["eval_set"], r["_rejected"]["eval_id"]) for r in rejects] == [
        ("t2", "ifeval", "en-004"),
        ("t3", str(held), "h1"),
        ("t4", "ifeval", "zh-005"),
    ]
    assert rejects[1]["_rejected"]["eval_prompt"].startswith("Compose a limerick")
    assert rejects[1]["_rejected"]["matches"][0]["where"] == f"{train}:3"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["records_dropped"] == 3 and len(report["matches"]) == 5 and report["output"] == str(out)


def test_bad_input_is_a_one_line_error_naming_the_file(cli, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"instruction": "ok", "output": "x"}\n{"instruction": "broken\n')
    bad_eval = tmp_path / "eval.csv"
    bad_eval.write_text("question,answer\nwhat,that\n")
    good = write_jsonl(tmp_path / "good.jsonl", [rec("a", "Say hi.")])
    for args, where in (
        ((train, "--against", "ifeval"), f"{train}:2: invalid JSON"),
        ((good, "--against", bad_eval), f"{bad_eval}:1: missing column 'instruction'"),
        ((good, "--against", tmp_path / "none.jsonl"), "none.jsonl: no such file or directory"),
        ((good,), "no evaluation set"),
        ((good, "--against", "ifeval", "--rouge", "7"), "ROUGE-L threshold is between 0 and 1"),
    ):
        result = cli("data", "contamination", *args)
        assert result.code == 1 and "Traceback" not in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1 and where in result.err, result.err


def test_mix_exclude_drops_contaminated_records_before_drawing(cli, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [rec(f"a{i}", f"Task number {i} of set a.") for i in range(6)]
                    + [rec("a-copy", IFEVAL["en-001"])])  # fmt: skip
    b = write_jsonl(tmp_path / "b.jsonl", [rec(f"b{i}", f"第{i}个任务。") for i in range(6)]
                    + [rec("b-copy", IFEVAL["zh-002"])])  # fmt: skip
    out = tmp_path / "mix.jsonl"
    result = cli("data", "mix", f"{a}:0.5", f"{b}:0.5", "--exclude", "ifeval", "--out", out,
                 "--report", tmp_path / "mix.json")  # fmt: skip
    assert result.code == 0, result.err
    mixed = read_records(out)
    assert len(mixed) == 12 and not {"a-copy", "b-copy"} & {r["id"] for r in mixed}
    assert "a: 6 records (weight 0.5), 1 dropped as contaminated" in result.out
    rejected = [json.loads(line) for line in (tmp_path / "mix.rejected.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rejected) == ["a-copy", "b-copy"]
    assert {r["_rejected"]["source"] for r in rejected} == {"a", "b"}
    assert json.loads((tmp_path / "mix.json").read_text())["excluded"]["contaminated"] == {"a": 1, "b": 1}


def test_generate_exclude_rejects_contaminated_candidates(cli, tmp_path):
    import random

    from pacos.config import build_config
    from pacos.generate.config import GenerateConfig
    from pacos.generate.filters import CandidateFilter
    from tests.scripted_teacher import Action, ScriptedTeacher, new_task

    check = CandidateFilter(build_config(GenerateConfig, {"exclude": ["ifeval"]}, "test"))
    _, rule, reason = check(rec("x", IFEVAL["en-002"], "A hash table maps keys to buckets."))
    assert rule == "contaminated" and "ifeval en-002" in (reason or "")
    assert "contaminated" not in {r.name for r in CandidateFilter(GenerateConfig()).rules}

    fresh = [new_task(random.Random(i)) for i in range(3)]
    copy = {"instruction": IFEVAL["en-004"], "input": "", "output": "the revolution began in 1789."}
    out = tmp_path / "run"
    with ScriptedTeacher(script=[Action("list", items=[fresh[0], copy, fresh[1], fresh[2]])]) as teacher:
        result = cli("generate", "--teacher", teacher.url, "--num", "3", "--out", out, "--exclude", "ifeval")
    assert result.code == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accepted"] == 3 and summary["rejected_by_reason"] == {"contaminated": 1}
    rejected = json.loads((out / "rejected.jsonl").read_text().splitlines()[0])
    assert rejected["instruction"] == IFEVAL["en-004"] and "en-004" in rejected["_rejected"]["reason"]
    run = json.loads((out / "run.json").read_text())
    assert run["exclude"] == ["ifeval"]


def test_quickstart_mix_drops_training_records_that_overlap_held_out_or_ifeval(tmp_path, monkeypatch):
    from pacos.pipeline import quickstart
    from pacos.pipeline.quickstart_config import QuickstartConfig

    monkeypatch.setattr(quickstart, "plot_stats", lambda stats, out: [])  # no plotting: fast
    data = tmp_path / "data"
    data.mkdir()
    held = rec("h1", HELD)
    write_jsonl(data / "held_out.jsonl", [held])
    write_jsonl(data / "seeds.jsonl", [rec("s1", "Give three tips for staying healthy."),
                                       rec("s2", "请列出三种水果。", "苹果、香蕉、橙子。")])  # fmt: skip
    generated = tmp_path / "data.json"
    generated.write_text(json.dumps([
        {"instruction": "Write a funny poem.", "input": "", "output": held["instruction"].lower() + " Done."},
        {"instruction": IFEVAL["zh-010"], "input": "", "output": "我最喜欢的书是《红楼梦》。"},
        {"instruction": "Name a planet with rings.", "input": "", "output": "Saturn."},
    ], ensure_ascii=False))  # fmt: skip
    (tmp_path / "mix").mkdir()
    result = quickstart.mix_stage(QuickstartConfig(), tmp_path / "mix", data, generated)
    assert result["contaminated"] == 2 and result["train"] == 3
    train = {r["instruction"] for r in read_records(tmp_path / "mix" / "train.jsonl")}
    assert train == {"Give three tips for staying healthy.", "请列出三种水果。", "Name a planet with rings."}
    rules = [json.loads(line)["_rejected"]["rule"] for line in (tmp_path / "mix" / "rejected.jsonl").open()]
    assert rules == ["contaminated", "contaminated"]


def test_report_states_notes(tmp_path):
    from pacos.evaluate.report import write_report

    note = "Training data: 2 records dropped for contamination."
    md, page = write_report([{"name": "tuned", "metrics": {}, "answers": [], "annotations": []}], tmp_path,
                            notes=[note])  # fmt: skip
    assert note in md.read_text() and note in page.read_text()
