"""Preference data: pairs of answers to one prompt, the better one first, in the formats people have.

Every format becomes a pair record `{"instruction", "input", "chosen", "rejected"}` (plus `metadata`,
and whatever scores the source carried), rendered with the training template like any instruction
record, or an unpaired KTO record `{"instruction", "input", "output", "label"}`. Read:

- pacos / LLaMA-Factory: `instruction` (+ `input`), `chosen`, `rejected` strings;
- TRL standard: `prompt`, `chosen`, `rejected` strings (the prompt is the instruction);
- TRL conversational: `prompt` a message list, `chosen` / `rejected` one-message assistant lists;
- UltraFeedback-binarized and TRL's implicit prompt: `chosen` / `rejected` whole conversations that
  share their prompt turns (a `prompt` string beside them is ignored);
- Anthropic HH: `chosen` / `rejected` transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...") that share
  everything up to the last assistant turn;
- TRL unpaired (KTO): `prompt`, `completion` (string or messages) and a boolean `label`.

A prompt with earlier turns keeps them: the last user turn is the instruction and the conversation before
it goes into `input` ("User: ..." / "Assistant: ..."), never silently dropped; the answers compared must
be one assistant turn each. `to_trl` writes TRL's conversational format.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pacos.data.io import Problem, iter_rows
from pacos.data.records import type_name
from pacos.errors import PacosError

_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
_ROLES |= {"model": "assistant", "bot": "assistant"}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")


class PairError(ValueError):
    """One row that is not a preference pair; the message names the field."""


def _text(raw: dict[str, Any], field: str) -> str:
    value = raw.get(field)
    if not isinstance(value, str):
        raise PairError(f"field '{field}': expected a string, got {type_name(value)}")
    return value


def _messages(value: Any, field: str) -> list[dict[str, str]]:
    """A message list with roles normalised (OpenAI `role/content` or ShareGPT `from/value`)."""
    if not isinstance(value, list) or not value:
        raise PairError(f"field '{field}': expected a non-empty list of messages, got {type_name(value)}")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise PairError(f"field '{field}[{i}]': expected an object, got {type_name(turn)}")
        role = _ROLES.get(str(turn.get("role", turn.get("from", ""))).lower())
        content = turn.get("content", turn.get("value"))
        if role is None:
            raise PairError(f"field '{field}[{i}]': unknown role {turn.get('role', turn.get('from'))!r}")
        if not isinstance(content, str):
            raise PairError(f"field '{field}[{i}].content': expected a string, got {type_name(content)}")
        out.append({"role": role, "content": content})
    return out


def _hh_messages(transcript: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(transcript, str):
        raise PairError(f"field '{field}': expected an HH transcript string, got {type_name(transcript)}")
    parts = _HH_TURN.split(transcript)
    if len(parts) < 3 or parts[0].strip():
        raise PairError(f"field '{field}': not an HH transcript ('\\n\\nHuman: ... \\n\\nAssistant: ...')")
    return [
        {"role": "user" if who == "Human" else "assistant", "content": text}
        for who, text in zip(parts[1::2], parts[2::2])
    ]


def _prompt_fields(messages: list[dict[str, str]], field: str) -> dict[str, Any]:
    """instruction / input / metadata of a prompt that ends with a user turn."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if not turns or turns[-1]["role"] != "user":
        raise PairError(f"field '{field}': the prompt must end with a user turn")
    history = turns[:-1]
    fields: dict[str, Any] = {
        "instruction": turns[-1]["content"],
        "input": "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in history),
    }
    metadata = {}
    if system:
        metadata["system"] = "\n\n".join(system)
    if history:
        metadata["history_turns"] = len(history)
    if metadata:
        fields["metadata"] = metadata
    return fields


def _answer(messages: list[dict[str, str]], field: str) -> str:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages)
        raise PairError(
            f"field '{field}': the answer must be one assistant turn after the prompt (found: {roles})"
        )
    return messages[0]["content"]


