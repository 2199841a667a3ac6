"""The bundled seed tasks: counts, format, diversity and correctness checks that can be automated."""

from __future__ import annotations

import re
from collections import Counter

from pacos.data.clean import clean_records
from pacos.data.io import read_records
from pacos.data.seeds import load_seed_tasks
from pacos.data.stats import verb_object

CJK = re.compile(r"[\u4e00-\u9fff]")


def test_counts_and_format():
    en, zh = load_seed_tasks("en"), load_seed_tasks("zh")
    assert len(en) >= 175 and len(zh) >= 30
    for task in en + zh:
        assert set(task) == {"id", "name", "instruction", "instances", "is_classification"}
        assert isinstance(task["is_classification"], bool) and task["instances"]
        assert re.fullmatch(r"[a-z0-9_]+", task["name"])
    assert all(CJK.search(t["instruction"]) for t in zh)
    assert not any(CJK.search(t["instruction"]) for t in en)
    assert len({t["id"] for t in en + zh}) == len(en) + len(zh)
    assert len({t["name"] for t in en + zh}) == len(en) + len(zh)


def test_they_validate(cli):
    result = cli("data", "validate", "seed-tasks-en", "seed-tasks-zh")
    assert result.code == 0
    assert result.out.splitlines() == [
        f"seed-tasks-en: {len(load_seed_tasks('en'))} records OK",
        f"seed-tasks-zh: {len(load_seed_tasks('zh'))} records OK",
    ]


def test_about_forty_percent_have_input_and_tasks_are_diverse():
    records = read_records("seed-tasks")
    share = sum(1 for r in records if r["input"]) / len(records)
    assert 0.35 <= share <= 0.55
    tasks = load_seed_tasks()
    assert sum(t["is_classification"] for t in tasks) >= 20
    verbs = Counter(verb_object(r["instruction"])[0] for r in records)
    questions = verbs.pop("(question)", 0) + verbs.pop("(other)", 0)
    assert len(verbs) >= 40 and verbs.most_common(1)[0][1] / len(records) < 0.1  # no verb dominates
    assert 0.2 < questions / len(records) < 0.6  # a mix of questions and imperatives


def test_no_rule_of_the_cleaner_fires_on_them():
    result = clean_records(read_records("seed-tasks"))
    assert result.rejected == [] and result.report["records_kept"] == len(result.kept)
    assert all(r["count"] == 0 for r in result.report["rules"])
