"""Matplotlib set up once for pacos's plots: a headless backend, and a CJK font so Chinese labels render.

The font comes from the `mplfonts` package (Noto Sans CJK SC), found without importing it and registered
with matplotlib's font manager; an installed system CJK font works too. Latin text keeps DejaVu Sans and
falls back per glyph to the CJK font. Without any CJK font, Chinese labels show as boxes, silently.
"""

from __future__ import annotations

import importlib.util
import warnings
from functools import cache
from pathlib import Path
from typing import Any

CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
                "Microsoft YaHei", "SimHei", "PingFang SC")  # fmt: skip


def bundled_cjk_font() -> Path | None:
    spec = importlib.util.find_spec("mplfonts")
    places = spec.submodule_search_locations if spec else None
    path = Path(places[0]) / "fonts" / "NotoSansCJKsc-Regular.otf" if places else None
    return path if path is not None and path.exists() else None


@cache
def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, with a CJK fallback font when one can be found."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    font = bundled_cjk_font()
    if font is not None:
        font_manager.fontManager.addfont(str(font))
    installed = {f.name for f in font_manager.fontManager.ttflist}
    cjk = [f for f in CJK_FAMILIES if f in installed]
    if cjk:  # a list of families: matplotlib falls back glyph by glyph
        matplotlib.rcParams["font.family"] = ["DejaVu Sans", cjk[0]]
    else:  # boxes for CJK text, without a warning per glyph
        warnings.filterwarnings("ignore", message="Glyph .* missing")
    return plt


def has_cjk_font() -> bool:
    from matplotlib import font_manager

    pyplot()
    return any(f.name in CJK_FAMILIES for f in font_manager.fontManager.ttflist)
