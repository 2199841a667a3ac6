"""Weight-only int8 for inference: what makes CPU decoding fast.

Decoding one token reads every weight once, so its speed is the speed of reading the weights: a 270M
model with a 262K-word vocabulary moves ~1 GB per token in fp32. Storing Linear weights as int8 with one
scale per output row (symmetric, the scheme of gpt-fast and of llama.cpp's Q8_0, with coarser blocks)
moves a quarter of that; `torch._weight_int8pack_mm` multiplies without de-quantizing the matrix.
Activations go through in bf16 (the kernel's fast path on CPUs with AVX512-BF16/AMX and on GPUs).
The embedding table stays as it is: a lookup reads one row, not the matrix.

The LM head is the largest matrix (262K x 640 for Gemma 3: 40% of the bytes). On x86 CPUs it runs on
oneDNN's int8 x int8 kernel instead, which streams it about 1.6x faster: each row of activations gets
its own scale (per token), products are summed exactly in int32, so a row's logits do not depend on
the other rows of the batch.

Both trade exactness for speed: greedy text may part from the fp32 text where two tokens are nearly
tied, and int8 kernels may round differently at different batch sizes. `--quantize none` keeps both.
"""

from __future__ import annotations

import torch
from torch import nn

QUANTIZATIONS = ("none", "int8")


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
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


class Int8HeadOneDNN(nn.Module):
    """int8 weights and per-token int8 activations on oneDNN (x86 CPUs): the LM head."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_scale = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        weight_int8 = torch.round(weight / self.weight_scale[:, None]).to(torch.int8)
        self.packed = torch.ops.onednn.qlinear_prepack(weight_int8, None)
        self.zero_points = torch.zeros(self.out_features, dtype=torch.long)
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    @torch.compiler.disable  # an opaque oneDNN call: torch.compile runs it as it is, around its graph
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        # Per-row scale, applied after the exact int32 sums; uint8 with zero point 128 holds -127..127.
        scale = (flat.abs().amax(dim=1, keepdim=True) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        quantized = torch.round(flat / scale).add_(128).to(torch.uint8)
        sums = torch.ops.onednn.qlinear_pointwise(
            quantized, 1.0, 128, self.packed, self.weight_scale, self.zero_points, None, 1.0, 0,
            torch.float32, "none", [], "",
        )  # fmt: skip
        y = sums * scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, int8 weights and activations"
        )


def onednn_int8_available() -> bool:
    """oneDNN's int8 linear exists and computes correctly here (x86 CPU builds of PyTorch)."""
    try:
        probe = nn.Linear(64, 32, bias=False)
        x = torch.randn(2, 64)
        return bool(torch.allclose(Int8HeadOneDNN(probe)(x), probe(x), atol=0.05))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def quantize_int8(model: nn.Module, compute_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Replace every nn.Linear in place (the LM head too, even when tied to the embedding)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    fast_head = head is not None and head.weight.device.type == "cpu" and onednn_int8_available()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if child is head and fast_head:
                setattr(module, name, Int8HeadOneDNN(child))
            elif isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child, compute_dtype).to(child.weight.device))
    return model
