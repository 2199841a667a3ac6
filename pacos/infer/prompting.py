"""Chat messages to the prompt a model was trained on.

Chat models (a tokenizer chat template) get their own template. Models tuned with the Alpaca template
get Alpaca blocks: the preamble once, then `### Instruction:` / `### Response:` per turn, with earlier
answers filled in and closed by EOS, so a conversation reads the way multi-turn training data does
(pacos.data.turns). A system message replaces the preamble, as it does in the chat templates.
"""

from __future__ import annotations

from typing import Any

from pacos.data.templates import ALPACA, ALPACA_ZH
from pacos.data.turns import ROLES, conversation_prompt
from pacos.errors import PacosError


def content_text(content: Any, where: str) -> str:
    """A message's content: a string, or OpenAI content parts of type text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise PacosError(f"{where}: only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise PacosError(f"{where}: content must be a string or a list of text parts")


def check_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    if not messages:
        raise PacosError("messages: at least one message is needed")
    clean = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise PacosError(f"messages[{i}].role: must be one of {', '.join(ROLES)}, got {role!r}")
        clean.append(
            {"role": role, "content": content_text(message.get("content"), f"messages[{i}].content")}
        )
    if clean[-1]["role"] == "assistant":
        raise PacosError("messages: the last message must come from the user (or system), not the assistant")
    return clean


def chat_prompt(messages: list[dict[str, Any]], template: str, tokenizer: Any) -> str:
    return conversation_prompt(check_messages(messages), template, tokenizer)


def turn_stops(template: str) -> list[str]:
    """Strings that end an answer: a model that starts writing the next instruction has finished."""
    if template == "chat":
        return []
    marker = {ALPACA.name: "### Instruction:", ALPACA_ZH.name: "### 指令："}.get(template)
    return [f"\n{marker}"] if marker else []
