"""Model cards: the README.md of an exported folder, with the Hugging Face Hub's YAML front matter.

The front matter (base_model, license, datasets, language, tags, pipeline_tag, library_name) is what the
Hub indexes; the body says what the model is, how it was trained (the run's pacos_train.yaml and
train_summary.json), what it learned from (the training data, and what `pacos generate` wrote beside it:
the teacher, how many answers it kept and why it dropped the others), how `pacos eval` scored it, and how
to use it. Everything is read from local files: writing a card never touches the network.

The base model is the root of the chain of runs (a run tuned from a run tuned from a hub model names
that hub model), its license the one its own card or GGUF metadata gives. A README.md that pacos did not
write is never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from pacos.errors import PacosError
from pacos.fileio import atomic_open

CARD_MARK = "<!-- written by pacos export; the next export into this folder rewrites it -->"
# The embedded models' hub repositories and licenses (their GGUF files' general.license).
EMBEDDED = {
    "gemma-3-270m": ("google/gemma-3-270m", "gemma"),
    "smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FORMAT_TAGS = {"hf": [], "gguf": ["gguf"], "ollama": ["gguf", "ollama"]}

# (label, where in metrics.json, format): the headline numbers of `pacos eval`.
EVAL_ROWS = [
    ("answers ending with EOS", ("eos_rate",), "{:.1%}"),
    ("mean new tokens", ("mean_new_tokens",), "{:.1f}"),
    ("ROUGE-L vs reference", ("rouge_l",), "{:.3f}"),
    ("embedding similarity vs reference", ("embedding_similarity",), "{:.3f}"),
    ("repeated 4-grams in an answer", ("repeated_4gram_share",), "{:.1%}"),
    ("response loss", ("data_loss", "loss"), "{:.4f}"),
    ("perplexity", ("data_loss", "perplexity"), "{:.2f}"),
    ("verifiable instructions: prompts, strict", ("ifeval", "prompt_strict"), "{:.1%}"),
    ("verifiable instructions: prompts, loose", ("ifeval", "prompt_loose"), "{:.1%}"),
    ("win rate vs baseline", ("judge", "win_rate"), "{:.1f}%"),
    ("length-controlled win rate", ("judge", "length_controlled_win_rate"), "{:.1f}%"),
]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _front_matter(readme: Path) -> dict[str, Any]:
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return {}
    match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


# --- where the model comes from ----------------------------------------------------------------------------


def _parent(spec: str) -> str | None:
    """The model a pacos run or LoRA adapter directory was tuned from."""
    path = Path(spec)
    if not path.is_dir():
        return None
    model = _read_yaml(path / "pacos_train.yaml").get("model")
    if model:
        return str(model)
    base = _read_json(path / "adapter_config.json").get("base_model_name_or_path")
    return str(base) if base else None


def _root(spec: str) -> str:
    """The first model of the chain of runs that ends at `spec`."""
    seen = {spec}
    while (parent := _parent(spec)) is not None and parent not in seen:
        seen.add(parent)
        spec = parent
    return spec


def hub_id(spec: str) -> str | None:
    """The Hugging Face repository of a root model (an embedded name's, or a hub id as given)."""
    if spec in EMBEDDED:
        return EMBEDDED[spec][0]
    local = Path(spec).exists() or Path(spec.split("/")[0]).is_dir()  # runs/base: a path, even if gone
    return spec if _HUB_ID.match(spec) and not local else None


def license_of(spec: str) -> str | None:
    """The license the root model's own card gives: embedded, a local README.md, or the hub cache's."""
    if spec in EMBEDDED:
        return EMBEDDED[spec][1]
    path = Path(spec)
    if path.is_dir():
        found = _front_matter(path / "README.md").get("license")
        return str(found) if found else None
    if hub_id(spec):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec, "README.md")
        if isinstance(cached, str):
            found = _front_matter(Path(cached)).get("license")
            return str(found) if found else None
    return None


# --- the training data -------------------------------------------------------------------------------------


