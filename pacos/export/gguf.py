"""Export a Hugging Face causal LM as one GGUF file (llama.cpp's format), in pure Python.

Only the `gguf` package writes the file: no llama.cpp build and no convert_hf_to_gguf.py. The tensor names
come from `gguf.get_tensor_name_map`; the weight transforms and metadata follow llama.cpp's converter:

- Llama (SmolLM2, ...): q/k projections permuted into llama.cpp's rope layout; Llama 3 rope scaling
  becomes a `rope_freqs` tensor. Qwen2 and Qwen3 are written as they are.
- Gemma 3 (text only): norm weights stored as (1 + w), as HF's Gemma RMSNorm applies them; per-layer
  sliding-window pattern and both rope bases in the metadata. llama.cpp scales queries by
  1/sqrt(head_dim); a model whose `query_pre_attn_scalar` says otherwise gets the difference folded into
  its q_norm weights, so llama.cpp computes the same attention.

Tied embeddings write no `output.weight` (llama.cpp reuses `token_embd`). Outtypes: f16 (matrices F16,
norms and biases F32), q8_0 and q4_0 (matrices quantized, the embeddings kept at Q8_0 for q4_0), and the
k-quant mixes q6_k and q4_k_m with llama-quantize's per-tensor choices (`_choose_qtypes`; the k-quant
blocks from pacos.export.kquants). A matrix whose rows are not a whole number of 32-value blocks stays
F16, as in llama.cpp.

The tokenizer comes from the HF tokenizer's tokenizer.json: a byte-fallback BPE (SentencePiece-style:
Gemma, Llama 2) is written as llama.cpp's "llama" vocabulary, each token scored by its first merge's rank
(so llama.cpp's score-greedy merging matches the BPE merge order); a byte-level BPE (GPT-2 style: SmolLM2,
Llama 3, Qwen) as "gpt2" with its merges and a pre-tokenizer name. Special ids, add_bos/add_eos and the
chat template come from `gguf.SpecialVocab`; add_bos is always written, as the HF tokenizer behaves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacos.errors import PacosError, first_line
from pacos.export import kquants
from pacos.fileio import atomic_open

OUTTYPES = ("f16", "q8_0", "q6_k", "q4_k_m", "q4_0")
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",
}

# llama.cpp's pre-tokenizer names for the split regexes HF byte-level tokenizers use.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_PRE_TOKENIZERS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


@dataclass
class _Tensor:
    name: str  # GGUF name
    shape: tuple[int, ...]
    load: Callable[[], Any]  # -> float32 numpy array, transforms applied
    qtype: Any = None  # gguf.GGMLQuantizationType, chosen from the outtype


def export_gguf(
    model_dir: str | Path, out: str | Path, outtype: str = "f16", base: str | None = None
) -> Path:
    """Write `model_dir` (HF directory, LoRA adapter, embedded name, anything `load_model` takes) to a
    .gguf file. `out` is the file, or an existing directory to put `<model>-<outtype>.gguf` in."""
    if outtype not in OUTTYPES:
        raise PacosError(f"unknown GGUF outtype '{outtype}'; choose one of {', '.join(OUTTYPES)}")
    spec = str(model_dir)
    stem = (Path(spec.rstrip("/\\")).name or "model").removesuffix(".gguf")
    out = Path(out)
    if out.is_dir():
        out = out / f"{stem}-{outtype}.gguf"
    elif out.suffix.lower() != ".gguf":
        raise PacosError(f"{out}: give a .gguf file path or an existing directory to write into")
    with tempfile.TemporaryDirectory(prefix="pacos-gguf-") as tmp, _quiet_gguf():
        weights_dir, tokenizer_dir = _local_model(spec, base, Path(tmp))
        _convert(weights_dir, tokenizer_dir, out, outtype, stem)
    return out


@contextlib.contextmanager
def _quiet_gguf() -> Iterator[None]:
    """The gguf package logs notes (e.g. on TemplateProcessing it cannot parse) that are not errors."""
    logger = logging.getLogger("gguf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# --- input -----------------------------------------------------------------------------------------------


def _local_model(spec: str, base: str | None, tmp: Path) -> tuple[Path, Path]:
    """A directory with config.json + safetensors, and one with tokenizer.json (often the same)."""
    from pacos.models import load_tokenizer, resolve_model

    where = Path(resolve_model(spec))
    plain = (
        where.is_dir()
        and not (where / "adapter_config.json").exists()
        and (where / "config.json").exists()
        and any(where.glob("*.safetensors"))
    )
    if not plain:  # a LoRA adapter to merge, a hub id, .bin weights: a merged safetensors copy first
        from pacos.export.hf import export_hf

        where = export_hf(spec, tmp / "model", base)
    tokenizer_dir = where
    if not (where / "tokenizer.json").exists():  # e.g. only tokenizer.model: let transformers convert it
        tokenizer_dir = tmp / "tokenizer"
        load_tokenizer(str(where)).save_pretrained(tokenizer_dir)
        if not (tokenizer_dir / "tokenizer.json").exists():
            raise PacosError(f"'{spec}': its tokenizer has no fast (tokenizer.json) version to export")
    return where, tokenizer_dir


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PacosError(f"{path}: cannot read it: {first_line(e)}") from None


def _safetensors(weights_dir: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Every tensor name -> (file, shape), without loading the data."""
    from safetensors import safe_open

    found: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for file in sorted(weights_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                found[key] = (file, tuple(f.get_slice(key).get_shape()))
    return found


def _loader(file: Path, key: str, transform: Callable[[Any], Any] | None = None) -> Callable[[], Any]:
    def load() -> Any:
        import torch
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            data = f.get_tensor(key).to(torch.float32).numpy()
        return transform(data) if transform else data

    return load


# --- architectures ---------------------------------------------------------------------------------------


def _permute(weights: Any, n_head: int) -> Any:
    """llama.cpp's rope layout for q/k (convert_hf_to_gguf.py LlamaModel.permute)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _rope(config: dict[str, Any], layer_type: str | None = None) -> tuple[float | None, dict[str, Any]]:
    """(rope theta, scaling parameters) from a transformers 5 `rope_parameters` or a 4.x config."""
    params = config.get("rope_parameters") or {}
    if layer_type and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    theta = params.get("rope_theta", config.get("rope_theta"))
    scaling = (
        params if params.get("rope_type", "default") != "default" else (config.get("rope_scaling") or {})
    )
    if scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = {}
    return theta, scaling


def _llama3_rope_factors(theta: float, dim: int, scaling: dict[str, Any]) -> Any:
    import numpy as np

    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_context = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _plan(arch: str, config: dict[str, Any], weights_dir: Path, writer: Any, n_vocab: int) -> list[_Tensor]:
    """Write the architecture's metadata; return the tensors to write (not yet loaded)."""
    import gguf

    n_layer = config["num_hidden_layers"]
    n_embd = config["hidden_size"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or n_embd // n_head
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(n_vocab)
    extra: list[_Tensor] = []
    transforms: dict[str, Callable[[Any], Any]] = {}

    if arch == "gemma3":
        if config.get("attn_logit_softcapping"):
            raise PacosError("Gemma 3 with attn_logit_softcapping cannot be exported: llama.cpp ignores it")
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        theta, scaling = _rope(config, "full_attention")
        local_theta, _ = _rope(config, "sliding_attention")
        writer.add_rope_freq_base(theta or 1_000_000.0)
        if "rope_parameters" not in config or "sliding_attention" not in (config["rope_parameters"] or {}):
            local_theta = config.get("rope_local_base_freq", 10_000.0)
        writer.add_rope_freq_base_swa(local_theta or 10_000.0)
        if scaling:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind != "linear":
                raise PacosError(f"Gemma 3 rope scaling '{kind}' cannot be exported (only linear)")
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(scaling["factor"])
        pattern = config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or 6
        layer_types = config.get("layer_types") or [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layer)
        ]
        swa = [t == "sliding_attention" for t in layer_types]
        if any(swa) and config.get("sliding_window"):
            writer.add_sliding_window(config["sliding_window"])
            writer.add_sliding_window_pattern(swa)
        if config.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(config["final_logit_softcapping"])
        # llama.cpp scales queries by 1/sqrt(head_dim) (1/sqrt(n_embd/n_head) for the 62-layer 27B);
        # HF by query_pre_attn_scalar**-0.5. Fold the ratio into q_norm (queries are normed, then roped).
        llama_cpp_scalar = n_embd / n_head if n_layer == 62 else head_dim
        q_scale = math.sqrt(llama_cpp_scalar / config.get("query_pre_attn_scalar", head_dim))

        def norm(w: Any, scale: float = 1.0) -> Any:
            return (w + 1.0) * scale

        transforms["norm.weight"] = norm
        if abs(q_scale - 1.0) > 1e-7:
            transforms["q_norm.weight"] = lambda w: norm(w, q_scale)
    else:
        theta, scaling = _rope(config)
        writer.add_rope_freq_base(theta or 10_000.0)
        writer.add_rope_dimension_count(head_dim)
        if head_dim != n_embd // n_head or arch == "qwen3":
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        kind = scaling.get("rope_type", scaling.get("type")) if scaling else None
        if kind == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(scaling["factor"])
        elif kind == "llama3":
            factors = _llama3_rope_factors(theta or 10_000.0, head_dim, scaling)
            extra.append(_Tensor("rope_freqs.weight", factors.shape, lambda: factors))
        elif kind is not None:
            raise PacosError(f"rope scaling '{kind}' cannot be exported to GGUF yet (linear and llama3 can)")
        if arch == "llama":
            transforms["q_proj.weight"] = transforms["q_proj.bias"] = lambda w: _permute(w, n_head)
            transforms["k_proj.weight"] = transforms["k_proj.bias"] = lambda w: _permute(w, n_kv)

    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), n_layer)
    tied = config.get("tie_word_embeddings", arch == "gemma3")
    tensors: list[_Tensor] = []
    for key, (file, shape) in _safetensors(weights_dir).items():
        if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
            continue
        stem, _, suffix = key.rpartition(".")
        gguf_name = name_map.get_name(stem) if suffix in ("weight", "bias") else None
        if gguf_name is None:
            raise PacosError(f"{weights_dir}: tensor '{key}' has no GGUF name for architecture {arch}")
        transform = next((t for end, t in transforms.items() if key.endswith(end)), None)
        if arch == "gemma3" and key.endswith("q_norm.weight"):
            transform = transforms.get("q_norm.weight", transforms["norm.weight"])
        tensors.append(_Tensor(f"{gguf_name}.{suffix}", shape, _loader(file, key, transform)))
    if not tensors:
        raise PacosError(f"{weights_dir}: no weights found in its .safetensors files")
    embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    if embd is not None and embd.shape[0] != n_vocab:
        raise PacosError(
            f"{weights_dir}: the embedding has {embd.shape[0]} rows but config.json says vocab_size {n_vocab}"
        )
    return tensors + extra


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third in between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _choose_qtypes(tensors: list[_Tensor], outtype: str) -> int:
    """Set each tensor's output type; return the GGUF file type. q4_k_m and q6_k follow llama-quantize's
    choices (no importance matrix): q4_k_m gives attn_v and ffn_down of the layers `_more_bits` picks Q6_K,
    the output head (the tied embedding when there is none) Q6_K, the rest Q4_K; a row that is not a whole
    number of 256-value super-blocks falls back as llama.cpp does (Q4_K -> Q5_0, Q6_K -> Q8_0)."""
    import gguf

    q = gguf.GGMLQuantizationType
    names = {t.name for t in tensors}
    head = "output.weight" if "output.weight" in names else "token_embd.weight"
    layers = {t.name: int(m.group(1)) for t in tensors if (m := re.match(r"blk\.(\d+)\.", t.name))}
    n_layer = 1 + max(layers.values(), default=0)
    for t in tensors:
        if len(t.shape) == 1:
            t.qtype = q.F32
        elif outtype == "f16" or t.shape[-1] % 32:  # every quantized block is at least 32 values of a row
            t.qtype = q.F16
        elif outtype == "q8_0" or (outtype == "q4_0" and t.name in ("token_embd.weight", "output.weight")):
            t.qtype = q.Q8_0
        elif outtype == "q4_0":
            t.qtype = q.Q4_0
        else:
            more = t.name in layers and _more_bits(layers[t.name], n_layer)
            more = more and t.name.endswith(("attn_v.weight", "ffn_down.weight"))
            six = outtype == "q6_k" or t.name == head or more
            t.qtype = q.Q6_K if six else q.Q4_K
            if t.shape[-1] % kquants.QK_K:
                t.qtype = q.Q8_0 if six else q.Q5_0
    return {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q6_k": gguf.LlamaFileType.MOSTLY_Q6_K,
        "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }[outtype]


def _quantize(data: Any, qtype: Any) -> Any:
    """Raw bytes of one tensor: k-quants from pacos.export.kquants, the rest from the gguf package."""
    import gguf
    from gguf.quants import quantize

    if qtype == gguf.GGMLQuantizationType.Q4_K:
        return kquants.quantize_q4_k(data)
    if qtype == gguf.GGMLQuantizationType.Q6_K:
        return kquants.quantize_q6_k(data)
    return quantize(data, qtype)


# --- tokenizer -------------------------------------------------------------------------------------------


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's name for a byte-level tokenizer's pre-tokenizer ("default" when none fits)."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    for s in steps:
        if s.get("type") == "Split" and "Regex" in (s.get("pattern") or {}):
            return _PRE_TOKENIZERS.get(s["pattern"]["Regex"], "default")
    byte_level = next((s for s in steps if s.get("type") == "ByteLevel"), None)
    if byte_level is not None and byte_level.get("use_regex", True):
        if any(s.get("type") == "Digits" and s.get("individual_digits") for s in steps):
            return "smollm"
        if kinds == ["ByteLevel"]:
            return "gpt-2"
    return "default"


def _has_prefix_space(tokenizer: dict[str, Any]) -> bool:
    """Whether a SentencePiece-style tokenizer prepends "▁" to the text (Llama 2 does, Gemma does not)."""
    normalizer = tokenizer.get("normalizer") or {}
    for step in normalizer.get("normalizers", [normalizer]):
        if step.get("type") == "Prepend" and step.get("prepend") == "\u2581":
            return True
    pre = tokenizer.get("pre_tokenizer") or {}
    for step in pre.get("pretokenizers", [pre]):
        if step.get("type") == "Metaspace":
            return step.get(
                "prepend_scheme", "always" if step.get("add_prefix_space", True) else "never"
            ) in (
                "always",
                "first",
            )
    return False


def _add_tokenizer(writer: Any, tokenizer_dir: Path, n_vocab: int) -> None:
    import gguf

    data = _read_json(tokenizer_dir / "tokenizer.json")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise PacosError(
            f"{tokenizer_dir}: a {model.get('type')} tokenizer cannot be exported to GGUF yet "
            "(BPE tokenizers can: SentencePiece-style with byte fallback, or byte-level)"
        )
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    by_id = {i: t for t, i in model.get("vocab", {}).items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    if by_id and max(by_id) >= n_vocab:
        raise PacosError(
            f"{tokenizer_dir}: the tokenizer has token id {max(by_id)}, "
            f"but the model has only {n_vocab} embeddings"
        )
    spm = bool(model.get("byte_fallback"))
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model.get("merges", [])]
    rank: dict[str, int] = {}
    for i, (left, right) in enumerate(merges):
        rank.setdefault(left + right, i)
    unk = model.get("unk_token")
    tokens, scores, types = [], [], []
    tt = gguf.TokenType
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:  # the embedding has more rows than the tokenizer has tokens
            tokens.append(f"[PAD{i}]")
            scores.append(-1e9)
            types.append(tt.UNUSED)
            continue
        if i in added:
            kind = tt.CONTROL if added[i].get("special") else tt.USER_DEFINED
        elif spm and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            kind = tt.BYTE
        else:
            kind = tt.NORMAL
        if spm and token == unk:
            kind = tt.UNKNOWN
        tokens.append(token)
        # llama.cpp merges the adjacent pair whose result scores highest: -rank keeps the BPE order.
        scores.append(-float(rank.get(token, len(merges) + 1)))
        types.append(kind)
    if spm:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_add_space_prefix(_has_prefix_space(data))
    else:
        if not any(s.get("type") == "ByteLevel" for s in _steps(data.get("pre_tokenizer"))):
            raise PacosError(
                f"{tokenizer_dir}: this BPE tokenizer is neither byte-level nor byte-fallback; "
                "GGUF export does not support it yet"
            )
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer_name(data.get("pre_tokenizer")))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        if not merges:  # llama.cpp needs the key even when empty (a byte-only vocabulary)
            writer.add_key_value(gguf.Keys.Tokenizer.MERGES, [], gguf.GGUFValueType.ARRAY)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=not spm and bool(merges), n_vocab=n_vocab)
    # llama.cpp (and so Ollama) puts BOS before a prompt as this flag says, with a per-vocabulary default
    # where it is missing: always written, as the Hugging Face tokenizer behaves (what pacos sends).
    special.add_special_token["bos"] = _adds_bos(tokenizer_dir)
    special.add_to_gguf(writer, quiet=True)


