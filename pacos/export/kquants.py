"""llama.cpp's k-quants Q4_K and Q6_K, quantized in numpy (the `gguf` package only dequantizes them).

Both follow llama.cpp's reference quantizers (no importance matrix), vectorised over all blocks of a
tensor at once, so a file written here holds the blocks `llama-quantize` would write up to float rounding:

- Q4_K: super-blocks of 256 values = 8 sub-blocks of 32, each `x ~ d * sc * q - dmin * m` with 4-bit q and
  6-bit sc, m under two fp16 super-block scales. Each sub-block's (scale, min) is the best of 21 trial
  scales refined by weighted least squares (weights |x| plus the sub-block's RMS), as `make_qkx2_quants`.
- Q6_K: super-blocks of 256 = 16 sub-blocks of 16, `x ~ d * sc * (q - 32)` with 6-bit q and int8 sc; each
  sub-block's scale is the best of 19 trial scales by x²-weighted least squares, as `make_qx_quants`.

`quantize_q4_k` / `quantize_q6_k` take float rows whose length is a multiple of 256 and return the raw
bytes, shaped [..., bytes per row], as `gguf.quants.quantize` does for the types it knows.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
Q4_K_BYTES = 2 + 2 + 12 + QK_K // 2  # d, dmin, packed 6-bit scales and mins, 4-bit values
Q6_K_BYTES = QK_K // 2 + QK_K // 4 + QK_K // 16 + 2  # low 4 bits, high 2 bits, int8 scales, d
_EPS = 1e-15  # llama.cpp's GROUP_MAX_EPS: a sub-block this small quantizes to zeros


def _blocks(rows: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    rows = np.asarray(rows, dtype=np.float32)
    if rows.shape[-1] % QK_K:
        raise ValueError(f"k-quants need rows of a multiple of {QK_K} values, not {rows.shape[-1]}")
    return rows.reshape(-1, QK_K), rows.shape


def _fp16(x: np.ndarray) -> np.ndarray:
    """The value the fp16 field stores, back in float32 (llama.cpp rescales with the rounded scale)."""
    return x.astype(np.float16).astype(np.float32)


def _weighted_scale_min(
    x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of x [n, 32]: (scale, min) with x ~ scale * q + min, q in 0..nmax, min <= 0, minimising
    the weighted squared error over nstep + 1 trial scales around (max - min) / nmax and the plain one."""
    lo = np.minimum(x.min(axis=1), 0.0)
    hi = x.max(axis=1)
    span = hi - lo
    flat = span <= 0
    span = np.where(flat, 1.0, span).astype(np.float32)
    sum_w = weights.sum(axis=1)
    sum_x = (weights * x).sum(axis=1)

    scale = (span / nmax).astype(np.float32)
    best_min = lo.astype(np.float32)
    q = np.clip(np.rint((x - lo[:, None]) * (nmax / span)[:, None]), 0, nmax)
    best_error = (weights * (scale[:, None] * q + lo[:, None] - x) ** 2).sum(axis=1)
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * step + nmax) / span
        q = np.clip(np.rint((x - lo[:, None]) * iscale[:, None]), 0, nmax)
        sum_l = (weights * q).sum(axis=1)
        sum_l2 = (weights * q * q).sum(axis=1)
        sum_xl = (weights * q * x).sum(axis=1)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        safe = np.where(ok, det, 1.0)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe
        positive = this_min > 0  # the min must not be positive: refit the scale alone
        this_scale = np.where(positive, sum_xl / np.where(sum_l2 > 0, sum_l2, 1.0), this_scale)
        this_min = np.where(positive, 0.0, this_min)
        error = (weights * (this_scale[:, None] * q + this_min[:, None] - x) ** 2).sum(axis=1)
        better = ok & (error < best_error)
        best_error = np.where(better, error, best_error)
        scale = np.where(better, this_scale, scale)
        best_min = np.where(better, this_min, best_min)
    scale = np.where(flat, 0.0, scale)
    best_min = np.where(flat, lo, best_min)
    return scale.astype(np.float32), (-best_min).astype(np.float32)