def _data_facts(spec: str) -> dict[str, Any]:
    """What the local files say about one training set: records, languages, sources, and the summary of
    the `pacos generate` run that wrote it. A hub dataset is named, not read (no network)."""
    from pacos.data.seeds import BUILTIN_DATASETS

    path = Path(spec)
    facts: dict[str, Any] = {"spec": spec}
    if spec not in BUILTIN_DATASETS and not path.exists():
        return facts
    from pacos.data.io import read_records
    from pacos.data.turns import conversation_of
    from pacos.text.cjk import language_of

    try:
        records = read_records(spec, require_output=False)
    except PacosError as e:
        facts["unreadable"] = str(e)
        records = []
    if records:
        languages = Counter(
            language_of(f"{r.get('instruction') or ''} {r.get('input') or ''}") for r in records
        )
        facts["records"] = len(records)
        facts["languages"] = {k: v / len(records) for k, v in sorted(languages.items())}
        facts["with_input"] = sum(1 for r in records if r.get("input")) / len(records)
        with contextlib.suppress(PacosError):  # a malformed conversation: training would have said so
            facts["conversations"] = sum(1 for r in records if conversation_of(r) is not None)
        sources = Counter(str(r["source"]) for r in records if r.get("source"))
        if sources:
            facts["sources"] = dict(sources.most_common())
    if spec in BUILTIN_DATASETS:
        facts["builtin"] = True
    where = path if path.is_dir() else path.parent
    summary = _read_json(where / "summary.json")
    if "teacher" in summary and "accepted" in summary:
        facts["generated"] = summary
    return facts


def _languages(facts: list[dict[str, Any]]) -> list[str]:
    """The languages of the training data, where every set was read ("en"/"zh", as pacos tells them)."""
    if not facts or any("languages" not in f for f in facts):
        return []
    return sorted({lang for f in facts for lang, share in f["languages"].items() if share >= 0.01})


def _describe_data(facts: dict[str, Any]) -> list[str]:
    spec = facts["spec"]
    line = f"- `{spec}`"
    if facts.get("builtin"):
        line += ": pacos's bundled human-written seed tasks"
    if "records" in facts:
        langs = ", ".join(f"{share:.0%} {lang}" for lang, share in facts["languages"].items())
        line += f"{',' if facts.get('builtin') else ':'} {facts['records']:,} records ({langs}"
        line += f"; {facts['with_input']:.0%} with an input"
        if facts.get("conversations"):
            line += f"; {facts['conversations']:,} multi-turn conversations"
        line += ")"
    elif "unreadable" in facts:
        line += f" (not readable here: {facts['unreadable']})"
    elif not facts.get("builtin"):
        line += " (a Hugging Face dataset, or a file not on this machine)"
    lines = [line]
    if facts.get("sources"):
        parts = ", ".join(f"{name} {count:,}" for name, count in facts["sources"].items())
        lines.append(f"  - mixed from (`source` of each record): {parts}")
    gen = facts.get("generated")
    if gen:
        teacher = gen.get("teacher")
        if gen.get("model") and gen.get("model") != teacher:
            teacher = f"{teacher} ({gen['model']})"
        text = (
            f"  - written by `pacos generate` (mode {gen.get('mode', '?')}, language "
            f"{gen.get('language', '?')}) with the teacher {teacher}: {gen['accepted']:,} examples kept, "
            f"{gen.get('rejected', 0):,} dropped by the filters"
        )
        reasons = gen.get("rejected_by_reason") or {}
        if reasons:
            text += " (" + ", ".join(f"{k} {v:,}" for k, v in list(reasons.items())[:6]) + ")"
        if gen.get("cost_usd"):
            text += f"; teacher cost ${gen['cost_usd']:.2f}"
        lines.append(text)
    return lines


# --- evaluation --------------------------------------------------------------------------------------------


def _evaluated(metrics_path: Path, model: Path) -> bool:
    named = _read_json(metrics_path).get("model")
    try:
        return isinstance(named, str) and Path(named).resolve() == model.resolve()
    except OSError:
        return False


