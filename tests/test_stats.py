from __future__ import annotations

import json

import pytest

from pacos.data.io import read_records
from pacos.data.stats import compute_stats, verb_object
from pacos.errors import PacosError
from pacos.models import load_tokenizer


@pytest.mark.parametrize(
    "instruction,expected",
    [
        ("Write a short story about a lost key.", ("write", "story")),
        ("Generate a list of five fruits.", ("generate", "list")),
        ("Give three tips for staying healthy.", ("give", "tips")),
        ("Extract all dates mentioned in the text.", ("extract", "dates")),
        ("Explain why the sky is blue.", ("explain", None)),
        ("What is the capital of France?", ("(question)", None)),
        ("Is this sentence formal?", ("(question)", None)),
        ("The following text is informal.", ("(other)", None)),
        ("写一首关于春天的诗。", ("写", "诗")),
        ("请总结下面这段话。", ("总结", "话")),
        ("给出五个学习英语的建议", ("给出", "建议")),
        ("为什么天空是蓝色的？", ("(question)", None)),
    ],
)
def test_verb_object(instruction, expected):
    assert verb_object(instruction) == expected


def test_compute_stats_counts():
    records = [
        {"instruction": "Write a poem.", "input": "", "output": "Roses."},
        {"instruction": "Write a poem about rain.", "input": "", "output": "Drops fall."},
        {"instruction": "Summarise the text.", "input": "Long text here.", "output": "Short."},
        {"instruction": "把这句话翻译成英文。", "input": "你好", "output": "Hello."},
    ]
    stats = compute_stats(records)
    assert stats["records"] == 4 and stats["with_input"] == 2 and stats["with_input_share"] == 0.5
    assert stats["chinese_share"] == 0.25
    assert stats["top_verbs"][0] == {
        "verb": "write",
        "count": 2,
        "top_objects": [{"object": "poem", "count": 2}],
    }
    assert stats["chars"]["output"]["max"] == len("Drops fall.")


def test_stats_command_writes_json_and_pngs_with_tokens(cli, tmp_path, tiny_tokenizer_dir):
    out = tmp_path / "stats"
    result = cli("data", "stats", "seed-tasks", "--out-dir", out, "--tokenizer", tiny_tokenizer_dir)
    assert result.code == 0, result.err
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records"] == len(read_records("seed-tasks"))
    assert stats["tokens"]["total"]["count"] == stats["records"] and stats["tokens"]["total"]["max"] > 0
    assert len(stats["top_verbs"]) == 20
    for name in ("lengths.png", "verbs.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_tokenizer_is_one_line_error(tmp_path):
    (tmp_path / "nope").mkdir()
    with pytest.raises(
        PacosError, match=r"nope': the directory holds no Hugging Face model or tokenizer"
    ) as info:
        load_tokenizer(str(tmp_path / "nope"))
    assert "\n" not in str(info.value)
    with pytest.raises(PacosError, match=r"not an embedded name"):
        load_tokenizer("no-such-thing")


def test_plots_draw_chinese_with_a_cjk_font(tmp_path):
    """The set-up installs a CJK font (mplfonts' Noto Sans CJK SC): Chinese labels are drawn, not boxes."""
    import warnings

    from pacos.plotting import has_cjk_font, pyplot

    assert has_cjk_font()
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.set_title("判断 sentiment 情感")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph would warn
        fig.savefig(tmp_path / "zh.png")
    plt.close(fig)
