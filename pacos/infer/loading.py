"""Load a model for inference and pick its prompt format.

The format follows the model: the `template` a pacos run was trained with (pacos_train.yaml), else the
tokenizer's chat template for chat models, else the Alpaca template. A LoRA adapter is merged into its
base once at load time, so generation runs at the speed of a plain model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from pacos.errors import PacosError
from pacos.models import load_model, load_tokenizer


def trained_template(model_dir: Path) -> str | None:
    recipe = model_dir / "pacos_train.yaml"
    if recipe.is_file():
        return (yaml.safe_load(recipe.read_text()) or {}).get("template")
    return None


def trained_on_conversations(spec: str) -> bool:
    """Whether a pacos run tuned this model on multi-turn records (its chat then keeps the history)."""
    summary = Path(spec) / "train_summary.json"
    if not summary.is_file():
        return False
    try:
        return bool(json.loads(summary.read_text()).get("tokenization", {}).get("conversations"))
    except (ValueError, AttributeError):
        return False


def pick_template(spec: str, tokenizer: Any, template: str | None) -> str:
    from pacos.data.templates import get_template

    path = Path(spec)
    chosen = template or (trained_template(path) if path.is_dir() else None)
    if chosen is None:
        chosen = "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"
    get_template(chosen)  # a clear error for an unknown name
    if chosen == "chat" and not getattr(tokenizer, "chat_template", None):
        raise PacosError(f"model '{spec}': template 'chat' needs a tokenizer with a chat template")
    return chosen


def load_for_inference(
    spec: str, dtype: torch.dtype, device: torch.device, template: str | None, trust_remote_code: bool
) -> tuple[Any, Any, str]:
    path = Path(spec)
    if path.is_dir() and (path / "adapter_config.json").exists():
        from pacos.models import merged_model

        model = merged_model(path).to(dtype)  # merged in fp32, then cast: no rounding twice
    else:
        model = load_model(spec, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    return model.to(device), tokenizer, pick_template(spec, tokenizer, template)
