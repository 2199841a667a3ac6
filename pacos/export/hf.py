"""Save a plain Hugging Face directory (safetensors): a LoRA adapter merged into its base, or a full model.

The base is the model the adapter was trained on: the `model` of the run's pacos_train.yaml (so an
embedded name is re-resolved, even if the conversion cache was cleared), else the adapter's own
`base_model_name_or_path`. Merging happens in fp32 on the de-quantized base, never into a quantized one
(merging into a 4-bit base loses quality: transformers #31293). A pacos run's pacos_train.yaml and
train_summary.json are copied along.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pacos.fileio import atomic_dir
from pacos.models import load_model, load_tokenizer, merged_model

RUN_FILES = ("pacos_train.yaml", "train_summary.json")


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
        # The run's recipe and summary travel along: `pacos chat` then prompts the merged model with the
        # template it was trained with (not the base's chat template), and its model card has the recipe.
        for name in RUN_FILES:
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, tmp / name)
    return out
