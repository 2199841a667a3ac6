"""The LM-head + cross-entropy step alone: pacos's fused chunked loss vs the usual ways, forward + backward.

Gemma 3's head is [262144 x 640]. With response-only training, only labelled positions need the head; the
usual code computes logits at every position and then masks. Compared, on the same hidden states:

- full_logits: `F.cross_entropy(hidden @ W.T, labels, ignore_index=-100)` over every position (HF models,
  the original Alpaca approach);
- masked_logits: the same restricted to labelled positions (what a careful hand-written loop does);
- checkpointed_chunks: labelled positions, chunks recomputed in backward (torch.utils.checkpoint);
- pacos_fused: labelled positions, chunks, gradient computed in the forward pass (pacos.train.loss), its
  elementwise part (softmax - one-hot) compiled by torch.compile;
- pacos_fused_eager: the same without the compiled part (pacos's fallback where inductor cannot compile).

Prints JSON: milliseconds per forward+backward and peak memory above the inputs, per method.

    .venv/bin/python benchmarks/bench_loss.py [--tokens 2048] [--labelled 0.55] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import pacos.train.loss as pacos_loss
from pacos.train.loss import linear_cross_entropy


def full_logits(h, w, y, chunk):
    return F.cross_entropy((h @ w.T).float(), y, ignore_index=-100, reduction="sum")


def masked_logits(h, w, y, chunk):
    keep = y != -100
    return F.cross_entropy((h[keep] @ w.T).float(), y[keep], reduction="sum")


def checkpointed_chunks(h, w, y, chunk):
    keep = y != -100
    hk, yk = h[keep], y[keep]

    def piece(a, b, t):
        return F.cross_entropy((a @ b.T).float(), t, reduction="sum")

    return sum(
        checkpoint(piece, hk[i : i + chunk], w, yk[i : i + chunk], use_reentrant=False)
        for i in range(0, len(yk), chunk)
    )


def pacos_fused(h, w, y, chunk):
    keep = y != -100
    return linear_cross_entropy(h[keep], w, None, y[keep], chunk)


def pacos_fused_eager(h, w, y, chunk):
    """pacos_fused without its compiled elementwise kernel (the fallback where inductor cannot compile)."""
    saved = pacos_loss._compiled.get("fn")
    pacos_loss._compiled["fn"] = pacos_loss._ce_grad_eager
    try:
        return pacos_fused(h, w, y, chunk)
    finally:
        if saved is None:
            pacos_loss._compiled.pop("fn")
        else:
            pacos_loss._compiled["fn"] = saved


METHODS = {
    "full_logits": full_logits,
    "masked_logits": masked_logits,
    "checkpointed_chunks": checkpointed_chunks,
    "pacos_fused": pacos_fused,
    "pacos_fused_eager": pacos_fused_eager,
}


def measure(name, hidden, weight, labels, chunk, device, repeats):
    fn = METHODS[name]
    times = []
    for i in range(repeats + 1):
        h = hidden.detach().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        loss = fn(h, weight, labels, chunk)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first run warms up
            times.append(time.perf_counter() - start)
        weight.grad = None
    result = {"ms": round(1000 * sorted(times)[len(times) // 2], 1), "loss": float(loss.detach())}
    if device.type == "cuda":
        result["peak_extra_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--labelled", type=float, default=0.55)
    parser.add_argument("--vocab", type=int, default=262_144)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--trainable-head", action="store_true", help="full fine-tuning: the head gets gradients"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, device=device, dtype=dtype)
    weight = (torch.randn(args.vocab, args.hidden, device=device, dtype=dtype) * 0.02).requires_grad_(
        args.trainable_head
    )
    labels = torch.randint(0, args.vocab, (args.tokens,), device=device)
    labels[torch.rand(args.tokens, device=device) > args.labelled] = -100
    out = {
        "device": str(device),
        "dtype": args.dtype,
        "tokens": args.tokens,
        "labelled": int((labels != -100).sum()),
        "vocab": args.vocab,
        "hidden": args.hidden,
        "trainable_head": args.trainable_head,
        "methods": {},
    }
    for name in args.methods.split(","):
        out["methods"][name] = measure(name, hidden, weight, labels, args.chunk, device, args.repeats)
    if device.type == "cpu":
        out["peak_rss_mb_whole_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
