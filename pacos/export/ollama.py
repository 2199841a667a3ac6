"""Ollama: a GGUF file and a Modelfile whose TEMPLATE renders the prompt `pacos chat` sends.

`ollama create NAME -f Modelfile` builds a model from the GGUF beside the Modelfile (FROM), a TEMPLATE in
Go's text/template syntax over the conversation (`.Messages`, `.System`), stop strings and sampling
parameters. The TEMPLATE follows the prompt format pacos picks for the model (the template it was trained
with, else its chat template, else Alpaca's: pacos.infer.loading.pick_template):

- `alpaca` / `alpaca-zh`: pacos's conversation form (pacos.data.turns): the preamble, or the system
  message, once; then an instruction block per user turn, each earlier answer closed by the EOS text.
- `chat`: the tokenizer's Jinja template is never translated. It renders probe conversations, and the
  renderings are compared with those of the families pacos has Go templates for: ChatML (SmolLM2, Qwen
  2.5; a default system prompt, such as SmolLM2's, becomes the SYSTEM line, which Ollama uses exactly
  when a conversation brings none, as the Jinja template does) and Gemma (the system prompt merged into
  the first user turn). Any other template is refused rather than approximated.

BOS: llama.cpp, and so Ollama, puts BOS before the prompt when the GGUF's `tokenizer.ggml.add_bos_token`
says so (pacos writes it as the Hugging Face tokenizer behaves). A chat template that writes the BOS text
itself (Gemma's) would then give two, so the TEMPLATE leaves it to the GGUF.

Where Ollama cannot follow pacos exactly: it joins consecutive messages of one role, and several system
messages, with a blank line (pacos's Alpaca form joins system messages with a space and gives each user
message its own block); Gemma's Jinja template trims each message, which a Go template cannot. Ollama's
Modelfile parser keeps a value between triple quotes as it is, but drops characters Go does not
consider printable and cannot hold `\"\"\"`: such text is refused instead of silently changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pacos.errors import PacosError
from pacos.fileio import atomic_open

# `pacos chat`'s sampling defaults, so `ollama run` answers the way `pacos chat` does.
CHAT_PARAMETERS = {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "repeat_penalty": 1.1}
# Ollama reserves the KV cache for the whole num_ctx when it loads a model: the model's context, capped.
MAX_NUM_CTX = 4096


@dataclass(frozen=True)
class OllamaPrompt:
    """What the Modelfile says about prompts: the Go TEMPLATE, stop strings, a default SYSTEM prompt."""

    family: str  # alpaca, alpaca-zh, chatml, gemma
    template: str
    stops: tuple[str, ...]
    system: str | None = None  # the chat template's default system prompt, when it has one
    bos: str | None = None  # the BOS text pacos puts first (its tokenizer's, or written by the chat template)


# --- the families ------------------------------------------------------------------------------------------
# Each as a Python rendering (to compare the tokenizer's chat template with) and the same as a Go template.

_CHATML_GO = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

_GEMMA_GO = """{{- $system := .System }}
{{- range .Messages }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}
{{- end }}<start_of_turn>model
"""


def _chatml(messages: list[dict[str, str]], system: str | None) -> str:
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def _gemma(messages: list[dict[str, str]], system: str | None) -> str:
    prefix = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    out = ""
    for m in messages:
        if m["role"] == "user":
            head = f"{prefix}\n\n" if prefix else ""
            out += f"<start_of_turn>user\n{head}{m['content']}<end_of_turn>\n"
            prefix = ""
        elif m["role"] == "assistant":
            out += f"<start_of_turn>model\n{m['content']}<end_of_turn>\n"
    return out + "<start_of_turn>model\n"


@dataclass(frozen=True)
class _Family:
    name: str
    render: Callable[[list[dict[str, str]], str | None], str]
    go_template: str
    stops: tuple[str, ...]
    system_prefix: str | None  # how a rendering starts with a default system prompt (None: never has one)
    system_suffix: str = ""


FAMILIES = (
    _Family(
        name="chatml",
        render=_chatml,
        go_template=_CHATML_GO,
        stops=("<|im_end|>", "<|im_start|>"),
        system_prefix="<|im_start|>system\n",
        system_suffix="<|im_end|>\n",
    ),
    _Family(
        name="gemma",
        render=_gemma,
        go_template=_GEMMA_GO,
        stops=("<end_of_turn>", "<start_of_turn>"),
        system_prefix=None,
    ),
)

# Conversations the chat template renders to show its family: with and without a system prompt, one turn
# and several (earlier answers filled in), contents on more than one line.
_SYSTEM = {"role": "system", "content": "You answer in one short sentence."}
_TURNS = [
    {"role": "user", "content": "Name a primary color."},
    {"role": "assistant", "content": "Red is one.\nBlue is another."},
    {"role": "user", "content": "And a secondary one?"},
]
PROBES = ([_TURNS[0]], [_SYSTEM, _TURNS[0]], _TURNS, [_SYSTEM, *_TURNS])


def _render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # e.g. a template that refuses the system role: that probe tells nothing
        return None


def _match(family: _Family, renderings: list[str | None], lead: str) -> OllamaPrompt | None:
    """The family's prompt settings if the renderings are its own, after `lead` (a BOS the template
    writes first, or "")."""
    if renderings[0] is None or renderings[2] is None:  # conversations without a system prompt must render
        return None
    if any(r is not None and not r.startswith(lead) for r in renderings):
        return None
    texts = [r[len(lead) :] if r is not None else None for r in renderings]
    system = None
    if family.system_prefix is not None and texts[0].startswith(family.system_prefix):
        plain = family.render([_TURNS[0]], None)
        head = texts[0][: len(texts[0]) - len(plain)]
        if texts[0].endswith(plain) and head.endswith(family.system_suffix):
            system = head[len(family.system_prefix) : len(head) - len(family.system_suffix)]
    for probe, text in zip(PROBES, texts):
        if text is not None and text != family.render(list(probe), system):
            return None
    return OllamaPrompt(
        family=family.name, template=family.go_template, stops=family.stops, system=system, bos=lead or None
    )


def _chat_prompt(tokenizer: Any) -> OllamaPrompt:
    renderings = [_render_chat(tokenizer, list(p)) for p in PROBES]
    bos = getattr(tokenizer, "bos_token", None)
    # Without a BOS first, then with one: SmolLM2's "BOS" is <|im_start|>, which starts every ChatML turn.
    for lead in ["", bos] if bos else [""]:
        for family in FAMILIES:
            found = _match(family, renderings, lead)
            if found is not None:
                return found
    raise PacosError(
        "cannot write an Ollama TEMPLATE for this chat template; pacos writes ChatML (SmolLM2, Qwen) and "
        "Gemma turns, and this template renders neither (export --format gguf and write the Modelfile's "
        "TEMPLATE by hand)"
    )


def _alpaca_prompt(name: str, tokenizer: Any) -> OllamaPrompt:
    from pacos.data.templates import PromptTemplate, get_template
    from pacos.infer.prompting import turn_stops

    chosen = get_template(name)
    assert isinstance(chosen, PromptTemplate)
    # The parts pacos.data.turns joins a conversation from: the preamble, and the text around an instruction.
    preamble, rest = chosen.prompt_no_input.split("\n\n", 1)
    head, tail = rest.split("{instruction}")
    eos = getattr(tokenizer, "eos_token", None) or ""
    if any("{{" in part for part in (preamble, head, tail, eos)):
        raise PacosError(f"template '{name}': its text holds '{{{{', which a Go template would read as code")
    # Text exactly as written, no trim markers in it: Go would trim whitespace the prompt must keep.
    template = (
        f"{{{{ if .System }}}}{{{{ .System }}}}{{{{ else }}}}{preamble}{{{{ end }}}}"
        f'{{{{ range .Messages }}}}{{{{ if eq .Role "user" }}}}\n\n{head}{{{{ .Content }}}}{tail}'
        f'{{{{ else if eq .Role "assistant" }}}}{{{{ .Content }}}}{eos}{{{{ end }}}}{{{{ end }}}}'
    )
    bos_id = getattr(tokenizer, "bos_token_id", None)
    adds_bos = bos_id is not None and tokenizer("a").input_ids[:1] == [bos_id]
    stops = tuple(dict.fromkeys([*([eos] if eos else []), *turn_stops(name)]))
    return OllamaPrompt(
        family=name, template=template, stops=stops, bos=tokenizer.bos_token if adds_bos else None
    )


def ollama_prompt(template: str, tokenizer: Any) -> OllamaPrompt:
    """The Modelfile's prompt settings for a model that pacos prompts with `template` (a name of
    pacos.data.templates) and `tokenizer`."""
    if template == "chat":
        found = _chat_prompt(tokenizer)
        eos = getattr(tokenizer, "eos_token", None)
        stops = tuple(dict.fromkeys([*found.stops, *([eos] if eos else [])]))
        return replace(found, stops=stops)
    return _alpaca_prompt(template, tokenizer)


# --- the Modelfile -----------------------------------------------------------------------------------------


def _quoted(value: str, what: str) -> str:
    """`value` as Ollama's parser reads it back unchanged (parser/parser.go ParseFile)."""
    if '"""' in value:
        raise PacosError(f'{what} holds """, which a Modelfile cannot quote')
    odd = next((c for c in value if not (c.isprintable() or c in "\n\t")), None)
    if odd is not None:
        raise PacosError(f"{what} holds U+{ord(odd):04X}, a character Ollama's Modelfile parser drops")
    return f'"""{value}"""' if "\n" in value or '"' in value else f'"{value}"'


