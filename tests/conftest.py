from __future__ import annotations

import os

# Training compiles its fused loss with inductor once per process (~7 s; more per variant): worth it for
# real runs, a third of a short test's time. Tests train eagerly, subprocesses included (they inherit
# this); tests/test_train_units.py checks the compiled loss against the definition.
os.environ.setdefault("PACOS_COMPILE_LOSS", "0")
# Under pytest-xdist (`make test` runs a worker per core) each worker computes on one thread: two workers
# with a thread per core each would fight over the cores. Subprocesses of tests inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# The tests' own model saves show no bars: a test that reads stderr must not depend on whether pacos (which
# turns them off when it loads a model) ran earlier in the same worker.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from pacos.cli import main

# The slowest files (tens of seconds each, measured with --durations) go to the workers first: with
# `--dist loadfile` a long file handed out last keeps one core busy while the other idles.
SLOW_FIRST = [
    "test_train_runs.py",
    "test_preference.py",
    "test_embedded_models.py",
    "test_quickstart.py",
    "test_generate_magpie.py",
    "test_generate_evol.py",
    "test_infer_engine.py",
    "test_infer_llamacpp.py",
    "test_serve.py",
    "test_conversations.py",
    "test_lm_eval.py",
    "test_export_ollama.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: files keep their own order of tests


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run `pacos ARGS...` in-process through the real entry point (error handling included)."""

    def run(*args: str) -> CliResult:
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


# The tiny random models' shape (any decoder architecture; vocab_size from the tokenizer).
TINY_CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny word-level tokenizer saved like a hub tokenizer (no download), with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [
        "below",
        "is",
        "an",
        "instruction",
        "that",
        "describes",
        "a",
        "task",
        "write",
        "response",
        "hello",
        "world",
        "the",
    ]
    vocab = {"[UNK]": 0, "<pad>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="<pad>", eos_token="<eos>"
    )
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    out = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(out)
    return out


def build_tiny_model(out: Path, arch: str = "llama") -> Path:
    """A randomly initialised causal LM with a byte-level tokenizer, saved like a hub model (no download)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    byte_chars = sorted(set(pre_tokenizers.ByteLevel.alphabet()))
    vocab = {
        **{s: i for i, s in enumerate(specials)},
        **{c: i + len(specials) for i, c in enumerate(byte_chars)},
    }
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    common = {**TINY_CONFIG, "vocab_size": len(vocab), "tie_word_embeddings": True}
    if arch == "gemma3":
        from transformers import Gemma3TextConfig

        config = Gemma3TextConfig(
            head_dim=8, sliding_window=16, layer_types=["sliding_attention", "full_attention"], **common
        )
    else:
        from transformers import LlamaConfig

        config = LlamaConfig(**common)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gemma"), "gemma3")
