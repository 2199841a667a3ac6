"""Loading tokenizers (and, later, models) from a local directory or a Hugging Face hub id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pacos.errors import PacosError


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    """A transformers tokenizer from a local directory or hub id; a one-line error says what was tried."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    where = "local directory" if Path(name).is_dir() else "Hugging Face hub id"
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises OSError, ValueError or hub errors depending on the cause
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PacosError(f"tokenizer '{name}': could not load it as a {where}: {first}") from None
