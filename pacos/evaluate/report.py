"""The evaluation report: `report.md` and a self-contained `report.html` (images inlined, no network).

One or more runs side by side (base and tuned, say): the metrics table, plots (answer lengths, the main
rates, the judge's verdicts), and the answers next to each other with the reference and the verdict.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pacos.fileio import atomic_open

# (label, where in metrics.json, format)
ROWS = [
    ("answers ending with EOS", ("eos_rate",), "{:.1%}"),
    ("mean new tokens", ("mean_new_tokens",), "{:.1f}"),
    ("ROUGE-L vs reference", ("rouge_l",), "{:.3f}"),
    ("embedding similarity vs reference", ("embedding_similarity",), "{:.3f}"),
    ("distinct-2", ("distinct_2",), "{:.3f}"),
    ("repeated 4-grams in an answer", ("repeated_4gram_share",), "{:.1%}"),
    ("English prompts: answers ending with EOS", ("by_language", "en", "eos_rate"), "{:.1%}"),
    ("English prompts: ROUGE-L", ("by_language", "en", "rouge_l"), "{:.3f}"),
    ("Chinese prompts: answers ending with EOS", ("by_language", "zh", "eos_rate"), "{:.1%}"),
    ("Chinese prompts: ROUGE-L (characters)", ("by_language", "zh", "rouge_l"), "{:.3f}"),
    ("response loss", ("data_loss", "loss"), "{:.4f}"),
    ("perplexity", ("data_loss", "perplexity"), "{:.2f}"),
    ("verifiable: prompts, strict", ("ifeval", "prompt_strict"), "{:.1%}"),
    ("verifiable: prompts, loose", ("ifeval", "prompt_loose"), "{:.1%}"),
    ("verifiable: instructions, strict", ("ifeval", "instruction_strict"), "{:.1%}"),
    ("win rate vs baseline", ("judge", "win_rate"), "{:.1f}%"),
    ("standard error", ("judge", "standard_error"), "{:.1f}"),
    ("length-controlled win rate", ("judge", "length_controlled_win_rate"), "{:.1f}%"),
    ("win rate before position calibration", ("judge", "win_rate_uncalibrated"), "{:.1f}%"),
    ("judge's preference for the first position", ("judge", "first_position_preference"), "{:.1%}"),
    ("judge: verdicts for the answer shown first", ("judge", "first_position_raw"), "{:.1%}"),
    ("judge: same winner in both orders", ("judge", "order_agreement"), "{:.1%}"),
]
# Not shown for a judge that fails judge_reliability: its numbers stay in metrics.json, not in the table.
_WIN_RATES = {"win_rate", "standard_error", "length_controlled_win_rate", "win_rate_uncalibrated"}
UNRELIABLE = "not reported: unreliable judge"


def _get(metrics: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(metrics, dict) or key not in metrics:
            return None
        metrics = metrics[key]
    return metrics


def load_run(directory: str | Path, name: str | None = None) -> dict[str, Any]:
    """A finished `pacos eval` directory: its metrics, answers and (if judged) annotations."""
    from pacos.errors import PacosError

    directory = Path(directory)
    try:
        metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PacosError(f"{directory}: not a pacos eval run (metrics.json: {e})") from None
    answers = []
    if (directory / "answers.jsonl").exists():
        answers = [
            json.loads(line) for line in (directory / "answers.jsonl").read_text("utf-8").splitlines() if line
        ]
    annotations = []
    if (directory / "annotations.json").exists():
        annotations = json.loads((directory / "annotations.json").read_text(encoding="utf-8"))
    return {"name": name or metrics.get("model") or directory.name, "metrics": metrics, "answers": answers,
            "annotations": annotations}  # fmt: skip


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def plots(runs: list[dict[str, Any]]) -> dict[str, bytes]:
    """PNG images by file name."""
    from pacos.plotting import pyplot

    plt = pyplot()
    images = {}
    lengths = [[a.get("new_tokens", 0) for a in run["answers"]] for run in runs]
    if any(lengths):
        fig, ax = plt.subplots(figsize=(7, 3.4))
        everything = [v for values in lengths for v in values]
        bins = np.linspace(min(everything), max(everything) + 1, 31)  # shared, so runs line up
        for run, values in zip(runs, lengths):
            if values:
                ax.hist(values, bins=bins, alpha=0.55, label=run["name"])
        ax.set_xlabel("new tokens per answer")
        ax.set_ylabel("answers")
        ax.set_title("Answer lengths (a pile at the limit: answers that never stop)")
        ax.legend()
        images["lengths.png"] = _png(fig)
        plt.close(fig)
    rates = [
        ("EOS rate", ("eos_rate",)),
        ("ROUGE-L", ("rouge_l",)),
        ("embedding sim.", ("embedding_similarity",)),
        ("verifiable (loose)", ("ifeval", "prompt_loose")),
    ]
    shown = [
        (label, path) for label, path in rates if any(_get(r["metrics"], path) is not None for r in runs)
    ]
    if shown:
        fig, ax = plt.subplots(figsize=(7, 3.4))
        width = 0.8 / len(runs)
        for i, run in enumerate(runs):
            values = [_get(run["metrics"], path) or 0.0 for _, path in shown]
            ax.bar([x + i * width for x in range(len(shown))], values, width, label=run["name"])
        ax.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(len(shown))], [s[0] for s in shown])
        ax.set_ylim(0, 1)
        ax.set_title("Main rates (higher is better)")
        ax.legend()
        images["rates.png"] = _png(fig)
        plt.close(fig)
    judged = [r for r in runs if _get(r["metrics"], ("judge", "n"))]
    if judged:
        fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(judged)))
        for i, run in enumerate(judged):
            j = run["metrics"]["judge"]
            left = 0
            for count, color, label in ((j["wins"], "#2e7d32", "wins"), (j["ties"], "#9e9e9e", "ties"),
                                        (j["losses"], "#c62828", "losses")):  # fmt: skip
                ax.barh(i, count, left=left, color=color, label=label if i == 0 else None)
                left += count
        ax.set_yticks(
            range(len(judged)), [f"{r['name']} vs {r['metrics']['judge']['baseline']}" for r in judged]
        )
        ax.set_xlabel("pairs (both orders must agree for a win)")
        ax.legend(loc="lower right")
        images["verdicts.png"] = _png(fig)
        plt.close(fig)
    return images


def metric_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    """[label, value per run] for every metric some run has, formatted."""
    rows = []
    for label, path, fmt in ROWS:
        values = [_get(r["metrics"], path) for r in runs]
        if all(v is None for v in values):
            continue
        cells = []
        for run, value in zip(runs, values):
            if path[0] == "judge" and path[-1] in _WIN_RATES and judge_unreliable(run["metrics"]):
                cells.append(UNRELIABLE if path[-1] == "win_rate" else "-")
            else:
                cells.append("-" if value is None else fmt.format(value))
        rows.append([label, *cells])
    return rows


def judge_unreliable(metrics: dict[str, Any]) -> str | None:
    """Why the run's judge is not trusted with a win rate, or None (trusted, or no judge)."""
    judge = metrics.get("judge") or {}
    return judge.get("unreliable_because") if judge.get("reliable") is False else None


