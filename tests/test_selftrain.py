"""`pacos selftrain` on a tiny model: rounds of label, keep, train, evaluate; the stop rules; resuming a
run killed in round 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacos.pipeline import selftrain as selftrain_run
from pacos.pipeline.selftrain_config import SelfTrainConfig


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def recipe(tiny_llama, tmp_path) -> dict:
    labelled = [
        {"instruction": f"Say {w}.", "input": "", "output": f"{w} {w}."} for w in ("yes", "no", "hi", "ok")
    ]
    pool = [
        {"instruction": f"Repeat the word {w}.", "input": ""}
        for w in ("sun", "moon", "star", "rain", "雨", "风")
    ]
    held = [{"instruction": f"Say {w}.", "input": "", "output": f"{w}."} for w in ("cat", "dog", "猫")]
    return {
        "model": str(tiny_llama),
        "labelled": write(tmp_path / "labelled.jsonl", labelled),
        "pool": write(tmp_path / "pool.jsonl", pool),
        "held_out": write(tmp_path / "held.jsonl", held),
        "train": {
            "method": "full",
            "max_steps": 2,
            "batch_size": 2,
            "micro_batch_size": 2,
            "lr": 1e-3,
            "tensorboard": False,
            "precision": "fp32",
        },
        "label": {"samples": 2, "temperature": 1.0, "max_new_tokens": 6, "dtype": "float32"},
        "keep": {"require_eos": False, "clean": False, "top_fraction": 0.5},
        "eval": {"max_new_tokens": 6, "embeddings": False, "dtype": "float32"},
        "metric": "held_out_loss",
        "patience": 5,
        "max_rounds": 3,
        "output_dir": str(tmp_path / "run"),
    }


def test_three_rounds_end_to_end_with_table_and_plot(recipe):
    summary = selftrain_run.run_selftrain(SelfTrainConfig(**recipe))
    out = Path(recipe["output_dir"])
    assert summary["stopped"] == "max_rounds (3) reached"
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2, 3]
    for r in summary["rounds"][1:]:
        assert r["label"]["samples"] == 12  # 6 instructions x 2 samples
        assert r["keep"]["kept"] == 3 and r["keep"]["rejected"] == {"below the top fraction": 3}
        assert r["train"]["examples"] == 4 + 3  # labelled + kept pseudo-labels
        assert r["eval"]["held_out_loss"] > 0
    kept = [json.loads(line) for line in (out / "round-1" / "keep" / "kept.jsonl").read_text().splitlines()]
    assert len(kept) == 3 and all("selftrain" in r and r["output"] for r in kept)
    table = (out / "rounds.md").read_text()
    assert table.count("\n| ") == 5 and "Stopped: max_rounds" in table  # header + 4 rounds
    assert (out / "rounds.png").stat().st_size > 1000
    losses = [r["eval"]["held_out_loss"] for r in summary["rounds"]]
    assert summary["best_round"] == losses.index(min(losses))
    assert (out / "best").resolve() == (out / f"round-{summary['best_round']}" / "train").resolve()


def test_stops_when_the_metric_does_not_improve_or_nothing_is_kept(recipe, tmp_path):
    no_gain = SelfTrainConfig(**{**recipe, "min_delta": 100.0, "patience": 1})
    summary = selftrain_run.run_selftrain(no_gain)
    assert [r["round"] for r in summary["rounds"]] == [0, 1] and summary["best_round"] == 0
    assert "did not improve by 100.0 for 1 round" in summary["stopped"]

    strict = {
        **recipe,
        "output_dir": str(tmp_path / "strict"),
        "keep": {**recipe["keep"], "min_confidence": 0.0},
    }
    summary = selftrain_run.run_selftrain(SelfTrainConfig(**strict))
    assert summary["stopped"] == "round 1 kept no pseudo-labels"
    assert summary["rounds"][1]["keep"]["rejected"] == {"confidence below min_confidence": 6}


def test_a_run_killed_in_round_2_resumes_there(recipe, monkeypatch, capsys):
    real_train, real_label = selftrain_run.train_round, selftrain_run.label

    def killed_in_round_2(config, start, data, held_out, out):
        if "round-2" in str(out):
            raise KeyboardInterrupt
        return real_train(config, start, data, held_out, out)

    monkeypatch.setattr(selftrain_run, "train_round", killed_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        selftrain_run.run_selftrain(SelfTrainConfig(**recipe))
    capsys.readouterr()

    labelled_rounds = []

    def counting_label(config, model, pool, out, seed):
        labelled_rounds.append(out.parent.name)
        return real_label(config, model, pool, out, seed)

    monkeypatch.setattr(selftrain_run, "train_round", real_train)
    monkeypatch.setattr(selftrain_run, "label", counting_label)
    summary = selftrain_run.run_selftrain(SelfTrainConfig(**recipe))
    said = capsys.readouterr().out
    # Skipped: round 0's train and eval, round 1's four stages, round 2's label and keep.
    assert said.count("inputs unchanged: skipped") == 2 + 4 + 2
    assert "[train] resuming the unfinished stage" in said
    assert labelled_rounds == ["round-3"]  # round 2's labels were finished before the kill
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2, 3]


def test_a_new_pool_reuses_round_0_and_relabels(recipe, tmp_path, capsys):
    one_round = {**recipe, "max_rounds": 1}
    selftrain_run.run_selftrain(SelfTrainConfig(**one_round))
    capsys.readouterr()
    pool = write(tmp_path / "pool2.jsonl", [{"instruction": f"Count to {n}.", "input": ""} for n in range(4)])
    summary = selftrain_run.run_selftrain(SelfTrainConfig(**{**one_round, "pool": pool}))
    said = capsys.readouterr().out
    assert said.count("inputs unchanged: skipped") == 2  # round 0's train and eval: the pool is not theirs
    assert summary["rounds"][1]["label"]["samples"] == 8  # the new pool's 4 instructions x 2 samples


def test_recipe_errors_name_the_field(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: p.jsonl\nheld_out: h.jsonl\ntrain:\n  data: x.jsonl\n")
    result = cli("selftrain", "--config", bad)
    assert result.code == 1 and result.err.count("\n") == 1 and "train.data" in result.err
