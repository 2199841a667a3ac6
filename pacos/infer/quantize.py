"""Reduced-precision weights for inference: what makes CPU decoding fast.

Decoding one token reads every weight once, and at batch 8 or more it multiplies each weight by every
row, so its speed is the speed of reading and multiplying the weights. Measured on 2 cores
(benchmarks/README.md, "Where a decode step goes"), MKL's fp32 matmul runs a batch of 8 rows at a
fraction of the machine's rate; fbgemm (PyTorch's x86 kernels for small batches) does far better:

- `fp16`: weights stored in fp16, products in fp32 (fbgemm's fp16 GEMM). Half the bytes of fp32 and
  logits within ~1e-3 of fp32's: greedy text is fp32's but for exact ties.
- `int8`: the LM head (Gemma 3's 262K x 640 matrix: 60% of the weights) in int8 with int8 activations
  (fbgemm's int8 GEMM, exact int32 sums), the layers in fp16. The layers' activations have outlier
  channels that 8 bits per token lose (next-token agreement with fp32 0.91 with every matrix in int8,
  0.965 with only the head), which is why llama.cpp's mixes also keep some tensors wider.
  Each row is quantized with its own scale, so a row's logits do not depend on its batch.

Elsewhere (GPUs, non-x86 CPUs) `int8` stores Linear weights as int8 with one scale per output row and
multiplies with `torch._weight_int8pack_mm` (weight-only, the gpt-fast scheme). The embedding table
stays as it is: a lookup reads one row, not the matrix.
"""

from __future__ import annotations

import warnings
import weakref
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from pacos.errors import PacosError

QUANTIZATIONS = ("none", "fp16", "int8")
# On CPUs with native bf16, inputs of this many rows or more use a bf16 copy of fp16-scheme weights:
# where bf16 matmuls overtake fbgemm's fp16 GEMM on AVX512-BF16 (640x2048 and 2048x640 matrices).
BF16_ROWS = 16
BF16_COPY_MAX_WEIGHTS = 2_000_000_000  # the copy doubles the weights' memory: small models only
_TINY = torch.finfo(torch.float32).tiny

# torch.compile cannot trace fbgemm's packed weights (opaque C++ objects), so compiled code calls them
# through these custom ops, which name the module by a key: inductor then fuses the small ops between
# the matmuls around opaque calls, instead of breaking its graph at every Linear. Eager code calls the
# kernels directly (a custom op costs ~10 us of Python per call).
_LINEARS: weakref.WeakValueDictionary[int, nn.Module] = weakref.WeakValueDictionary()


def _register(module: nn.Module) -> int:
    key = id(module)
    _LINEARS[key] = module
    return key


@torch.library.custom_op("pacos::fp16_linear", mutates_args=())
def _fp16_linear(x: torch.Tensor, key: int) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic_fp16(x, _LINEARS[key].packed)


@torch.library.custom_op("pacos::bf16_linear", mutates_args=())
def _bf16_linear(x: torch.Tensor, key: int) -> torch.Tensor:
    module = _LINEARS[key]
    return F.linear(x, module.bf16_weight, module.bf16_bias)


@torch.library.custom_op("pacos::int8_linear", mutates_args=())
def _int8_linear(x: torch.Tensor, key: int) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic(x, _LINEARS[key].packed, False)


def _linear_shape(x: torch.Tensor, key: int) -> torch.Tensor:
    """What tracing sees of each op: [rows, out_features] (fp32, or bf16 for the bf16 copy)."""
    return x.new_empty(x.shape[0], _LINEARS[key].out_features)


for _op in (_fp16_linear, _bf16_linear, _int8_linear):
    _op.register_fake(_linear_shape)