def quantize_q4_k(rows: np.ndarray) -> np.ndarray:
    blocks, shape = _blocks(rows)
    n = len(blocks)
    sub = blocks.reshape(n * 8, 32)
    rms = np.sqrt((sub * sub).mean(axis=1, keepdims=True))
    scales, mins = _weighted_scale_min(sub, rms + np.abs(sub), 15, -1.0, 0.1, 20)
    scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)

    max_scale, max_min = scales.max(axis=1), mins.max(axis=1)
    inv_scale = np.where(max_scale > 0, 63.0 / np.where(max_scale > 0, max_scale, 1.0), 0.0)
    inv_min = np.where(max_min > 0, 63.0 / np.where(max_min > 0, max_min, 1.0), 0.0)
    ls = np.minimum(np.rint(inv_scale[:, None] * scales), 63).astype(np.uint8)
    lm = np.minimum(np.rint(inv_min[:, None] * mins), 63).astype(np.uint8)
    d = _fp16(max_scale / 63.0)
    dmin = _fp16(max_min / 63.0)

    # Values against the stored (rounded) scales.
    sub_d = (d[:, None] * ls).reshape(n * 8, 1)
    sub_m = (dmin[:, None] * lm).reshape(n * 8, 1)
    safe_d = np.where(sub_d == 0, 1.0, sub_d)
    q = np.clip(np.rint((sub + sub_m) / safe_d), 0, 15)
    q = np.where(sub_d == 0, 0, q).astype(np.uint8).reshape(n, 4, 2, 32)  # pairs of sub-blocks share bytes
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, QK_K // 2)

    packed = np.empty((n, 12), dtype=np.uint8)  # sub-blocks 0-3: 6 bits each; 4-7: low 4 bits + 2 high bits
    packed[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:8] & 0x0F) | ((lm[:, 4:8] & 0x0F) << 4)

    out = np.concatenate(
        [
            d.astype(np.float16).view(np.uint8).reshape(n, 2),
            dmin.astype(np.float16).view(np.uint8).reshape(n, 2),
            packed,
            qs,
        ],
        axis=1,
    )
    return out.reshape(*shape[:-1], shape[-1] // QK_K * Q4_K_BYTES)


def _symmetric_scale(x: np.ndarray, nmax: int) -> np.ndarray:
    """Per row of x [n, 16]: the scale s with x ~ s * q, q in -nmax..nmax-1, best by x²-weighted squared
    error over the plain scale (signed by the largest-magnitude value) and 18 nudged ones."""
    amax_at = np.abs(x).argmax(axis=1)
    peak = np.take_along_axis(x, amax_at[:, None], axis=1)[:, 0]
    tiny = np.abs(peak) < _EPS
    peak = np.where(tiny, 1.0, peak).astype(np.float32)
    w = x * x

    def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.clip(np.rint(iscale[:, None] * x), -nmax, nmax - 1)
        return (w * x * q).sum(axis=1), (w * q * q).sum(axis=1)

    sumlx, suml2 = fit(-nmax / peak)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, 1.0), 0.0)
    best = scale * sumlx
    for step in (*range(-9, 0), *range(1, 10)):
        sumlx, suml2 = fit(-(nmax + 0.1 * step) / peak)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        this = sumlx / np.where(suml2 > 0, suml2, 1.0)
        scale = np.where(better, this, scale)
        best = np.where(better, this * sumlx, best)
    return np.where(tiny, 0.0, scale).astype(np.float32)


def quantize_q6_k(rows: np.ndarray) -> np.ndarray:
    blocks, shape = _blocks(rows)
    n = len(blocks)
    sub = blocks.reshape(n * 16, 16)
    scales = _symmetric_scale(sub, 32).reshape(n, 16)

    at = np.abs(scales).argmax(axis=1)
    max_scale = np.take_along_axis(scales, at[:, None], axis=1)[:, 0]
    zero = np.abs(max_scale) < _EPS
    iscale = np.where(zero, 0.0, -128.0 / np.where(zero, 1.0, max_scale))
    d = _fp16(np.where(zero, 0.0, 1.0 / np.where(zero, 1.0, iscale)))
    sc = np.minimum(np.rint(iscale[:, None] * scales), 127).astype(np.int8)

    sub_d = (d[:, None] * sc).reshape(n * 16, 1)
    safe_d = np.where(sub_d == 0, 1.0, sub_d)
    q = np.clip(np.rint(sub / safe_d), -32, 31) + 32
    q = np.where(sub_d == 0, 32, q).astype(np.uint8).reshape(n, 2, 4, 32)  # halves of 128, quarters of 32
    low = q & 0x0F
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
    high = q >> 4
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)

    out = np.concatenate(
        [
            ql.reshape(n, QK_K // 2),
            qh.reshape(n, QK_K // 4),
            sc.view(np.uint8),
            d.astype(np.float16).view(np.uint8).reshape(n, 2),
        ],
        axis=1,
    )
    return out.reshape(*shape[:-1], shape[-1] // QK_K * Q6_K_BYTES)
