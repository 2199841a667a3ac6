"""k-quants (Q4_K, Q6_K) written by pacos: decoded by the gguf package's independent dequantizer, they
reproduce the data with the error their bit widths allow, and requantizing llama.cpp's own blocks gives
llama.cpp's bytes back."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from pacos.export.kquants import Q4_K_BYTES, Q6_K_BYTES, quantize_q4_k, quantize_q6_k
from tests.gguf_tensors import tensor_rows

KQUANTS = {Q.Q4_K: quantize_q4_k, Q.Q6_K: quantize_q6_k}


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).mean()))


def test_k_quants_decode_close_and_beat_the_legacy_types_of_their_width():
    x = np.random.default_rng(0).standard_normal((16, 1024)).astype(np.float32)
    q4, q6 = quantize_q4_k(x), quantize_q6_k(x)
    assert q4.shape == (16, 4 * Q4_K_BYTES) and q6.shape == (16, 4 * Q6_K_BYTES) and q4.dtype == np.uint8
    err4, err6 = rmse(dequantize(q4, Q.Q4_K), x), rmse(dequantize(q6, Q.Q6_K), x)
    # Q4_K (4.5 bits/value) beats Q4_0 (4.5) and Q6_K (6.56) beats Q5_0 (5.5), as in llama.cpp.
    assert err4 < 0.9 * rmse(dequantize(quantize(x, Q.Q4_0), Q.Q4_0), x)
    assert err6 < 0.5 * rmse(dequantize(quantize(x, Q.Q5_0), Q.Q5_0), x)
    assert err4 < 0.08 and err6 < 0.02


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K])
def test_values_on_the_grid_survive_requantization(qtype):
    x = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32) * 0.05
    once = dequantize(KQUANTS[qtype](x), qtype)
    twice = dequantize(KQUANTS[qtype](once), qtype)
    np.testing.assert_allclose(twice, once, rtol=0, atol=1e-3 * np.abs(once).max())


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K])
def test_zero_constant_and_one_sided_blocks(qtype):
    rows = np.zeros((4, 256), dtype=np.float32)
    rows[1] = -0.5  # constant: Q4_K stores it as its min, Q6_K as the scale
    rows[2] = np.linspace(0.1, 2.0, 256)  # all positive: Q4_K's min is clamped to 0
    rows[3, 7] = 3.0  # a single spike
    back = dequantize(KQUANTS[qtype](rows), qtype)
    assert np.array_equal(back[0], rows[0])
    np.testing.assert_allclose(back[1], rows[1], atol=1e-3)
    np.testing.assert_allclose(back[2], rows[2], atol=0.08 if qtype == Q.Q4_K else 0.04)
    np.testing.assert_allclose(back[3], rows[3], atol=2e-3)


def test_rows_that_are_not_whole_super_blocks_are_refused():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_q4_k(np.zeros((2, 640), dtype=np.float32))


def test_requantizing_llama_cpp_blocks_gives_llama_cpp_bytes():
    """The embedded Gemma 3 270M file was written by llama-quantize: its Q4_K and Q6_K tensors, decoded and
    quantized again by pacos, give its bytes back (Q6_K up to float-rounding ties: a sub-block's scale may
    flip sign with its values, which decodes to the same numbers). Rows quantize independently: 96 rows of
    each tensor say as much as all of them."""
    from pacos.models import EMBEDDED_MODELS

    picked = {"blk.0.attn_output.weight", "blk.2.ffn_down.weight", "blk.0.ffn_down.weight"}
    tensors = tensor_rows(EMBEDDED_MODELS["gemma-3-270m"].gguf(), picked, rows=96)
    assert set(tensors) == picked
    for name, (kind, raw) in tensors.items():
        values = dequantize(raw, kind)
        ours = KQUANTS[kind](values)
        same = float((ours == raw).mean())
        assert same >= (0.999 if kind == Q.Q4_K else 0.95), (name, same)
        drift = np.abs(dequantize(ours, kind) - values).mean() / np.abs(values).mean()
        assert drift < 1e-4, (name, drift)
    assert {kind for kind, _ in tensors.values()} == {Q.Q4_K, Q.Q6_K}