class Fp16Linear(nn.Module):
    """fp16 weights, fp32 products (fbgemm, x86 CPUs).

    With `bf16_rows` set (CPUs with native bf16), a bf16 copy of the weights serves inputs of that many
    rows or more: fbgemm's fp16 GEMM wins at a few rows (decode), the CPU's bf16 matmul at many (prefill,
    large batches): 2x faster at 64+ rows on AVX512-BF16 (benchmarks/README.md). It costs a second copy.
    """

    def __init__(self, linear: nn.Linear, bf16_rows: int | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float(), bias)
        self.bf16_rows = bf16_rows
        self.bf16_weight = None if bf16_rows is None else linear.weight.detach().to(torch.bfloat16)
        self.bf16_bias = None if bf16_rows is None or bias is None else bias.to(torch.bfloat16)
        self.key = _register(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.bf16_rows is not None and flat.shape[0] >= self.bf16_rows:
            x16 = flat.to(torch.bfloat16)
            # Compiled, the eager kernel too: inductor's own bf16 matmuls were slower here.
            if torch.compiler.is_compiling():
                y = _bf16_linear(x16, self.key)
            else:
                y = F.linear(x16, self.bf16_weight, self.bf16_bias)
        elif torch.compiler.is_compiling():
            y = _fp16_linear(flat.float(), self.key)
        else:
            y = torch.ops.quantized.linear_dynamic_fp16(flat.float(), self.packed)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        bf16 = "" if self.bf16_rows is None else f", bf16 from {self.bf16_rows} rows"
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16 weights{bf16}"


class Int8RowLinear(nn.Module):
    """int8 weights (one scale per output row, 7 bits used) and int8 activations (one scale per row),
    fbgemm.

    fbgemm quantizes a batch's activations with one range for the whole batch. Each row is divided by its
    own largest magnitude first, and two extra input columns hold +1 and -1 (their weights are zero), so
    that the range is [-1, 1] for every batch: a row quantizes the same alone or among others.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        weight = torch.cat([weight, weight.new_zeros(self.out_features, 2)], dim=1)
        # 7-bit weights: AVX2's u8 x s8 pair sums saturate at 16 bits with 8-bit weights (255*127*2 >
        # 32767), which fbgemm otherwise avoids by cutting the activations to 7 bits, and they matter more.
        scale = (weight.abs().amax(dim=1) / 63).clamp(min=_TINY).double()
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated for new code, fbgemm is not
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.bias = None if linear.bias is None else linear.bias.detach().float()
        self.key = _register(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        peak = flat.abs().amax(dim=1, keepdim=True).clamp(min=_TINY)
        ends = torch.tensor([[1.0, -1.0]]).expand(flat.shape[0], 2)
        scaled = torch.cat([flat / peak, ends], dim=1)
        if torch.compiler.is_compiling():
            y = _int8_linear(scaled, self.key)
        else:
            y = torch.ops.quantized.linear_dynamic(scaled, self.packed, False)
        y = y * peak
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, int8 weights and activations"
        )


class Int8Linear(nn.Module):
    """Weight-only int8 (GPUs, non-x86 CPUs): activations stay in `compute_dtype`."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=_TINY)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale.to(compute_dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(self.compute_dtype)
        y = torch._weight_int8pack_mm(flat, self.weight_int8, self.scale)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


@cache
def fbgemm_available() -> bool:
    """fbgemm's kernels exist and compute correctly here (x86 CPU builds of PyTorch)."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        probe = nn.Linear(64, 32, bias=False)
        x = torch.randn(3, 64)
        with torch.inference_mode():
            return bool(
                torch.allclose(Fp16Linear(probe)(x), probe(x), atol=1e-2)
                and torch.allclose(Int8RowLinear(probe)(x), probe(x), atol=0.05)
            )
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def decoding_weights(dtype: str = "auto", quantize: str = "auto", device: str = "auto") -> tuple[str, str]:
    """Concrete (dtype, quantize) for "auto". On x86 CPUs (fbgemm): fp32 math on fp16 weights, which gives
    fp32's greedy answers but for exact ties, about 3x faster than fp32 at batch 8; where the CPU computes
    bf16 natively (AMX, AVX512-BF16), many-row inputs (prefill) take a bf16 copy of the weights, 1.4x
    bf16's speed at batch 8 (benchmarks/README.md). Elsewhere bf16 where native (GPUs), else fp32.
    Stages resolve "auto" before keying caches, so a cached answer names the weights that wrote it."""
    from pacos.device import auto_device, auto_dtype

    target = auto_device() if device == "auto" else torch.device(device)
    fbgemm_cpu = target.type == "cpu" and fbgemm_available()
    if dtype == "auto":
        fbgemm_math = quantize != "none" and fbgemm_cpu  # fbgemm's kernels compute in fp32 anyway
        dtype = "float32" if fbgemm_math or auto_dtype(target) != torch.bfloat16 else "bfloat16"
    if quantize == "auto":
        quantize = "fp16" if fbgemm_cpu and dtype in ("float32", "fp32") else "none"
    return dtype, quantize


def quantize_model(model: nn.Module, scheme: str, compute_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Replace every nn.Linear in place (the LM head too, even when tied to the embedding)."""
    if scheme not in QUANTIZATIONS:
        raise PacosError(f"quantize '{scheme}': choose {', '.join(QUANTIZATIONS)}")
    if scheme == "none":
        return model
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    on_cpu = next(model.parameters()).device.type == "cpu"
    fbgemm = on_cpu and fbgemm_available()
    if scheme == "fp16" and not fbgemm:
        raise PacosError(
            "quantize 'fp16' needs an x86 CPU (fbgemm); on a GPU use --dtype float16, elsewhere int8"
        )

    from pacos.device import cpu_has_fast_bf16

    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    bf16_copy = fbgemm and cpu_has_fast_bf16() and weights <= BF16_COPY_MAX_WEIGHTS
    bf16_rows = BF16_ROWS if bf16_copy else None

    def replacement(linear: nn.Linear) -> nn.Module:
        if not fbgemm:
            return Int8Linear(linear, compute_dtype).to(linear.weight.device)
        if scheme == "int8" and linear is head:
            return Int8RowLinear(linear)
        return Fp16Linear(linear, bf16_rows)

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, replacement(child))
    return model
