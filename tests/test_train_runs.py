"""Whole training runs on tiny random models: outputs, exact resume, torchrun DDP, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pacos.errors import PacosError
from pacos.train import run as run_module
from pacos.train.config import TrainConfig
from pacos.train.metrics import read_metrics
from pacos.train.run import train


def config(model: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(
        model=str(model),
        data="seed-tasks-zh",
        output_dir=str(out),
        max_steps=8,
        batch_size=4,
        micro_batch_size=2,
        lr=3e-3,
        max_length=1024,
        val_fraction=0.1,
        eval_every=4,
        save_every=3,
        tensorboard=False,
    )
    return TrainConfig(**{**base, **overrides})


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_killed_run_resumes_with_identical_losses(tiny_llama, tmp_path, monkeypatch, method):
    extra = {"method": method, "lora": {"dropout": 0.1}} if method == "lora" else {}
    straight = tmp_path / "straight"
    train(config(tiny_llama, straight, **extra))

    crashed = tmp_path / "crashed"
    real_log = run_module.MetricsLog.log

    def die_at_step_5(self, record):
        if record["step"] == 5:
            raise KeyboardInterrupt  # killed after the step-3 checkpoint and after step 4 was logged
        real_log(self, record)

    monkeypatch.setattr(run_module.MetricsLog, "log", die_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_llama, crashed, **extra))
    assert [s for s, _ in losses(crashed)] == [1, 2, 3, 4]
    monkeypatch.setattr(run_module.MetricsLog, "log", real_log)
    train(config(tiny_llama, crashed, **extra), resume=True)

    a, b = losses(straight), losses(crashed)
    assert [s for s, _ in b] == list(range(1, 9))
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) < 1e-5, (a, b)
    assert [r.get("val_loss") for r in read_metrics(straight / "metrics.jsonl")] == [
        r.get("val_loss") for r in read_metrics(crashed / "metrics.jsonl")
    ]


def test_resume_refuses_changed_settings_and_missing_checkpoints(tiny_llama, tmp_path):
    with pytest.raises(PacosError, match="no checkpoint"):
        train(config(tiny_llama, tmp_path / "none"), resume=True)
    train(config(tiny_llama, tmp_path / "run", max_steps=4))
    with pytest.raises(PacosError, match="differ from the checkpoint's: lr"):
        train(config(tiny_llama, tmp_path / "run", max_steps=4, lr=1.0), resume=True)


def test_a_finished_run_extended_with_resume_goes_on_from_its_last_step(tiny_llama, tmp_path, capsys):
    out = tmp_path / "run"
    train(config(tiny_llama, out, max_steps=6, eval_every=0))
    first = losses(out)
    capsys.readouterr()
    train(config(tiny_llama, out, max_steps=8, eval_every=0), resume=True)
    assert "at step 6" in capsys.readouterr().err
    assert losses(out)[:6] == first and [s for s, _ in losses(out)] == list(range(1, 9))  # none redone


def test_full_output_loads_with_transformers_and_loss_falls(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "full"
    result = train(config(tiny_llama, out, max_steps=12, save_every=0))
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[0] == {"step": 0, "val_loss": rows[0]["val_loss"]}  # the untrained baseline comes first
    trained = [r["loss"] for r in rows if "loss" in r]
    assert trained[-1] < trained[0] and rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert result.padding_efficiency == 1.0 and (out / "loss.png").exists() and (out / "best").is_dir()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.pad_token_id != tok.eos_token_id
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 12 and summary["tokenization"]["kept"] > 0
    gpu = torch.cuda.is_available()  # precision auto: bf16-mixed on a GPU, fp32 on a CPU
    assert summary["runtime"] == {"device": "cuda" if gpu else "cpu", "processes": 1, "strategy": "single",
                                  "precision": "bf16-mixed" if gpu else "fp32"}  # fmt: skip
    saved = json.loads((out / "config.json").read_text())
    assert saved["vocab_size"] == model.config.vocab_size  # no silent resize
    ids = tok("### Instruction:", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_full_with_frozen_embeddings_trains_the_decoder_only(tiny_gemma, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "frozen"
    train(config(tiny_gemma, out, max_steps=3, save_every=0, train_embeddings=False))
    before = AutoModelForCausalLM.from_pretrained(tiny_gemma).state_dict()
    after = load_file(out / "model.safetensors")
    embed = next(k for k in after if k.endswith("embed_tokens.weight"))
    assert torch.equal(after[embed], before[embed])  # the tied embeddings/head did not move
    moved = [k for k in after if "layers." in k and k.endswith("proj.weight")]
    assert moved and all(not torch.equal(after[k], before[k]) for k in moved)


def test_lora_output_loads_with_peft_and_is_not_empty(tiny_llama, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    train(config(tiny_llama, out, method="lora", max_steps=4, save_every=0))
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # trained, not the zero init (alpaca-lora #446)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tuned = PeftModel.from_pretrained(base, out)
    ids = torch.tensor([[1, 40, 41, 42]])
    assert not torch.allclose(tuned(ids).logits, AutoModelForCausalLM.from_pretrained(tiny_llama)(ids).logits)


def test_bad_training_settings_are_one_line_errors(cli, tiny_llama, tmp_path):
    result = cli("train", "--model", tiny_llama, "--set", "batch_size=zero", "--output-dir", tmp_path)
    assert result.code == 1 and "field 'batch_size': Input should be a valid integer" in result.err
    result = cli("train", "--model", tmp_path / "missing", "--output-dir", tmp_path)
    assert result.code == 1 and "not an embedded name" in result.err
    result = cli("train", "--model", tiny_llama, "--data", tmp_path / "nope.jsonl", "--output-dir", tmp_path)
    assert result.code == 1 and "nope.jsonl: no such file or directory" in result.err
    assert "Traceback" not in result.err


def torchrun_args(model: Path, strategy: str) -> list[str]:
    return [
        "train",
        "--model",
        str(model),
        "--data",
        "seed-tasks-zh",
        "--max-steps",
        "3",
        "--lr",
        "1e-3",
        "--set",
        "batch_size=8",
        "--set",
        "micro_batch_size=2",
        "--set",
        "max_length=1024",
        "--set",
        "tensorboard=false",
        "--set",
        f"distributed={strategy}",
    ]


TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def one_process_run(tiny_gemma, tmp_path_factory) -> Path:
    """The reference both strategies are compared with: one process (the strategy setting is moot there)."""
    out = tmp_path_factory.mktemp("one")
    one = subprocess.run(
        [sys.executable, "-m", "pacos", *torchrun_args(tiny_gemma, "ddp"), "--output-dir", str(out)],
        capture_output=True,
        text=True,
        env=TORCHRUN_ENV,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_run_under_torchrun_matches_one_process(tiny_gemma, one_process_run, tmp_path, strategy):
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # torchrun binds a free port itself: no window for another process to take it
            "--nproc_per_node",
            "2",
            "-m",
            "pacos",
            *torchrun_args(tiny_gemma, strategy),
            "--output-dir",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=TORCHRUN_ENV,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("trained 3 steps") == 1  # only rank 0 reports
    reference = losses(one_process_run)
    assert len(reference) == 3
    for (_, a), (_, b) in zip(reference, losses(tmp_path / "two"), strict=True):
        assert abs(a - b) < 1e-4
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "two") is not None