def _side_by_side(runs: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Prompts in the first run's order, each with every run's answer (matched by instruction + input)."""
    index = [{(a["instruction"], a.get("input", "")): a for a in run["answers"]} for run in runs]
    verdicts = [{a["instruction"]: a for a in run["annotations"]} for run in runs]
    items = []
    for first in runs[0]["answers"][:limit]:
        key = (first["instruction"], first.get("input", ""))
        text = first["instruction"] + (f"\n\n{first['input']}" if first.get("input") else "")
        answers = []
        for run, by_key, by_text in zip(runs, index, verdicts):
            a = by_key.get(key)
            verdict = by_text.get(text)
            answers.append(
                {
                    "name": run["name"],
                    "text": a["answer"] if a else "-",
                    "eos": a is not None and a.get("finish_reason") == "stop",
                    "verdict": None if verdict is None else verdict["preference_both_orders"],
                }
            )
        items.append({"instruction": text, "reference": first.get("output"), "answers": answers})
    return items


def _verdict_text(preference: float | None) -> str:
    if preference is None:
        return ""
    return {2.0: "judge: better than the baseline", 1.0: "judge: worse than the baseline"}.get(
        preference, "judge: tie (the two orders disagreed)"
    )


def write_report(
    runs: list[dict[str, Any]],
    out_dir: str | Path,
    examples: int = 30,
    images: dict[str, bytes] | None = None,
    notes: Sequence[str] = (),
) -> tuple[Path, Path]:
    """report.md (with PNGs beside it) and report.html (self-contained) in `out_dir`; `images`: more
    PNGs by file name (a training loss curve, say), shown first; `notes`: lines shown under the metrics
    (what the training data was, say)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = {**(images or {}), **plots(runs)}
    for name, data in images.items():
        with atomic_open(out / name, "wb") as f:
            f.write(data)
    table = metric_rows(runs)
    items = _side_by_side(runs, examples)
    names = [r["name"] for r in runs]

    md = [f"# pacos evaluation: {' vs '.join(names)}", "", "| metric | " + " | ".join(names) + " |",
          "| --- |" + " --- |" * len(names)]  # fmt: skip
    md += ["| " + " | ".join(row) + " |" for row in table]
    warnings = [
        f"{r['name']}: the judge's win rate is not reported: {why}."
        for r in runs
        if (why := judge_unreliable(r["metrics"]))
    ]
    md += [""] + [f"> **Unreliable judge.** {w}" for w in warnings]
    md += [f"- {note}" for note in notes]
    md += [""] + [f"![{name}]({name})" for name in images] + ["", "## Answers side by side", ""]
    for item in items:
        md += [f"### {item['instruction'].splitlines()[0][:120]}", "", f"> {item['instruction']}", ""]
        if item["reference"]:
            md += [f"**reference**: {item['reference']}", ""]
        for a in item["answers"]:
            end = "ends with EOS" if a["eos"] else "hit the token limit"
            md += [f"**{a['name']}** ({end}) {_verdict_text(a['verdict'])}", "", "```", a["text"], "```", ""]
    with atomic_open(out / "report.md") as f:
        f.write("\n".join(md) + "\n")

    e = html.escape
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table)
    notes_html = "".join(f'<p class="warn"><b>Unreliable judge.</b> {e(w)}</p>' for w in warnings)
    notes_html += "".join(f'<p class="note">{e(note)}</p>' for note in notes)
    figures = "".join(
        f'<img alt="{e(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        for name, data in images.items()
    )
    cards = []
    for item in items:
        cols = "".join(
            f'<div class="answer"><h4>{e(a["name"])} <span class="{"eos" if a["eos"] else "limit"}">'
            f"{'EOS' if a['eos'] else 'token limit'}</span></h4><pre>{e(a['text'])}</pre>"
            f'<p class="verdict">{e(_verdict_text(a["verdict"]))}</p></div>'
            for a in item["answers"]
        )
        reference = (
            f'<p class="ref"><b>reference</b>: {e(item["reference"])}</p>' if item["reference"] else ""
        )
        cards.append(f'<section><pre class="prompt">{e(item["instruction"])}</pre>{reference}'
                     f'<div class="row">{cols}</div></section>')  # fmt: skip
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>pacos evaluation</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:49%;margin:4px}}pre{{white-space:pre-wrap;margin:0}}
section{{border-top:1px solid #ddd;padding:10px 0}}.row{{display:flex;gap:12px}}
.answer{{flex:1;background:#f7f7f9;padding:8px;border-radius:6px}}.prompt{{font-weight:600}}
.ref{{white-space:pre-wrap}}.eos{{color:#2e7d32;font-size:small}}.limit{{color:#c62828;font-size:small}}.verdict{{color:#555}}.warn{{background:#fff3e0;padding:6px}}
</style></head><body><h1>pacos evaluation: {e(" vs ".join(names))}</h1>
<table id="metrics"><tr><th>metric</th>{head}</tr>{body}</table>{notes_html}
<div id="plots">{figures}</div><h2>Answers side by side</h2>{"".join(cards)}</body></html>
"""
    with atomic_open(out / "report.html") as f:
        f.write(page)
    return out / "report.md", out / "report.html"
