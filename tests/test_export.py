from __future__ import annotations

import torch

from pacos.train.config import TrainConfig
from pacos.train.run import train


def test_lora_merge_gives_the_same_logits_as_the_adapter(cli, tiny_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "lora"
    train(
        TrainConfig(
            model=str(tiny_llama),
            data="seed-tasks-zh",
            output_dir=str(adapter),
            method="lora",
            max_steps=3,
            batch_size=4,
            micro_batch_size=2,
            lr=1e-2,
            max_length=1024,
            tensorboard=False,
        )
    )
    merged_dir = tmp_path / "merged"
    result = cli("export", adapter, "--out", merged_dir)
    assert result.code == 0, result.err
    assert not (merged_dir / "adapter_config.json").exists() and (merged_dir / "model.safetensors").exists()
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), adapter)
    assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-5)
    assert not torch.allclose(
        merged(ids).logits, AutoModelForCausalLM.from_pretrained(tiny_llama)(ids).logits
    )


def test_export_errors_are_one_line(cli, tiny_llama, tmp_path):
    result = cli("export", tiny_llama, "--out", tmp_path / "x", "--format", "xyz")
    assert result.code == 1 and "unknown export format 'xyz'; choose hf, gguf or ollama" in result.err
    result = cli("export", tiny_llama, "--out", tmp_path / "x", "--outtype", "q8_0")
    assert result.code == 1 and "--outtype applies to --format gguf and ollama only" in result.err
    (tmp_path / "empty").mkdir()
    result = cli("export", tmp_path / "empty", "--out", tmp_path / "y")
    assert result.code == 1 and "holds no Hugging Face model" in result.err