def _adds_bos(tokenizer_dir: Path) -> bool:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return tokenizer.bos_token_id is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]


def _steps(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    return (pre or {}).get("pretokenizers", [pre] if pre else [])


# --- writing ---------------------------------------------------------------------------------------------


def _writer(arch: str) -> Any:
    import gguf

    class Writer(gguf.GGUFWriter):
        """GGUFWriter that can also write an empty array (the merges of a byte-only BPE vocabulary)."""

        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if vtype == gguf.GGUFValueType.ARRAY and isinstance(val, list) and not val:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type or gguf.GGUFValueType.STRING) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(None, arch)


def _progress(tensors: list[_Tensor]) -> Iterable[_Tensor]:
    if len(tensors) < 50 or not sys.stderr.isatty():
        return tensors
    from rich.console import Console
    from rich.progress import track

    return track(tensors, description="writing GGUF", console=Console(stderr=True), transient=True)


def _convert(weights_dir: Path, tokenizer_dir: Path, out: Path, outtype: str, name: str) -> None:
    import gguf
    import numpy as np
    from gguf.quants import quant_shape_to_byte_shape

    config = _read_json(weights_dir / "config.json")
    hf_arch = (config.get("architectures") or ["(none)"])[0]
    arch = ARCHITECTURES.get(hf_arch)
    if arch is None:
        raise PacosError(
            f"{weights_dir}: architecture {hf_arch} cannot be exported to GGUF; supported: "
            + ", ".join(ARCHITECTURES)
        )
    n_vocab = config.get("vocab_size")
    if not isinstance(n_vocab, int):
        raise PacosError(f"{weights_dir}/config.json has no vocab_size")
    with atomic_open(out, "wb") as handle:
        writer = _writer(arch)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        tensors = _plan(arch, config, weights_dir, writer, n_vocab)
        writer.add_file_type(_choose_qtypes(tensors, outtype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(writer, tokenizer_dir, n_vocab)
        for t in tensors:
            if t.qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                dtype = np.float32 if t.qtype == gguf.GGMLQuantizationType.F32 else np.float16
                writer.add_tensor_info(
                    t.name, t.shape, np.dtype(dtype), math.prod(t.shape) * dtype().itemsize
                )
            else:
                shape = quant_shape_to_byte_shape(t.shape, t.qtype)
                writer.add_tensor_info(t.name, shape, np.dtype(np.uint8), math.prod(shape), raw_dtype=t.qtype)
        try:
            writer.write_header_to_file(Path(handle.name))
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t in _progress(tensors):
                writer.write_tensor_data(_quantize(t.load(), t.qtype))
        finally:
            writer.close()