def find_eval(model: str) -> Path | None:
    """A `pacos eval` directory whose metrics.json is of this very model, in or beside its directory
    (the quickstart's runs/quickstart/eval/tuned evaluates runs/quickstart/model)."""
    path = Path(model)
    if not path.is_dir():
        return None
    patterns = ["*/metrics.json", "*/*/metrics.json"]
    candidates = [p for base in (path, path.parent) for pattern in patterns for p in base.glob(pattern)]
    found = sorted({p for p in candidates if _evaluated(p, path)}, key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def _get(metrics: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(metrics, dict) or key not in metrics:
            return None
        metrics = metrics[key]
    return metrics


def _eval_section(eval_dir: Path) -> list[str]:
    metrics = _read_json(eval_dir / "metrics.json")
    judge = metrics.get("judge") or {}
    unreliable = judge.get("unreliable_because") if judge.get("reliable") is False else None
    rows = []
    for label, keys, fmt in EVAL_ROWS:
        value = _get(metrics, keys)
        if isinstance(value, (int, float)) and not (unreliable and keys[0] == "judge"):
            rows.append(f"| {label} | {fmt.format(value)} |")
    if not rows:
        return []
    lines = ["## Evaluation", "", f"`pacos eval` ({eval_dir / 'metrics.json'}):", ""]
    if metrics.get("prompts"):
        decoding = metrics.get("decoding") or {}
        how = ", ".join(f"{k} {v}" for k, v in decoding.items() if isinstance(v, (int, float, str)))
        lines[2] = f"`pacos eval` on `{metrics['prompts']}`{f' ({how})' if how else ''}:"
    lines += ["| metric | value |", "| --- | --- |", *rows]
    if unreliable:
        lines += ["", f"The judge's win rates are left out: the judge was unreliable ({unreliable})."]
    return [*lines, ""]


# --- the card ----------------------------------------------------------------------------------------------


def _num(value: Any) -> str:
    """2.0 as 2, 32.0 as 32, 0.05 as 0.05: YAML gives floats where the user wrote whole numbers."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _records(summary: dict[str, Any]) -> int:
    """The records trained on: train_examples also counts the synthetic loop examples train adds."""
    return (summary.get("tokenization") or {}).get("kept", summary.get("train_examples", 0))


def _method(recipe: dict[str, Any]) -> str:
    method = recipe.get("method", "full")
    if method == "full":
        return "full fine-tuning"
    lora = recipe.get("lora") or {}
    targets = lora.get("target_modules", "all-linear")
    targets = ", ".join(targets) if isinstance(targets, list) else targets
    name = "QLoRA (4-bit base)" if method == "qlora" else "LoRA"
    r, alpha, dropout = (_num(lora.get(k, "?")) for k in ("r", "alpha", "dropout"))
    return f"{name}: r {r}, alpha {alpha}, dropout {dropout}, on {targets}"


def _training_rows(recipe: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    rows = [("method", _method(recipe))]
    objective = recipe.get("objective", "sft")
    if objective != "sft":
        beta = (recipe.get("preference") or {}).get("beta")
        rows.append(("objective", f"{objective.upper()}" + (f" (beta {beta})" if beta else "")))
    distill = recipe.get("distill") or {}
    if distill.get("teacher"):
        rows.append(("distilled from", f"{distill['teacher']} ({distill.get('divergence', 'forward_kl')})"))
    rows.append(("prompt template", str(recipe.get("template", "alpaca"))))
    if recipe.get("max_steps"):
        rows.append(("steps", str(recipe["max_steps"])))
    else:
        rows.append(("epochs", _num(recipe.get("epochs", "?"))))
    lr = recipe.get("lr")
    if isinstance(lr, (int, float)):
        rows.append(
            (
                "learning rate",
                f"{lr:g} ({recipe.get('lr_scheduler', 'cosine')}, warmup over "
                f"{recipe.get('warmup_ratio', 0):.0%} of the steps)",
            )
        )
    micro = recipe.get("micro_batch_size", "?")
    rows.append(("batch size", f"{recipe.get('batch_size', '?')} (micro-batches of {micro})"))
    longer = recipe.get("truncation", "drop")
    rows.append(("max length", f"{recipe.get('max_length', '?')} tokens ({longer} longer examples)"))
    rows.append(("seed", str(recipe.get("seed", "?"))))
    if summary:
        rows.append(("optimizer steps", f"{summary.get('steps', '?')}"))
        tokenization = summary.get("tokenization") or {}
        records = _records(summary)
        loops = summary.get("train_examples", 0) - records
        extra = f" (+ {loops:,} synthetic loops)" if loops > 0 else ""
        rows.append(("training examples", f"{records:,}{extra}"))
        dropped, cut = tokenization.get("dropped_too_long", 0), tokenization.get("cut", 0)
        if dropped or cut:
            rows.append(("too long", f"{dropped:,} dropped, {cut:,} cut"))
        if isinstance(summary.get("final_loss"), (int, float)):
            rows.append(("final training loss", f"{summary['final_loss']:.4f}"))
        if isinstance(summary.get("best_val_loss"), (int, float)):
            rows.append(("best validation loss", f"{summary['best_val_loss']:.4f}"))
        if summary.get("real_tokens"):
            rows.append(("tokens seen", f"{summary['real_tokens']:,}"))
    return ["| setting | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]


def _usage(fmt: str, folder: str, files: list[str], template: str | None, repo: str | None) -> list[str]:
    if repo:  # a reader of the hub page has the repository, not this machine's path
        folder = Path(folder).name
    where = repo or folder
    lines = ["## Use", ""]
    if repo and fmt != "hf":
        lines += ["```bash", f"hf download {repo} --local-dir {folder}", "```", ""]
    gguf = next((f for f in files if f.endswith(".gguf")), None)
    if fmt == "ollama":
        name = re.sub(r"[^a-z0-9._-]+", "-", Path(folder).name.lower()).strip("-.") or "model"
        lines += [
            "With [Ollama](https://ollama.com) (the Modelfile holds the prompt template, stop strings and "
            "sampling settings):",
            "",
            "```bash",
            f"cd {folder}",
            f"ollama create {name} -f Modelfile",
            f"ollama run {name}",
            "```",
            "",
        ]
    if gguf:
        lines += [
            "With pacos or llama.cpp:",
            "",
            "```bash",
            f"pacos chat --model {folder}/{gguf}",
            f"llama-cli -m {folder}/{gguf}",
            "```",
        ]
    else:
        lines += [
            "With pacos (`pip install pacos`):",
            "",
            "```bash",
            f"pacos chat --model {where}",
            f"pacos serve --model {where}  # an OpenAI-compatible API",
            "```",
            "",
            "With transformers:",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
            f'model = AutoModelForCausalLM.from_pretrained("{where}")',
            "```",
        ]
    if template and template != "chat":
        from pacos.data.templates import get_template

        chosen = get_template(template)
        example = getattr(chosen, "prompt_no_input", "").format(instruction="{instruction}")
        lines += [
            "",
            f"Prompts follow the `{template}` template (the answer follows the prompt directly and ends "
            "with EOS):",
            "",
            "```text",
            example,
            "```",
        ]
    elif template == "chat":
        lines += ["", "Prompts follow the tokenizer's chat template."]
    return [*lines, ""]


def model_card(
    model: str,
    fmt: str,
    folder: str | Path,
    files: list[str],
    *,
    template: str | None = None,
    eval_dir: str | Path | None = None,
    base: str | None = None,
    repo: str | None = None,
    outtype: str | None = None,
) -> str:
    """The README.md text for `folder`, which holds `files` exported from `model` in format `fmt`
    (hf, gguf or ollama). `eval_dir`: a `pacos eval` output (default: one found beside the model)."""
    path = Path(model)
    recipe = _read_yaml(path / "pacos_train.yaml") if path.is_dir() else {}
    summary = _read_json(path / "train_summary.json") if path.is_dir() else {}
    root = _root(base) if base else _root(model)
    base_id = hub_id(root)
    license_ = license_of(root)
    data_specs = [str(recipe[k]) for k in ("data", "val_data") if recipe.get(k)]
    facts = [_data_facts(s) for s in data_specs]
    languages = _languages(facts)
    if eval_dir is not None:
        eval_dir = Path(eval_dir)
        if not (eval_dir / "metrics.json").is_file():
            raise PacosError(f"--eval {eval_dir}: no metrics.json there (a `pacos eval --out` directory)")
    else:
        eval_dir = find_eval(model)

    tags = ["pacos"]
    if recipe or (template or "").startswith("alpaca"):  # instruction-tuned by pacos, or prompted as Alpaca
        tags.append("alpaca")
    if recipe.get("method") in ("lora", "qlora"):
        tags.append(recipe["method"])
    if recipe.get("objective", "sft") != "sft":
        tags.append(str(recipe["objective"]))
    if (recipe.get("distill") or {}).get("teacher"):
        tags.append("distillation")
    tags += FORMAT_TAGS[fmt]
    meta: dict[str, Any] = {}
    if base_id:
        meta["base_model"] = base_id
    if license_:
        meta["license"] = license_
    if data_specs:
        meta["datasets"] = data_specs
    if languages:
        meta["language"] = languages
    meta["tags"] = list(dict.fromkeys(tags))
    meta["pipeline_tag"] = "text-generation"
    meta["library_name"] = "transformers" if fmt == "hf" else "gguf"

    folder = Path(folder)
    title = repo or folder.name
    base_text = f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"`{root}`"
    what = {
        "hf": "a standalone Hugging Face model (safetensors; any LoRA adapter merged into its base)",
        "gguf": f"GGUF weights ({outtype or 'see the file name'}) for llama.cpp and the tools built on it",
        "ollama": f"GGUF weights ({outtype or 'see the file name'}) and an Ollama Modelfile",
    }[fmt]
    if recipe:
        intro = (
            f"**{title}** is {base_text} fine-tuned with [pacos](https://pypi.org/project/pacos/) "
            f"(Stanford Alpaca's recipe, end to end) by {_method(recipe).split(':')[0]}"
            + (f" on {_records(summary):,} examples" if summary.get("train_examples") else "")
            + f". This folder holds {what}."
        )
    else:
        intro = f"**{title}** is {base_text}, exported by [pacos](https://pypi.org/project/pacos/): {what}."
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", CARD_MARK, ""]
    lines += [f"# {title}", "", intro, "", "## Files", ""]
    descriptions = {"Modelfile": "the Ollama Modelfile: prompt template, stop strings, sampling settings"}
    for name in files:
        kind = "GGUF weights and tokenizer" if name.endswith(".gguf") else descriptions.get(name, "")
        lines.append(f"- `{name}`" + (f": {kind}" if kind else ""))
    lines.append("")
    if recipe:
        lines += ["## Training", "", *_training_rows(recipe, summary), ""]
        lines += ["## Data", ""]
        for f in facts:
            lines += _describe_data(f)
        clean = recipe.get("clean")
        if isinstance(clean, dict):
            lines.append(
                "- cleaned in memory before training by pacos's rules"
                + (" (repairing what the fix rules find)" if clean.get("fix") else "")
            )
        if recipe.get("val_fraction"):
            lines.append(f"- {recipe['val_fraction']:.0%} of the data held out for validation")
        lines.append("")
    if eval_dir is not None:
        lines += _eval_section(eval_dir)
    lines += _usage(fmt, str(folder), files, template, repo)
    return "\n".join(lines).rstrip() + "\n"


def write_card(folder: str | Path, text: str) -> Path | None:
    """Write README.md into `folder`; None, and nothing written, when a README.md pacos did not write is
    there (the folder is shared with something else: its README stays)."""
    path = Path(folder) / "README.md"
    if path.exists():
        try:
            ours = CARD_MARK in path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            ours = False
        if not ours:
            return None
    with atomic_open(path) as f:
        f.write(text)
    return path
