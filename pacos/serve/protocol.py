"""Request bodies of the OpenAI API that `pacos serve` answers, as pydantic models.

Field names, defaults and ranges follow OpenAI's, so the official clients work unchanged. Unknown fields
are ignored (clients send many). Fields whose meaning pacos cannot honour (suffix, logit_bias, tools,
non-zero presence/frequency penalties, schema keywords the JSON grammar cannot enforce, a streamed echo)
are rejected with a 400 rather than silently ignored, so a client never trusts an answer that did not
follow its request.

Python's json module, which parses the body, reads the non-standard literals NaN, Infinity and -Infinity
(and 1e999 as infinity); a non-finite number in any field is a 400 naming that field.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from pacos.infer.constrain import ANY_OBJECT

MAX_N = 16  # choices per request: each is a sequence in the batch, so this bounds one request's share
MAX_STOPS = 4  # OpenAI's limit
# The empty schema {} accepts any JSON value; spelled out, since an empty dict reads as "no schema".
ANY_VALUE: dict[str, Any] = {"type": ["null", "boolean", "object", "array", "number", "string"]}


def _first_bad(value: Any, bad: Callable[[Any], bool], path: str = "") -> str | None:
    """The path of the first leaf of a JSON value for which `bad` holds; None when there is none."""
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return path if bad(value) else None
    return next((found for key, v in items if (found := _first_bad(v, bad, key)) is not None), None)


def lone_surrogate(value: Any, path: str = "") -> str | None:
    """Where a string in a JSON value holds a lone surrogate ("\\ud800"): JSON allows the escape, but it is
    not Unicode text, and tokenizers fail on it. None when there is none."""
    return _first_bad(
        value,
        lambda v: isinstance(v, str) and not v.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in v),
        path,
    )


def non_finite(value: Any, path: str = "") -> str | None:
    """Where a JSON value holds NaN or an infinity (json.loads reads NaN, Infinity, -Infinity, 1e999).
    None when there is none."""
    return _first_bad(value, lambda v: isinstance(v, float) and not math.isfinite(v), path)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class _Common(BaseModel):
    """Fields both endpoints share."""

    # allow_inf_nan: a second line behind _finite, for any float field it might miss.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = None  # OpenAI requires it; pacos serves one model, so a missing one means that one
    temperature: float | None = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    # Booleans are strict: "stream": "yes" or 1 is a 400, as OpenAI answers, not a guess.
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(0.0, ge=-2, le=2)
    frequency_penalty: float | None = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # pacos extras (vLLM names)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: StrictBool = False
    response_format: dict[str, Any] | None = None  # text, json_object, or json_schema (vLLM takes it on both)
    # vLLM's: each choice also carries its prompt's and its answer's token ids (no logprobs needed for them).
    return_token_ids: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        where = lone_surrogate(data)
        if where:
            raise ValueError(
                f"{where}: holds a lone surrogate (an unpaired \\ud800-\\udfff escape), not Unicode text"
            )
        return data

    @model_validator(mode="before")
    @classmethod
    def _finite(cls, data: Any) -> Any:
        """NaN or an infinity in a field is refused before the range checks, which would call NaN "not
        less than or equal to 2" and let Infinity through an open range (repetition_penalty > 0).
        Unknown fields are ignored, their values too."""
        if isinstance(data, dict):
            where = non_finite({k: v for k, v in data.items() if k in cls.model_fields})
            if where:
                raise ValueError(f"{where}: must be a finite number")
        return data

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        return [s for s in stops if s]  # an empty stop string would end every answer at once

    @model_validator(mode="after")
    def _unsupported(self) -> _Common:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ValueError(f"{name}: only 0 is supported; use repetition_penalty")
        if self.logit_bias:
            raise ValueError("logit_bias: not supported")
        return self

    @field_validator("response_format")
    @classmethod
    def _format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        kind = (value or {}).get("type", "text")
        if kind not in ("text", "json_object", "json_schema"):
            raise ValueError(f"response_format: type '{kind}' is not one of text, json_object, json_schema")
        if kind == "json_schema":
            spec = value.get("json_schema")  # type: ignore[union-attr]
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise ValueError("response_format: json_schema.schema must be a JSON schema object")
        return value

    def json_schema(self) -> dict[str, Any] | None:
        """The schema the answer must follow, or None for free text."""
        kind = (self.response_format or {}).get("type", "text")
        if kind == "json_object":
            return ANY_OBJECT
        if kind == "json_schema":
            schema = self.response_format["json_schema"]["schema"]  # type: ignore[index]
            return schema or ANY_VALUE  # {}: any JSON value, not free text
        return None

    def stop_list(self) -> list[str]:
        return list(self.stop or [])  # type: ignore[arg-type]  # the validator made it a list


class CompletionRequest(_Common):
    """POST /v1/completions (the legacy text completion API)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default; null: up to the context length
    logprobs: int | None = Field(None, ge=0, le=5)
    # The prompt before the answer; with logprobs, the prompt tokens' log-probs too (the first null), which
    # is how lm-evaluation-harness's `local-completions` scores continuations (max_tokens 0 or 1).
    echo: StrictBool = False
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None

    @model_validator(mode="after")
    def _completion_only(self) -> CompletionRequest:
        if self.echo and self.stream:
            raise ValueError("echo: not supported with stream; send stream: false")
        if self.suffix:
            raise ValueError("suffix: not supported")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of: only best_of == n is supported")
        return self


class ChatCompletionRequest(_Common):
    """POST /v1/chat/completions."""

    # Checked by the engine's prompt builder, which names the offending field (messages[2].role).
    messages: list[dict[str, Any]]
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)  # OpenAI's newer name; wins over max_tokens
    logprobs: StrictBool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any = None

    @model_validator(mode="after")
    def _chat_only(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs set to true")
        if self.tools:
            raise ValueError("tools: tool calling is not supported")
        return self

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