def _split_shared(chosen: list[dict[str, str]], rejected: list[dict[str, str]]) -> tuple[list, list, list]:
    """(prompt, chosen's answer, rejected's answer) of two conversations sharing their prompt turns: the
    prompt ends at the last user turn the two have in common."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared > 0 and chosen[shared - 1]["role"] != "user":
        shared -= 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def normalize_pair(raw: Any) -> dict[str, Any]:
    """One row of any supported format as a pair (or unpaired KTO) record; PairError names the field."""
    if not isinstance(raw, dict):
        raise PairError(f"expected an object with chosen/rejected answers, got {type_name(raw)}")
    extra = {k: v for k, v in raw.items() if k not in ("prompt", "chosen", "rejected", "instruction", "input",
                                                       "completion", "label", "messages")}  # fmt: skip
    if "completion" in raw or "label" in raw:  # TRL unpaired (KTO)
        if not isinstance(raw.get("label"), bool):
            raise PairError(f"field 'label': expected true or false, got {type_name(raw.get('label'))}")
        prompt = raw.get("prompt")
        fields = (
            _prompt_fields(_messages(prompt, "prompt"), "prompt")
            if isinstance(prompt, list)
            else {"instruction": _text(raw, "prompt"), "input": ""}
        )
        completion = raw.get("completion")
        output = (
            _answer(_messages(completion, "completion"), "completion")
            if isinstance(completion, list)
            else _text(raw, "completion")
        )
        return {**extra, **fields, "output": output, "label": raw["label"]}
    for field in ("chosen", "rejected"):
        if field not in raw:
            raise PairError(f"missing field '{field}'")
    chosen, rejected = raw["chosen"], raw["rejected"]
    if "instruction" in raw:  # pacos / LLaMA-Factory
        fields = {"instruction": _text(raw, "instruction"), "input": raw.get("input") or ""}
        if not isinstance(fields["input"], str):
            raise PairError(f"field 'input': expected a string, got {type_name(raw['input'])}")
        return {**extra, **fields, "chosen": _text(raw, "chosen"), "rejected": _text(raw, "rejected")}
    prompt = raw.get("prompt")
    if isinstance(prompt, list):  # TRL conversational, explicit prompt
        fields = _prompt_fields(_messages(prompt, "prompt"), "prompt")
        return {**extra, **fields, "chosen": _answer(_messages(chosen, "chosen"), "chosen"),
                "rejected": _answer(_messages(rejected, "rejected"), "rejected")}  # fmt: skip
    whole = None
    if isinstance(chosen, list) or isinstance(rejected, list):  # UltraFeedback / implicit prompt
        whole = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        if prompt is not None:
            extra["prompt"] = prompt
    elif prompt is None and isinstance(chosen, str) and chosen.startswith("\n\nHuman:"):  # Anthropic HH
        whole = _hh_messages(chosen, "chosen"), _hh_messages(rejected, "rejected")
    if whole is not None:
        turns, answer_c, answer_r = _split_shared(*whole)
        return {**extra, **_prompt_fields(turns, "chosen"), "chosen": _answer(answer_c, "chosen"),
                "rejected": _answer(answer_r, "rejected")}  # fmt: skip
    if prompt is None:
        raise PairError("missing field 'prompt' (or 'instruction')")
    return {**extra, "instruction": _text(raw, "prompt"), "input": "",
            "chosen": _text(raw, "chosen"), "rejected": _text(raw, "rejected")}  # fmt: skip


def read_pairs(source: str | Path) -> list[dict[str, Any]]:
    """Every row of a file, dataset directory or hub id as a pair record; the first bad row raises a
    one-line PacosError naming its file, line and field."""
    pairs = []
    for item in iter_rows(source):
        if isinstance(item, Problem):
            raise PacosError(str(item))
        try:
            pair = normalize_pair(item.raw)
        except PairError as e:
            raise PacosError(f"{item.where}: {e}") from None
        if "chosen" in pair and not pair["chosen"].strip():
            raise PacosError(f"{item.where}: field 'chosen': the preferred answer is empty")
        pairs.append(pair)
    if not pairs:
        raise PacosError(f"{source}: no preference pairs")
    return pairs


def is_pair(record: dict[str, Any]) -> bool:
    return "chosen" in record and "rejected" in record


def to_trl(pair: dict[str, Any]) -> dict[str, Any]:
    """TRL's conversational preference format (prompt messages, one-turn chosen / rejected)."""
    system = (pair.get("metadata") or {}).get("system")
    user = pair["instruction"] if not pair.get("input") else f"{pair['instruction']}\n\n{pair['input']}"
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    out = {"prompt": prompt}
    if is_pair(pair):
        out["chosen"] = [{"role": "assistant", "content": pair["chosen"]}]
        out["rejected"] = [{"role": "assistant", "content": pair["rejected"]}]
    else:
        out["completion"] = [{"role": "assistant", "content": pair["output"]}]
        out["label"] = pair["label"]
    return out
