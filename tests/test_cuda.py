"""On a CUDA GPU: decoding and training on the device. Skipped where PyTorch sees no GPU (CI); the other test
files run on a GPU too when one is present (their models load on `auto`), this file adds what only holds
there: the device, bf16 chosen by `auto`, and the engine against transformers on the same GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pacos.infer import SamplingParams, TorchEngine
from pacos.train.config import TrainConfig
from pacos.train.metrics import read_metrics
from pacos.train.run import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

PROMPTS = [
    "Hello there, how are you doing today my friend",
    "你好，世界",
    "a b c",
    "The quick brown fox jumps",
]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_greedy_on_the_gpu_equals_transformers_on_the_gpu(arch, tiny_llama, tiny_gemma):
    path = tiny_llama if arch == "llama" else tiny_gemma
    engine = TorchEngine.load(str(path), dtype="float32")
    assert next(engine.model.parameters()).device.type == "cuda"
    model = AutoModelForCausalLM.from_pretrained(path).cuda().eval()
    got = engine.generate(PROMPTS, SamplingParams(max_new_tokens=24, ignore_eos=True))
    for prompt, completion in zip(PROMPTS, got, strict=True):
        ids = torch.tensor([engine.encode(prompt)], device="cuda")
        out = model.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=0)
        assert completion.token_ids == out[0, ids.shape[1] :].tolist(), prompt


def test_auto_dtype_on_the_gpu_is_bf16_and_32_seeded_rows_repeat(tiny_gemma):
    engine = TorchEngine.load(str(tiny_gemma))  # dtype auto
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    engine.max_batch_size = 32
    prompts = [f"{PROMPTS[i % 4]} {i}" for i in range(32)]
    params = SamplingParams(max_new_tokens=40, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    first = engine.generate(prompts, params)
    again = engine.generate(prompts, params)
    assert [c.completion_tokens for c in first] == [40] * 32
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert len({tuple(c.token_ids) for c in first}) > 16  # rows sample on their own


def test_training_on_the_gpu_runs_bf16_mixed_learns_and_loads_on_the_cpu(tiny_llama, tmp_path: Path):
    out = tmp_path / "run"
    config = TrainConfig(model=str(tiny_llama), data="seed-tasks-zh", output_dir=str(out), max_steps=12,
                         batch_size=4, micro_batch_size=2, lr=3e-3, max_length=512, val_fraction=0.1,
                         eval_every=6, save_every=6, tensorboard=False, method="lora")  # fmt: skip
    result = train(config)
    assert result.steps == 12
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["runtime"] == {
        "device": "cuda",
        "processes": 1,
        "strategy": "single",
        "precision": "bf16-mixed",
    }
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    engine = TorchEngine.load(str(out), dtype="float32", device="cpu")  # trained on the GPU, used anywhere
    assert (
        engine.generate(["hello"], SamplingParams(max_new_tokens=4, ignore_eos=True))[0].completion_tokens
        == 4
    )
