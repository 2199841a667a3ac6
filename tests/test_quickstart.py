"""`pacos quickstart`: every stage on tiny models, skipping and resuming stages, and the stage runner."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pacos.errors import PacosError
from pacos.pipeline.stages import run_stage
from tests.scripted_teacher import Action, ScriptedTeacher

STAGES = ("data", "generate", "mix", "model", "pairs", "prefer", "eval")


def _quickstart(out, teacher_url, model, *extra):
    command = [
        sys.executable, "-m", "pacos", "quickstart", "--out-dir", str(out),
        "--set", f"generate.teacher={teacher_url}", "--set", "generate.num=6",
        "--set", "held_out.en=3", "--set", "held_out.zh=2",
        "--set", f"train.model={model}", "--set", "train.max_steps=2", "--set", "train.max_length=1024",
        "--set", "train.eval_every=0", "--set", "train.save_every=0", "--set", "train.precision=fp32",
        "--set", f"eval.judge=local:{model}", "--set", "eval.max_new_tokens=8",
        "--set", "eval.ifeval_per_language=2", "--set", "eval.embeddings=false",
        "--set", "prefer.prompts=8", "--set", "prefer.k=4", "--set", "prefer.max_new_tokens=48",
        "--set", "prefer.min_margin=0", "--set", "prefer.epochs=1", "--set", "prefer.reference_records=3",
        "--set", "prefer.reference_max_new_tokens=16", *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_quickstart_runs_every_stage_then_skips_what_did_not_change(tmp_path, tiny_llama):
    with ScriptedTeacher(default=Action("list", tasks=4)) as teacher:
        first = _quickstart(tmp_path, teacher.url, tiny_llama)
        assert first.returncode == 0, first.stderr[-3000:]
        requests = len(teacher.requests)
        for stage in STAGES:
            marker = json.loads((tmp_path / stage / "stage.json").read_text())
            assert marker["finished"], stage
        held_out = [
            json.loads(line) for line in (tmp_path / "data" / "held_out.jsonl").read_text().splitlines()
        ]
        assert len(held_out) == 5 and sum(any("\u4e00" <= c <= "\u9fff" for c in r["instruction"])
                                           for r in held_out) == 2  # fmt: skip
        assert len(json.loads((tmp_path / "generate" / "data.json").read_text())) == 6
        train = [json.loads(line) for line in (tmp_path / "mix" / "train.jsonl").read_text().splitlines()]
        held_keys = {r["instruction"] for r in held_out}
        assert not held_keys & {r["instruction"] for r in train}  # nothing held out is trained on
        mixed = json.loads((tmp_path / "mix" / "stage.json").read_text())["result"]
        assert mixed["kept_generated"] == 6 and mixed["train"] == len(train) > 200
        for name in ("adapter_model.safetensors", "loss.png", "train_summary.json"):
            assert (tmp_path / "model" / name).exists(), name
        pairs = json.loads((tmp_path / "pairs" / "stage.json").read_text())["result"]
        # k = 4 samples and the greedy answer (prefer.greedy) for each pool prompt and reference record.
        assert pairs["prompts"] == 8 + 3 and pairs["answers"] == (4 + 1) * (8 + 3)
        assert pairs["pairs_with_reference_chosen"] == 3 and pairs["pairs"] >= 3 + 1
        chosen = [json.loads(line)["chosen"] for line in (tmp_path / "pairs" / "pairs.jsonl").open()]
        assert len(chosen) == pairs["pairs"] and sum(c in {r["output"] for r in train} for c in chosen) >= 3
        prefer = json.loads((tmp_path / "prefer" / "stage.json").read_text())["result"]
        assert prefer["steps"] >= 1 and (tmp_path / "prefer" / "adapter_model.safetensors").exists()
        for run in ("base", "tuned", "preferred"):
            metrics = json.loads((tmp_path / "eval" / run / "metrics.json").read_text())
            assert metrics["answers"] == 5 and "data_loss" in metrics and metrics["ifeval"]["prompts"] == 4
            assert metrics["by_language"]["zh"]["answers"] == 2 and "rouge_l" in metrics["by_language"]["zh"]
        judge = json.loads((tmp_path / "eval" / "tuned" / "metrics.json").read_text())["judge"]
        assert (
            judge["n"] == 5 and {"win_rate", "standard_error", "length_controlled_win_rate"} <= judge.keys()
        )
        rows = json.loads((tmp_path / "eval" / "tuned" / "annotations.json").read_text())
        assert [sum(r["preference_both_orders"] == v for r in rows) for v in (2.0, 1.0)] == [
            judge["wins"],
            judge["losses"],
        ]  # the report's verdicts are the ones the win rate counts
        page = (tmp_path / "eval" / "report.html").read_text()
        assert "tuned (SFT)" in page and "SFT + DPO" in page and "(base)" in page and 'alt="loss.png"' in page
        assert "[done] report:" in first.stdout and "pacos chat --model" in first.stdout

        again = _quickstart(tmp_path, teacher.url, tiny_llama)
        assert again.returncode == 0, again.stderr[-3000:]
        assert all(f"[{s}] inputs unchanged: skipped" in again.stdout for s in STAGES), again.stdout
        assert len(teacher.requests) == requests  # nothing asked of the teacher again

        longer = _quickstart(tmp_path, teacher.url, tiny_llama, "--set", "train.max_steps=3")
        assert longer.returncode == 0, longer.stderr[-3000:]
        skipped = [s for s in STAGES if f"[{s}] inputs unchanged: skipped" in longer.stdout]
        assert skipped == ["data", "generate", "mix"]
        assert json.loads((tmp_path / "model" / "stage.json").read_text())["result"]["steps"] == 3


def test_a_stage_that_died_runs_again_in_place_and_changed_inputs_start_afresh(tmp_path, capsys):
    calls = []

    def dies(stage_dir):
        (stage_dir / "partial.jsonl").write_text("kept\n")
        raise KeyboardInterrupt

    def finishes(stage_dir):
        calls.append((stage_dir / "partial.jsonl").exists())
        return {"n": 1}

    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path, "gen", {"num": 3}, dies)
    assert run_stage(tmp_path, "gen", {"num": 3}, finishes) == {"n": 1}
    assert calls == [True]  # resumed in place: what the killed run wrote is still there
    assert "resuming the unfinished stage" in capsys.readouterr().out
    assert run_stage(tmp_path, "gen", {"num": 3}, finishes) == {"n": 1} and calls == [True]  # skipped
    assert run_stage(tmp_path, "gen", {"num": 4}, finishes) == {"n": 1}
    assert calls == [True, False]  # other inputs: an empty directory


def test_a_directory_the_quickstart_did_not_write_is_never_deleted(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.txt").write_text("precious")
    with pytest.raises(PacosError, match="was not written by this stage"):
        run_stage(tmp_path, "model", {"a": 1}, lambda d: {})
    assert (tmp_path / "model" / "mine.txt").read_text() == "precious"
