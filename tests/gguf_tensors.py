"""Raw tensor bytes from a GGUF file, for tests. The gguf package's GGUFReader parses every metadata value
through numpy memmaps: ~30 s here for a 262K-token vocabulary; this walks the header with `struct`."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

# Value types 0-12 of the GGUF spec: struct format per scalar type; 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def tensor_rows(
    path: str | Path, names: set[str], rows: int
) -> dict[str, tuple[GGMLQuantizationType, np.ndarray]]:
    """The first `rows` rows of the named tensors: (type, uint8 array of shape (rows, bytes per row))."""
    data = Path(path).read_bytes()
    pos = 24  # magic, version, tensor count, kv count
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        return data[pos - n : pos].decode()

    def value(kind: int) -> object:
        nonlocal pos
        if kind == 8:
            return string()
        if kind == 9:
            item, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            return [value(item) for _ in range(count)]
        (v,) = struct.unpack_from("<" + _SCALARS[kind], data, pos)
        pos += struct.calcsize(_SCALARS[kind])
        return v

    alignment = 32
    for _ in range(n_kv):
        key = string()
        (kind,) = struct.unpack_from("<I", data, pos)
        pos += 4
        got = value(kind)
        if key == "general.alignment":
            alignment = int(got)  # type: ignore[call-overload]
    infos = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = struct.unpack_from("<I", data, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", data, pos + 4)
        kind, offset = struct.unpack_from("<IQ", data, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        infos.append((name, dims, GGMLQuantizationType(kind), offset))
    start = -(-pos // alignment) * alignment
    out = {}
    for name, dims, kind, offset in infos:
        if name in names:
            block, size = GGML_QUANT_SIZES[kind]
            row_bytes = dims[0] // block * size  # dims[0] is the row length (ggml's ne0)
            raw = np.frombuffer(data, np.uint8, rows * row_bytes, start + offset)
            out[name] = (kind, raw.reshape(rows, row_bytes))
    return out
