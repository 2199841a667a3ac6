"""Prompt templates, selectable by name.

`alpaca` is byte-identical to the Stanford Alpaca training prompt, so a model tuned with pacos answers
the prompts every Alpaca-trained model expects (and vice versa). `alpaca-zh` is a Chinese rendering of
the same structure. `chat` renders through the tokenizer's own chat template, for chat models.
Training joins prompt and response as Alpaca did: `prompt + output + EOS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pacos.data.records import Record
from pacos.errors import PacosError


@dataclass(frozen=True)
class PromptTemplate:
    """A plain-text template with one form for records with an input and one for records without."""

    name: str
    description: str
    prompt_input: str
    prompt_no_input: str

    def prompt(self, record: Record, tokenizer: Any = None) -> str:
        if record.get("input"):
            return self.prompt_input.format(instruction=record["instruction"], input=record["input"])
        return self.prompt_no_input.format(instruction=record["instruction"])


ALPACA = PromptTemplate(
    name="alpaca",
    description="Stanford Alpaca's training prompt (English)",
    prompt_input=(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    prompt_no_input=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
)

ALPACA_ZH = PromptTemplate(
    name="alpaca-zh",
    description="The Alpaca prompt in Chinese, same structure",
    prompt_input=(
        "以下是一条描述任务的指令，以及一段提供更多背景信息的输入。请写出恰当完成该请求的回答。\n\n"
        "### 指令：\n{instruction}\n\n### 输入：\n{input}\n\n### 回答："
    ),
    prompt_no_input=(
        "以下是一条描述任务的指令。请写出恰当完成该请求的回答。\n\n### 指令：\n{instruction}\n\n### 回答："
    ),
)


@dataclass(frozen=True)
class ChatTemplate:
    """The tokenizer's own chat template: one user turn (instruction, then input), optional system turn."""

    name: str = "chat"
    description: str = "the tokenizer's chat template (for chat/instruct models)"

    @staticmethod
    def messages(record: Record) -> list[dict[str, str]]:
        user = (
            record["instruction"]
            if not record.get("input")
            else f"{record['instruction']}\n\n{record['input']}"
        )
        system = (record.get("metadata") or {}).get("system")
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]

    def prompt(self, record: Record, tokenizer: Any = None) -> str:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise PacosError(
                "template 'chat' needs a tokenizer that has a chat template "
                "(use template 'alpaca' for base models)"
            )
        return tokenizer.apply_chat_template(
            self.messages(record), tokenize=False, add_generation_prompt=True
        )


TEMPLATES: dict[str, PromptTemplate | ChatTemplate] = {t.name: t for t in (ALPACA, ALPACA_ZH, ChatTemplate())}


def get_template(name: str) -> PromptTemplate | ChatTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise PacosError(f"unknown template '{name}' (available: {', '.join(TEMPLATES)})") from None


def render_prompt(record: Record, template: str = "alpaca", tokenizer: Any = None) -> str:
    """The prompt text a model sees for this record (the response follows it directly)."""
    return get_template(template).prompt(record, tokenizer)
