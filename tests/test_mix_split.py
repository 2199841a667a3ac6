from __future__ import annotations

from collections import Counter

import pytest

from pacos.data.io import read_records
from pacos.data.mix import allocate, mix_records, parse_source
from pacos.data.split import split_records
from pacos.errors import PacosError

from .conftest import write_jsonl


def make(prefix: str, n: int) -> list[dict]:
    return [
        {"id": f"{prefix}{i}", "instruction": f"{prefix} task {i}", "input": "", "output": "ok"}
        for i in range(n)
    ]


def test_parse_source_specs():
    assert parse_source("data/a.json:0.7") == parse_source("a=data/a.json:0.7")
    assert parse_source("alpaca=x/y.jsonl:2").name == "alpaca"
    assert parse_source("owner/dataset:train:0.5").path == "owner/dataset:train"
    for bad, words in [
        ("a.json", "expected PATH:WEIGHT"),
        ("a.json:x", "is not a number"),
        ("a.json:-1", "positive"),
        ("a.json:nan", "positive"),
    ]:
        with pytest.raises(PacosError, match=words):
            parse_source(bad)


def test_allocate_is_exact_and_proportional():
    assert allocate(10, [0.7, 0.3]) == [7, 3]
    assert allocate(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(allocate(997, [0.2, 0.5, 0.3])) == 997


def test_mix_weights_tags_and_no_replacement():
    a, b = make("a", 100), make("b", 100)
    mixed, report = mix_records(
        [(parse_source("a.json:0.7"), a), (parse_source("b.json:0.3"), b)], 50, seed=1
    )
    counts = Counter(r["source"] for r in mixed)
    assert counts == {"a": 35, "b": 15}
    assert len({r["id"] for r in mixed}) == 50  # drawn without replacement
    assert [s["repeated"] for s in report["sources"]] == [0, 0]
    again, _ = mix_records([(parse_source("a.json:0.7"), a), (parse_source("b.json:0.3"), b)], 50, seed=1)
    assert again == mixed
    other, _ = mix_records([(parse_source("a.json:0.7"), a), (parse_source("b.json:0.3"), b)], 50, seed=2)
    assert other != mixed


def test_mix_repeats_only_when_a_source_runs_out_and_says_so():
    mixed, report = mix_records(
        [(parse_source("a.json:0.5"), make("a", 3)), (parse_source("b.json:0.5"), make("b", 100))], 20
    )
    assert Counter(r["source"] for r in mixed) == {"a": 10, "b": 10}
    assert report["sources"][0]["repeated"] == 7
    assert len({r["id"] for r in mixed if r["source"] == "a"}) == 3


def test_mix_default_n_is_largest_without_repeats():
    mixed, report = mix_records(
        [(parse_source("a.json:0.5"), make("a", 30)), (parse_source("b.json:0.5"), make("b", 100))], None
    )
    assert len(mixed) == 60 and all(s["repeated"] == 0 for s in report["sources"])


def test_mix_command(cli, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", make("a", 40))
    write_jsonl(tmp_path / "b.jsonl", make("b", 40))
    out = tmp_path / "mix.parquet"
    result = cli(
        "data",
        "mix",
        f"{tmp_path}/a.jsonl:0.75",
        f"{tmp_path}/b.jsonl:0.25",
        "seed-tasks-zh:0.5",
        "--n",
        20,
        "--out",
        out,
        "--seed",
        3,
    )
    assert result.code == 0, result.err
    assert Counter(r["source"] for r in read_records(out)) == {"a": 10, "b": 3, "seed-tasks-zh": 7}
    result = cli("data", "mix", f"{tmp_path}/a.jsonl:0.5", f"{tmp_path}/a.jsonl:0.5", "--out", out)
    assert result.code == 1 and "distinct names" in result.err


def test_split_is_deterministic_disjoint_and_sized():
    records = make("r", 200)
    splits = split_records(records, val=0.1, test=0.05, seed=0)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [170, 20, 10]
    ids = [r["id"] for part in splits.values() for r in part]
    assert sorted(ids) == sorted(r["id"] for r in records)
    assert split_records(records, 0.1, 0.05, seed=0) == splits
    assert split_records(records, 0.1, 0.05, seed=1) != splits


def test_split_keeps_identical_prompts_together():
    records = [{"instruction": f"Task {i % 20}", "input": "", "output": str(i)} for i in range(100)]
    splits = split_records(records, val=0.2, test=0.2, seed=4)
    seen = {name: {r["instruction"] for r in part} for name, part in splits.items()}
    assert (
        not (seen["train"] & seen["val"])
        and not (seen["train"] & seen["test"])
        and not (seen["val"] & seen["test"])
    )


def test_split_rejects_bad_fractions():
    with pytest.raises(PacosError, match="must leave some training data"):
        split_records(make("r", 10), 0.5, 0.5)
    with pytest.raises(PacosError, match=r"--val must be a fraction"):
        split_records(make("r", 10), -0.1, 0)


def test_split_command_keeps_format(cli, tmp_path):
    src = tmp_path / "d.csv"
    from pacos.data.io import write_records

    write_records(make("r", 60), src)
    result = cli("data", "split", src, "--val", 0.1, "--test", 0.1, "--out-dir", tmp_path / "s", "--seed", 7)
    assert result.code == 0, result.err
    sizes = {name: len(read_records(tmp_path / "s" / f"{name}.csv")) for name in ("train", "val", "test")}
    assert sizes == {"train": 48, "val": 6, "test": 6}
