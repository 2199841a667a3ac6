from __future__ import annotations

import json
import subprocess
import sys

from pacos import __version__


def test_version_and_help(cli):
    assert cli("--version").out.strip() == f"pacos {__version__}"
    result = cli("--help")
    assert result.code == 0
    for command in ("data", "generate", "train", "eval", "chat", "serve", "export", "quickstart"):
        assert command in result.out
    assert all(
        c in cli("data", "--help").out
        for c in ("validate", "clean", "mix", "split", "stats", "convert", "dedup")
    )


def test_usage_errors_exit_2_without_traceback(cli):
    result = cli("data", "clean")
    assert result.code == 2 and "Traceback" not in result.err + result.out


def test_quickstart_runs_every_stage_on_a_tiny_model(tmp_path, tiny_llama):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pacos",
            "quickstart",
            "--out-dir",
            str(tmp_path),
            "--set",
            f"model={tiny_llama}",
            "--set",
            "max_steps=3",
            "--set",
            "max_length=1024",
            "--set",
            "eval_every=0",
            "--set",
            "save_every=0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
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
    for name in ("adapter_model.safetensors", "metrics.jsonl", "loss.png", "train_summary.json"):
        assert (tmp_path / "model" / name).exists(), name
    samples = json.loads((tmp_path / "samples.json").read_text())
    assert len(samples) == 3 and all(isinstance(s["ended_with_eos"], bool) for s in samples)
    assert "[try] (held-out prompt)" in proc.stdout
