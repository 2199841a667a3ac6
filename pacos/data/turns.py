"""Conversations: the turns of a multi-turn record, rendered for training and for chat alike.

A multi-turn record keeps its whole conversation in `messages` (system?, user, assistant, user, ...);
its `instruction` and `output` are the first question and the last answer, so the data tools (stats,
dedup, contamination) still see what it is about. Training needs the rendered text cut into pieces the
model reads (prompts) and pieces it learns (each answer and its end-of-turn token), and inference needs
the same text up to the next answer: both come from `segments()`.

- The Alpaca template extended to turns: the preamble (or the system message) once, then per turn
  `### Instruction:` / `### Response:` blocks, each answer closed by EOS as single-turn Alpaca data is,
  so the model learns to stop after every answer and reads its history the way it was trained.
- A chat template: the conversation is rendered prefix by prefix with the template itself (never by
  splitting strings by hand): the text of the first i messages with the generation prompt, then with
  answer i, and so on. A template whose renderings are not prefixes of each other (one that rewrites
  earlier turns) cannot be cut into turns: a clear error rather than wrong labels.
"""

from __future__ import annotations

from typing import Any

from pacos.data.records import Record
from pacos.data.templates import PromptTemplate, get_template
from pacos.errors import PacosError

ROLES = ("system", "user", "assistant")


def conversation_of(record: Record) -> list[dict[str, str]] | None:
    """The record's turns when it is a multi-turn conversation, else None (a plain instruction record)."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise PacosError(
                f"field 'messages[{i}]': expected {{'role': system|user|assistant, 'content': string}}"
            )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _alpaca_parts(template: PromptTemplate) -> tuple[str, str, str]:
    """(preamble, text before the instruction, text after it) of an Alpaca-style template."""
    preamble, rest = template.prompt_no_input.split("\n\n", 1)
    head, tail = rest.split("{instruction}")
    return preamble, head, tail


def _alpaca_segments(
    messages: list[dict[str, str]], template: PromptTemplate, eos: str
) -> list[tuple[str, bool]]:
    preamble, head, tail = _alpaca_parts(template)
    system = " ".join(m["content"] for m in messages if m["role"] == "system")
    out: list[tuple[str, bool]] = []
    pending = system or preamble  # prompt text not yet emitted
    for m in messages:
        if m["role"] == "user":
            pending += f"\n\n{head}{m['content']}{tail}"
        elif m["role"] == "assistant":
            out += [(pending, False), (m["content"] + eos, True)]
            pending = ""
    if pending:
        out.append((pending, False))
    return out


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as e:  # the template's own checks ("roles must alternate") are the data's to fix
        raise PacosError(f"the chat template cannot render this conversation: {e}") from None


def _chat_segments(messages: list[dict[str, str]], tokenizer: Any) -> list[tuple[str, bool]]:
    if not getattr(tokenizer, "chat_template", None):
        raise PacosError("template 'chat' needs a tokenizer that has a chat template")
    out: list[tuple[str, bool]] = []
    done = ""  # the text rendered so far
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], True)
        full = _render(tokenizer, messages[: i + 1], False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise PacosError(
                f"the chat template cannot be split into turns: rendering the first {i + 1} messages does "
                "not extend the rendering of the first "
                f"{i} (the template rewrites earlier turns); train with template 'alpaca' instead"
            )
        out += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    if messages[-1]["role"] != "assistant":
        prompt = _render(tokenizer, messages, True)
        if not prompt.startswith(done):
            raise PacosError("the chat template cannot be split into turns: it rewrites earlier turns")
        out.append((prompt[len(done) :], False))
    return [(text, label) for text, label in out if text or label]


def segments(messages: list[dict[str, str]], template: str, tokenizer: Any) -> list[tuple[str, bool]]:
    """The conversation's text in order, each piece marked True where it is an answer to learn (its
    end-of-turn token included). Concatenated, the pieces are the text the model sees."""
    if template == "chat":
        return _chat_segments(messages, tokenizer)
    chosen = get_template(template)
    if not isinstance(chosen, PromptTemplate):
        raise PacosError(f"template '{template}' cannot render a conversation")
    eos = (getattr(tokenizer, "eos_token", None) or "") if tokenizer is not None else ""
    return _alpaca_segments(messages, chosen, eos)


def conversation_prompt(messages: list[dict[str, str]], template: str, tokenizer: Any) -> str:
    """The text a model reads before answering the last user message: the earlier answers written as
    in training (each closed by EOS in the Alpaca template)."""
    if template == "chat":
        return _render(tokenizer, messages, True)
    return "".join(text for text, _ in segments(messages, template, tokenizer))


def record_prompt(record: Record, template: str, tokenizer: Any) -> str:
    """The prompt that asks for a record's `output`: for a conversation, every turn before its last
    answer (so the answer is judged in its context); else the record's instruction in the template."""
    from pacos.data.templates import render_prompt

    messages = conversation_of(record)
    if messages is None:
        return render_prompt(record, template, tokenizer)
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return conversation_prompt(messages, template, tokenizer)
