"""The instruction record and the conversions into it.

A record is a plain dict: `instruction` (non-empty), `input` ("" when there is none), `output`, and
optionally `id`, `source`, `metadata`. Other keys are kept as they are, so a round trip loses nothing.
Three other shapes are converted on load: Self-Instruct seed tasks (`instances`), and chats in OpenAI
(`messages`) or ShareGPT (`conversations`) form. A single-turn chat becomes a plain record; a longer one
keeps its turns in `messages` (role/content), its first question as `instruction` and its last answer
as `output` (pacos.data.turns).
"""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]

KNOWN_FIELDS = ("id", "instruction", "input", "output", "source", "metadata")

_ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}


class RecordError(Exception):
    """One or more problems with a single record; `problems` are 'field ...: message' strings."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def type_name(value: Any) -> str:
    """The JSON name of a Python value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_string(raw: dict, field: str, problems: list[str], *, required: bool, non_empty: bool) -> None:
    if field not in raw or (raw[field] is None and not required):
        if required:
            problems.append(f"field '{field}': required field is missing")
        return
    value = raw[field]
    if not isinstance(value, str):
        problems.append(f"field '{field}': expected a string, got {type_name(value)}")
    elif non_empty and not value.strip():
        problems.append(f"field '{field}': must not be empty")


def _plain(raw: dict, require_output: bool, allow_empty: bool = False) -> Record:
    problems: list[str] = []
    _check_string(raw, "instruction", problems, required=True, non_empty=not allow_empty)
    _check_string(raw, "input", problems, required=False, non_empty=False)
    _check_string(raw, "output", problems, required=require_output, non_empty=False)
    if "id" in raw and raw["id"] is not None and not isinstance(raw["id"], (str, int)):
        problems.append(f"field 'id': expected a string or integer, got {type_name(raw['id'])}")
    if "source" in raw and raw["source"] is not None and not isinstance(raw["source"], str):
        problems.append(f"field 'source': expected a string, got {type_name(raw['source'])}")
    if "metadata" in raw and raw["metadata"] is not None and not isinstance(raw["metadata"], dict):
        problems.append(f"field 'metadata': expected an object, got {type_name(raw['metadata'])}")
    if problems:
        raise RecordError(problems)
    record: Record = {}
    if raw.get("id") is not None:
        record["id"] = raw["id"]
    record["instruction"] = raw["instruction"]
    record["input"] = raw.get("input") or ""
    if raw.get("output") is not None:
        record["output"] = raw["output"]
    for key, value in raw.items():
        if key not in record and key not in ("id", "input", "output") and value is not None:
            record[key] = value
    return record


def _seed_task(raw: dict, require_output: bool, allow_empty: bool) -> list[Record]:
    """A Self-Instruct seed task: one record per instance."""
    instances = raw["instances"]
    if not isinstance(instances, list) or not instances:
        raise RecordError([f"field 'instances': expected a non-empty array, got {type_name(instances)}"])
    records = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise RecordError([f"field 'instances[{i}]': expected an object, got {type_name(instance)}"])
        merged = {"instruction": raw.get("instruction"), **instance}
        try:
            record = _plain(merged, require_output, allow_empty)
        except RecordError as e:
            raise RecordError([f"instances[{i}]: {p}" for p in e.problems]) from None
        metadata = {k: raw[k] for k in ("name", "is_classification") if k in raw}
        if metadata:
            record["metadata"] = {**record.get("metadata", {}), **metadata}
        if "id" in raw:
            record["id"] = raw["id"] if len(instances) == 1 else f"{raw['id']}-{i}"
        records.append(record)
    return records


def _chat(raw: dict, key: str, require_output: bool, allow_empty: bool) -> Record:
    """A chat: one user turn becomes a plain record (its system message in metadata); more turns
    become a multi-turn record that keeps them all in `messages` (pacos.data.turns)."""
    turns = raw[key]
    if not isinstance(turns, list) or not turns:
        raise RecordError([f"field '{key}': expected a non-empty array of messages, got {type_name(turns)}"])
    role_key, text_key = ("role", "content") if key == "messages" else ("from", "value")
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError([f"field '{key}[{i}]': expected an object, got {type_name(turn)}"])
        role = _ROLE_ALIASES.get(str(turn.get(role_key, turn.get("role", ""))).lower())
        text = turn.get(text_key, turn.get("content"))
        if role is None:
            raise RecordError([f"field '{key}[{i}].{role_key}': unknown role {turn.get(role_key)!r}"])
        if not isinstance(text, str):
            raise RecordError([f"field '{key}[{i}].{text_key}': expected a string, got {type_name(text)}"])
        messages.append({"role": role, "content": text})
    by_role = {r: [m["content"] for m in messages if m["role"] == r] for r in ("system", "user", "assistant")}
    system, user, assistant = by_role["system"], by_role["user"], by_role["assistant"]
    if not user:
        raise RecordError([f"field '{key}': a conversation needs a user turn"])
    rest = {k: v for k, v in raw.items() if k != key}
    if len(user) == 1 and len(assistant) <= 1:
        plain = {"instruction": user[0], "input": "", **rest}
        if assistant:
            plain["output"] = assistant[0]
        record = _plain(plain, require_output, allow_empty)
        if system:
            record["metadata"] = {**record.get("metadata", {}), "system": system[0]}
        return record
    _check_turn_order(messages, key)
    plain = {"instruction": user[0], "input": "", **rest}
    if messages[-1]["role"] == "assistant":
        plain["output"] = messages[-1]["content"]
    record = _plain(plain, require_output, allow_empty)
    record["messages"] = messages
    return record


def _check_turn_order(messages: list[dict[str, str]], key: str) -> None:
    """System messages first, then user and assistant turns taking turns, a user first."""
    expected = "user"
    for i, m in enumerate(messages):
        if m["role"] == "system":
            if any(p["role"] != "system" for p in messages[:i]):
                raise RecordError([f"field '{key}[{i}]': a system message must come before the turns"])
            continue
        if m["role"] != expected:
            raise RecordError(
                [
                    f"field '{key}[{i}]': expected {'an' if expected == 'assistant' else 'a'} "
                    f"{expected} turn (user and assistant turns alternate)"
                ]
            )
        expected = "assistant" if expected == "user" else "user"


def normalize(raw: Any, *, require_output: bool = True, allow_empty: bool = False) -> list[Record]:
    """Turn one raw row into records, or raise RecordError listing every problem found.

    `allow_empty` accepts empty instructions, for the cleaner, which drops them with a named rule.
    """
    if not isinstance(raw, dict):
        raise RecordError([f"expected an object with an 'instruction' field, got {type_name(raw)}"])
    if "instances" in raw:
        return _seed_task(raw, require_output, allow_empty)
    for key in ("messages", "conversations"):
        if key in raw and "instruction" not in raw:
            return [_chat(raw, key, require_output, allow_empty)]
    return [_plain(raw, require_output, allow_empty)]


def ordered(record: Record) -> Record:
    """The record with its known fields first, in a fixed order, for readable output files."""
    out = {k: record[k] for k in KNOWN_FIELDS if k in record}
    out.update((k, v) for k, v in record.items() if k not in out)
    return out
