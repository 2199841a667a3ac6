"""Dataset statistics: sizes, lengths, and the verb/object diversity picture Alpaca published.

Alpaca parsed instructions with a constituency parser to find the root verb and its direct object.
pacos uses a parser-free heuristic that works offline and on Chinese: the leading verb of an
imperative instruction, and the head of the noun phrase that follows it (the last word before a
preposition, conjunction or punctuation). Questions ("What is ...") have no leading verb and count
under `(question)`.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from pacos.data.records import Record

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
_CJK = re.compile(r"[\u4e00-\u9fff]")


def verb_object(instruction: str) -> tuple[str, str | None]:
    """(verb, object) of an instruction by the heuristic above; verb is '(question)' or '(other)'."""
    text = instruction.strip()
    if _CJK.match(text):
        for prefix in _ZH_SKIP:
            text = text.removeprefix(prefix)
        for verb in _ZH_VERBS:
            if text.startswith(verb):
                # The object is the head noun closing the first clause: 写一首关于春天的诗 -> 诗.
                clause = re.match(r"[\u4e00-\u9fff]*", text[len(verb) :]).group(0)
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


def _summary(values: list[int]) -> dict[str, float]:
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
            sum(1 for r in records if _CJK.search(r["instruction"])) / max(len(records), 1), 4
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
    return stats


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
    return written