def modelfile_text(
    prompt: OllamaPrompt,
    gguf_file: str,
    *,
    gguf_adds_bos: bool,
    context_length: int | None,
    source: str = "",
) -> str:
    """The Modelfile: FROM the GGUF beside it, TEMPLATE, SYSTEM (only a chat template's default), stops
    and `pacos chat`'s sampling parameters."""
    template = prompt.template
    if prompt.bos and not gguf_adds_bos:  # pacos sends BOS and llama.cpp would not add it: write it
        template = prompt.bos + template
    lines = [
        f"# Ollama Modelfile written by pacos export{f' from {source}' if source else ''} "
        f"(prompt format: {prompt.family}).",
        "# ollama create NAME -f Modelfile && ollama run NAME",
        f"FROM ./{gguf_file}",
        f"TEMPLATE {_quoted(template, 'the TEMPLATE')}",
    ]
    if prompt.system:
        lines.append(f"SYSTEM {_quoted(prompt.system, 'the default system prompt')}")
    lines += [f"PARAMETER stop {_quoted(stop, f'the stop string {stop!r}')}" for stop in prompt.stops]
    lines += [f"PARAMETER {name} {value}" for name, value in CHAT_PARAMETERS.items()]
    if context_length:
        lines.append(f"PARAMETER num_ctx {min(context_length, MAX_NUM_CTX)}")
    return "\n".join(lines) + "\n"


