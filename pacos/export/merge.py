"""Merge a LoRA adapter into its base model and save a plain Hugging Face directory (safetensors).

The base is the model the adapter was trained on: the `model` of the run's pacos_train.yaml (so an
embedded name is re-resolved, even if the conversion cache was cleared), else the adapter's own
`base_model_name_or_path`. Merging happens in fp32 on the de-quantized base, never into a quantized one
(merging into a 4-bit base loses quality: transformers #31293).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pacos.errors import PacosError
from pacos.fileio import atomic_dir
from pacos.models import load_model, load_tokenizer


def base_model_of(adapter_dir: Path) -> str:
    recipe = adapter_dir / "pacos_train.yaml"
    if recipe.exists():
        model = (yaml.safe_load(recipe.read_text()) or {}).get("model")
        if model:
            return str(model)
    try:
        return json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, KeyError, ValueError):
        raise PacosError(f"{adapter_dir}: adapter_config.json names no base model; pass --base") from None


def merged_model(model_dir: Path, base: str | None = None) -> Any:
    """An adapter merged into its base, in fp32 on the de-quantized base."""
    import torch
    from peft import PeftModel

    base_spec = base or base_model_of(model_dir)
    try:
        merged = PeftModel.from_pretrained(load_model(base_spec, dtype=torch.float32), str(model_dir))
    except PacosError:
        raise
    except Exception as e:  # a base of another shape, a broken adapter file
        raise PacosError(f"{model_dir}: cannot apply this adapter to '{base_spec}': {e}") from None
    return merged.merge_and_unload()


def export_hf(model_dir: str | Path, out: str | Path, base: str | None = None) -> Path:
    """A standalone model directory: LoRA merged into its base, or a full model re-saved as safetensors."""
    import torch

    model_dir, out = Path(model_dir), Path(out)
    if (model_dir / "adapter_config.json").exists():
        model = merged_model(model_dir, base)
    else:
        model = load_model(str(model_dir), dtype=torch.float32)
    tokenizer = load_tokenizer(str(model_dir))
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out
