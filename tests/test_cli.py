from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pacos import __version__


def test_version_and_help(cli):
    assert cli("--version").out.strip() == f"pacos {__version__}"
    result = cli("--help")
    assert result.code == 0
    for command in ("data", "generate", "train", "eval", "chat", "serve", "export", "quickstart"):
        assert command in result.out
    assert all(
        c in cli("data", "--help").out for c in ("validate", "clean", "mix", "split", "stats", "convert")
    )


@pytest.mark.parametrize("stage", ["generate", "eval", "chat", "serve", "export"])
def test_unavailable_stages_say_so(cli, stage):
    result = cli(stage, "--model", "x")
    assert result.code == 1
    assert result.err.strip() == (
        f"pacos: error: 'pacos {stage}' is not available in pacos {__version__} yet; "
        "available now: pacos data, pacos quickstart"
    )


def test_usage_errors_exit_2_without_traceback(cli):
    result = cli("data", "clean")
    assert result.code == 2 and "Traceback" not in result.err + result.out


def test_quickstart_runs_the_data_stage(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pacos", "quickstart", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = tmp_path / "data"
    for name in (
        "clean.jsonl",
        "rejected.jsonl",
        "clean_report.json",
        "train.jsonl",
        "val.jsonl",
        "stats.json",
        "lengths.png",
        "verbs.png",
    ):
        assert (data / name).exists(), name
    report = json.loads((data / "clean_report.json").read_text())
    train = (data / "train.jsonl").read_text().splitlines()
    val = (data / "val.jsonl").read_text().splitlines()
    assert len(train) + len(val) == report["records_kept"] > 200
    assert "### Response:" in proc.stdout