def _gguf_facts(path: Path) -> tuple[bool, int | None]:
    """(whether llama.cpp puts BOS before a prompt, the context length) from the GGUF's metadata."""
    import gguf

    reader = gguf.GGUFReader(path)
    add_bos = reader.fields.get("tokenizer.ggml.add_bos_token")
    context = next((f for key, f in reader.fields.items() if key.endswith(".context_length")), None)
    return (
        bool(add_bos.contents()) if add_bos is not None else False,
        int(context.contents()) if context is not None else None,
    )


@dataclass(frozen=True)
class OllamaExport:
    gguf: Path
    modelfile: Path
    prompt: OllamaPrompt
    note: str | None  # something the user should know (a BOS the GGUF adds that pacos chat does not send)


def model_prompt(spec: str, template: str | None = None, base: str | None = None) -> tuple[str, Any]:
    """(the template name pacos prompts the model with, its tokenizer), as `pacos chat` picks them."""
    from pacos.infer.loading import pick_template
    from pacos.models import base_model_of, load_tokenizer

    path = Path(spec)
    try:
        tokenizer = load_tokenizer(spec)
    except PacosError:
        if not (path / "adapter_config.json").exists():
            raise
        tokenizer = load_tokenizer(base or base_model_of(path))  # an adapter saved without its tokenizer
    return pick_template(spec, tokenizer, template), tokenizer


def export_ollama(
    model: str,
    out_dir: str | Path,
    outtype: str = "q8_0",
    base: str | None = None,
    template: str | None = None,
) -> OllamaExport:
    """Write `<model>-<outtype>.gguf` and a Modelfile into `out_dir` (created if missing; other files there
    stay). The prompt format is checked before the GGUF is written: a template pacos cannot express in
    Go fails in a second, not after minutes of conversion."""
    from pacos.export.gguf import OUTTYPES, export_gguf

    if outtype not in OUTTYPES:
        raise PacosError(f"unknown GGUF outtype '{outtype}'; choose one of {', '.join(OUTTYPES)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PacosError(f"{out_dir}: --format ollama writes a directory (the GGUF file and its Modelfile)")
    name, tokenizer = model_prompt(model, template, base)
    prompt = ollama_prompt(name, tokenizer)
    stem = (Path(model.rstrip("/\\")).name or "model").removesuffix(".gguf")
    stem = re.sub(r"[^\w.+-]+", "-", stem).strip("-.") or "model"  # a plain FROM path
    out_dir.mkdir(parents=True, exist_ok=True)
    gguf_path = export_gguf(model, out_dir / f"{stem}-{outtype}.gguf", outtype, base)
    adds_bos, context = _gguf_facts(gguf_path)
    text = modelfile_text(
        prompt, gguf_path.name, gguf_adds_bos=adds_bos, context_length=context, source=model
    )
    modelfile = out_dir / "Modelfile"
    with atomic_open(modelfile) as f:
        f.write(text)
    note = None
    if adds_bos and not prompt.bos:
        note = (
            "the GGUF asks llama.cpp to put BOS before every prompt, which pacos chat does not send with "
            "this chat template"
        )
    return OllamaExport(gguf_path, modelfile, prompt, note)
