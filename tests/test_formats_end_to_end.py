"""Every `pacos data` command on every file format."""

from __future__ import annotations

import json

import pytest

from pacos.data.io import read_records, write_records

RECORDS = [
    {"id": i, "instruction": f"Describe item number {i}.", "input": "" if i % 3 else f"Item {i}",
     "output": f"Item {i} is fine." if i != 5 else "N/A"}
    for i in range(30)
]  # fmt: skip


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_every_command_on_every_format(cli, tmp_path, suffix):
    src = tmp_path / f"data{suffix}"
    write_records(RECORDS, src)
    assert cli("data", "validate", src).out.strip() == f"{src}: 30 records OK"

    cleaned = tmp_path / f"clean{suffix}"
    result = cli("data", "clean", src, "--out", cleaned, "--report", tmp_path / "r.json")
    assert result.code == 0, result.err
    assert len(read_records(cleaned)) == 29
    assert json.loads((tmp_path / "r.json").read_text())["records_dropped"] == 1

    mixed = tmp_path / f"mix{suffix}"
    assert cli("data", "mix", f"{src}:1", f"{cleaned}:1", "--n", 20, "--out", mixed).code == 0
    assert len(read_records(mixed)) == 20

    result = cli("data", "split", src, "--val", 0.2, "--test", 0.1, "--out-dir", tmp_path / "splits")
    assert result.code == 0, result.err
    fmt = suffix.lstrip(".")
    assert [len(read_records(tmp_path / "splits" / f"{n}.{fmt}")) for n in ("train", "val", "test")] == [
        21,
        6,
        3,
    ]

    result = cli("data", "stats", src, "--out-dir", tmp_path / "stats")
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "stats" / "stats.json").read_text())["with_input"] == 10
