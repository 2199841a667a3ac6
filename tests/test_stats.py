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


def test_score_distribution_per_key(cli, tmp_path):
    from .conftest import write_jsonl

    rows = [
        {"instruction": f"Task {i}.", "output": "x", "scores": {"judge": 1 + i % 5, "ifd": i / 10}}
        for i in range(10)
    ] + [
        {"instruction": "Unscored.", "output": "x"},
        {"instruction": "Odd.", "output": "x", "scores": {"judge": "?"}},
    ]
    stats = compute_stats(rows)
    assert set(stats["scores"]) == {"judge", "ifd"}
    judge = stats["scores"]["judge"]
    assert (judge["count"], judge["min"], judge["max"], judge["mean"], judge["missing"]) == (
        10,
        1.0,
        5.0,
        3.0,
        2,
    )
    out = tmp_path / "stats"
    result = cli("data", "stats", write_jsonl(tmp_path / "s.jsonl", rows), "--out-dir", out)
    assert result.code == 0, result.err
    assert "scores.judge: 10 records, mean 3.0, min 1.0, max 5.0" in result.out
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "stats.json").read_text())["scores"]["ifd"]["count"] == 10
    assert "clusters" not in json.loads((out / "stats.json").read_text())  # the map is opt-in


def test_kmeans_finds_separated_groups():
    import numpy as np

    from pacos.data.stats import kmeans

    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = np.repeat(np.arange(3), 50)
    points = centres[truth] + rng.normal(size=(150, 2))
    labels, found = kmeans(points, 3, seed=0)
    # The same partition as the truth, whatever the cluster numbers.
    assert len({(t, label) for t, label in zip(truth, labels)}) == 3
    nearest = np.linalg.norm(found[:, None] - centres[None], axis=-1).min(axis=1)
    assert (nearest < 0.5).all()


def test_cluster_map_of_english_and_chinese_topics(cli, tmp_path):
    import warnings

    from .conftest import write_jsonl

    topics = {
        "bread": ["How do I bake bread at home?", "Give me a recipe for sourdough bread.",
                  "Why did my bread not rise?", "What flour is best for baking bread?"],
        "space": ["How far is the Moon from Earth?", "Explain what a black hole is.",
                  "Name the planets of the solar system.", "Why is Mars red?"],
        "zh": ["请解释什么是光合作用。", "写一首关于春天的诗。", "给出三个学习英语的建议。",
               "把这句话翻译成英文。"],
    }  # fmt: skip
    rows = [{"instruction": t, "output": "x"} for texts in topics.values() for t in texts]
    out = tmp_path / "stats"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a missing CJK glyph in the legend would warn
        result = cli(
            "data", "stats", write_jsonl(tmp_path / "s.jsonl", rows), "--out-dir", out, "--clusters", "3"
        )
    assert result.code == 0, result.err
    found = json.loads((out / "stats.json").read_text())["clusters"]
    assert found["records"] == 12 and sum(c["size"] for c in found["clusters"]) == 12
    groups = [
        {next(k for k, v in topics.items() if e in v) for e in c["examples"]} for c in found["clusters"]
    ]
    assert sorted(len(g) for g in groups) == [1, 1, 1] and {g.pop() for g in groups} == set(topics)
    assert sum(line.startswith("cluster ") for line in result.out.splitlines()) == 3 and any(
        t in result.out for t in topics["zh"]
    )
    assert (out / "clusters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
