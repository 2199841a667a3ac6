"""Dataset statistics: sizes, lengths, and the verb/object diversity picture Alpaca published.

Alpaca parsed instructions with a constituency parser to find the root verb and its direct object.
pacos uses a parser-free heuristic that works offline and on Chinese: the leading verb of an
imperative instruction, and the head of the noun phrase that follows it (the last word before a
preposition, conjunction or punctuation). Questions ("What is ...") have no leading verb and count
under `(question)`.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pacos.data.records import Record
from pacos.text.cjk import HAN, HAN_CHARS

_QUESTION_WORDS = {
    "what", "how", "why", "who", "whom", "whose", "which", "when", "where", "is", "are", "was", "were",
    "do", "does", "did", "can", "could", "would", "should", "will", "shall", "may", "might", "have", "has",
}  # fmt: skip
_NOT_VERBS = {
    "the",
    "a",
    "an",
    "this",
    "that",
    "these",
    "those",
    "in",
    "on",
    "for",
    "if",
    "given",
    "using",
    "based",
    "after",
    "before",
    "from",
    "with",
    "imagine",
    "suppose",
    "assume",
    "i",
    "you",
    "we",
    "my",
    "your",
    "our",
    "please",
    "here",
    "there",
    "it",
    "as",
    "to",
}
_SKIP_BEFORE_OBJECT = {
    "a",
    "an",
    "the",
    "me",
    "us",
    "him",
    "her",
    "them",
    "some",
    "any",
    "this",
    "that",
    "these",
    "those",
    "my",
    "your",
    "our",
    "its",
    "their",
    "all",
    "each",
    "every",
}
_STOP = {
    "of", "for", "to", "about", "on", "in", "into", "with", "from", "by", "at", "as", "and", "or", "but",
    "that", "which", "who", "whom", "whose", "what", "how", "why", "when", "where", "if", "whether", "than",
    "using", "based", "given", "below", "above", "between", "without", "within", "so", "such", "like",
    "is", "are", "be", "this", "these", "those", "it", "one", "can", "will", "should",
}  # fmt: skip
# Common leading verbs of Chinese instructions, longest first so 总结 wins over 总.
_ZH_VERBS = sorted(
    ["写", "撰写", "编写", "生成", "创作", "解释", "说明", "翻译", "总结", "概括", "列出", "列举", "给出",
     "提供", "描述", "介绍", "分类", "判断", "计算", "改写", "润色", "修改", "纠正", "比较", "分析", "设计",
     "制定", "推荐", "提取", "找出", "回答", "续写", "扩写", "简化", "归纳", "评价", "规划", "猜测"],
    key=len, reverse=True,
)  # fmt: skip
_ZH_SKIP = ("请", "帮我", "帮忙", "你能", "能否", "可以")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|[^\sA-Za-z]")


def verb_object(instruction: str) -> tuple[str, str | None]:
    """(verb, object) of an instruction by the heuristic above; verb is '(question)' or '(other)'."""
    text = instruction.strip()
    if HAN.match(text):
        for prefix in _ZH_SKIP:
            text = text.removeprefix(prefix)
        for verb in _ZH_VERBS:
            if text.startswith(verb):
                # The object is the head noun closing the first clause: 写一首关于春天的诗 -> 诗.
                clause = re.match(f"[{HAN_CHARS}]*", text[len(verb) :]).group(0)
                obj = clause[-2:].lstrip("的这那段首篇个份些种条句")
                return verb, obj or None
        return (
            "(question)" if re.search(r"[？?吗呢]$|什么|怎么|为什么|哪|如何|多少", text) else "(other)"
        ), None
    tokens = _WORD.findall(text)
    if not tokens or not tokens[0][0].isalpha():
        return "(other)", None
    verb = tokens[0].lower()
    if verb in _QUESTION_WORDS or text.endswith("?"):
        return "(question)", None
    if verb in _NOT_VERBS:
        return "(other)", None
    phrase: list[str] = []
    for token in tokens[1:6]:
        low = token.lower()
        if not token[0].isalpha() or low in _STOP or (phrase and low.endswith("ed")):
            break  # the noun phrase ends at a preposition, punctuation or a participle ("names mentioned")
        if not phrase and low in _SKIP_BEFORE_OBJECT:
            continue
        phrase.append(low)
    return verb, (phrase[-1] if phrase else None)


def _summary(values: list[int] | list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {
        "count": len(values),
        "mean": round(statistics.fmean(values), 1),
        "min": ordered[0],
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "max": ordered[-1],
    }


def compute_stats(records: list[Record], tokenizer: Any = None, top: int = 20) -> dict[str, Any]:
    fields = ("instruction", "input", "output")
    chars = {f: [len(r.get(f) or "") for r in records] for f in fields}
    pairs = [verb_object(r["instruction"]) for r in records]
    verbs = Counter(v for v, _ in pairs)
    objects: dict[str, Counter[str]] = {}
    for verb, obj in pairs:
        if obj:
            objects.setdefault(verb, Counter())[obj] += 1
    real_verbs = [(v, c) for v, c in verbs.most_common() if not v.startswith("(")]
    stats: dict[str, Any] = {
        "records": len(records),
        "with_input": sum(1 for r in records if r.get("input")),
        "with_input_share": round(sum(1 for r in records if r.get("input")) / max(len(records), 1), 4),
        "chinese_share": round(
            sum(1 for r in records if HAN.search(r["instruction"])) / max(len(records), 1), 4
        ),
        "unique_instructions": len({r["instruction"].strip() for r in records}),
        "chars": {f: _summary(v) for f, v in chars.items()},
        "distinct_verbs": len(real_verbs),
        "questions": verbs.get("(question)", 0),
        "top_verbs": [
            {
                "verb": v,
                "count": c,
                "top_objects": [
                    {"object": o, "count": n} for o, n in objects.get(v, Counter()).most_common(4)
                ],
            }
            for v, c in real_verbs[:top]
        ],
    }
    if tokenizer is not None:
        tokens = {
            f: [
                len(tokenizer.encode(r.get(f) or "", add_special_tokens=False)) if r.get(f) else 0
                for r in records
            ]
            for f in fields
        }
        stats["tokens"] = {f: _summary(v) for f, v in tokens.items()}
        stats["tokens"]["total"] = _summary([sum(t) for t in zip(*tokens.values())])
    stats["_lengths"] = {"chars": chars, "tokens": tokens if tokenizer is not None else None}
    values = score_values(records)
    if values:
        stats["scores"] = {key: _summary(v) | {"missing": len(records) - len(v)} for key, v in values.items()}
        stats["_scores"] = values
    return stats


def score_values(records: list[Record]) -> dict[str, list[float]]:
    """The numbers under `record["scores"]`, per key (keys in order of first appearance)."""
    values: dict[str, list[float]] = {}
    for record in records:
        scores = record.get("scores")
        if not isinstance(scores, dict):
            continue
        for key, value in scores.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values.setdefault(key, []).append(float(value))
    return values


def kmeans(
    points: np.ndarray, k: int, seed: int = 0, iterations: int = 50, restarts: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding, best of `restarts` runs by inertia (one run often stops in a
    poor local optimum): (labels, centres). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    k = min(k, len(points))
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(restarts):
        labels, centre = _lloyd(points, k, rng, iterations)
        inertia = float(((points - centre[labels]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, centre)
    return best[1], best[2]


def _lloyd(
    points: np.ndarray, k: int, rng: np.random.Generator, iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):  # k-means++: far points are likelier next centres
        dist = np.min(((points[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        total = dist.sum()
        pick = rng.choice(len(points), p=dist / total) if total > 0 else rng.integers(len(points))
        centres.append(points[pick])
    centre = np.array(centres)
    labels = np.zeros(len(points), dtype=np.int64)
    for step in range(iterations):
        # ||p - c||^2 = ||p||^2 - 2 p.c + ||c||^2; the ||p||^2 term does not change the argmin.
        new = np.argmin((centre**2).sum(1)[None] - 2 * points @ centre.T, axis=1)
        if step and np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = points[labels == c]
            if len(members):
                centre[c] = members.mean(0)
    return labels, centre


def embedding_map(
    records: list[Record],
    clusters: int = 8,
    sample: int = 5000,
    examples: int = 3,
    embedder: Any = None,
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, Any]:
    """MiniLM embeddings of instruction + input (a seeded sample of at most `sample` records), k-means
    clusters in the embedding space, and a 2-D PCA projection (numpy SVD) for the plot. Each cluster's
    examples are the instructions nearest its centre."""
    from pacos.data.embed import MODEL_NAME, embed_records

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(records), sample, replace=False)) if len(records) > sample else None
    picked = [records[i] for i in chosen] if chosen is not None else records
    vectors = embed_records(picked, ("instruction", "input"), embedder, show_progress=show_progress)
    labels, centres = kmeans(vectors, clusters, seed)
    centred = vectors - vectors.mean(0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ axes[:2].T
    variance = singular**2 / max((singular**2).sum(), 1e-12)
    found = []
    for c in range(len(centres)):
        members = np.flatnonzero(labels == c)
        if not len(members):
            continue
        near = members[np.argsort(-(vectors[members] @ centres[c]), kind="stable")[:examples]]
        found.append(
            {
                "cluster": c,
                "size": len(members),
                "examples": [picked[i]["instruction"][:120] for i in near],
            }
        )
    found.sort(key=lambda f: -f["size"])
    return {
        "model": MODEL_NAME,
        "records": len(picked),
        "sampled": chosen is not None,
        "clusters": found,
        "explained_variance_2d": [round(float(v), 4) for v in variance[:2]],
        "_xy": xy,
        "_labels": labels,
    }


def plot_stats(stats: dict[str, Any], out_dir: Path) -> list[Path]:
    """Length histograms and the verb/object sunburst; returns the PNG paths written."""
    from pacos.plotting import pyplot

    plt = pyplot()
    written = []
    lengths = stats["_lengths"]
    unit = "tokens" if lengths["tokens"] else "chars"
    data = lengths["tokens"] or lengths["chars"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (name, values) in zip(axes, data.items()):
        nonzero = [v for v in values if v > 0]
        ax.hist(nonzero or [0], bins=40, color="#5b8def")
        ax.set_title(f"{name} ({len(nonzero)} non-empty)")
        ax.set_xlabel(unit)
    axes[0].set_ylabel("records")
    fig.suptitle(f"Length distribution, {stats['records']} records")
    fig.tight_layout()
    path = out_dir / "lengths.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    top = stats["top_verbs"]
    if top:
        fig, ax = plt.subplots(figsize=(8, 8))
        cmap = plt.get_cmap("tab20")
        inner = [v["count"] for v in top]
        outer_sizes, outer_labels, outer_colors = [], [], []
        for i, v in enumerate(top):
            shown = sum(o["count"] for o in v["top_objects"])
            for o in v["top_objects"]:
                outer_sizes.append(o["count"])
                outer_labels.append(o["object"])
                outer_colors.append((*cmap(i % 20)[:3], 0.6))
            outer_sizes.append(v["count"] - shown)  # the verb's other objects, left blank
            outer_labels.append("")
            outer_colors.append((1, 1, 1, 0))
        ax.pie(
            inner,
            radius=0.7,
            labels=[v["verb"] for v in top],
            labeldistance=0.55,
            colors=[cmap(i % 20) for i in range(len(top))],
            wedgeprops={"width": 0.4, "edgecolor": "w"},
            textprops={"fontsize": 8},
        )
        ax.pie(
            outer_sizes,
            radius=1.0,
            labels=outer_labels,
            labeldistance=0.83,
            colors=outer_colors,
            wedgeprops={"width": 0.3, "edgecolor": "w"},
            textprops={"fontsize": 6},
        )
        ax.set_title(f"Top {len(top)} leading verbs (inner) and their top objects (outer)")
        path = out_dir / "verbs.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    if stats.get("_scores"):
        written.append(plot_scores(stats["_scores"], out_dir))
    if stats.get("_map"):
        written.append(plot_map(stats["_map"], out_dir))
    return written


def plot_scores(values: dict[str, list[float]], out_dir: Path) -> Path:
    """One histogram per score key."""
    from pacos.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(values), figsize=(4.2 * len(values), 3.4), squeeze=False)
    for ax, (key, numbers) in zip(axes[0], values.items()):
        ax.hist(numbers, bins=min(40, max(5, len(set(numbers)))), color="#5b8def")
        ax.set_title(f"scores.{key} ({len(numbers)} records)")
        ax.set_xlabel(key)
    axes[0][0].set_ylabel("records")
    fig.tight_layout()
    path = out_dir / "scores.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_map(found: dict[str, Any], out_dir: Path) -> Path:
    """The 2-D PCA map of the embeddings, coloured by k-means cluster; the legend shows each cluster's size
    and its most central instruction (Chinese renders with the CJK font pacos.plotting finds)."""
    from pacos.plotting import pyplot

    plt = pyplot()
    xy, labels = found["_xy"], found["_labels"]
    cmap = plt.get_cmap("tab10" if len(found["clusters"]) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(11, 7))
    for i, cluster in enumerate(found["clusters"]):
        at = labels == cluster["cluster"]
        example = cluster["examples"][0] if cluster["examples"] else ""
        example = example if len(example) <= 48 else example[:47] + "…"
        ax.scatter(xy[at, 0], xy[at, 1], s=6, alpha=0.6, color=cmap(i % cmap.N),
                   label=f"{cluster['size']}: {example}")  # fmt: skip
    variance = found["explained_variance_2d"]
    ax.set_xlabel(f"PC 1 ({variance[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({variance[1]:.0%} of variance)" if len(variance) > 1 else "PC 2")
    ax.set_title(f"{found['model']} embeddings of {found['records']} instructions, k-means clusters")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=3, frameon=False)
    path = out_dir / "clusters.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
