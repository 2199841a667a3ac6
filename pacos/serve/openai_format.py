"""OpenAI's response shapes: usage, logprobs in both APIs' formats, server-sent events."""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any

from fastapi.responses import StreamingResponse

from pacos.infer.sampling import TokenLogprob

UNLIKELY = -9999.0  # OpenAI's logprob for "practically impossible"; JSON has no -inf


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


DONE = "data: [DONE]\n\n"


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else UNLIKELY


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class TokenText:
    """A token's text and bytes for logprobs, cached: the same few thousand tokens come back constantly."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.text = lru_cache(maxsize=65536)(self._text)
        self.bytes = lru_cache(maxsize=65536)(self._bytes)

    def _text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _bytes(self, token_id: int) -> list[int]:
        text = self.text(token_id)
        if "\ufffd" not in text:
            return list(text.encode("utf-8"))
        # Part of a character: its real bytes come from the token itself (byte fallback or byte-level BPE).
        piece = self.tokenizer.convert_ids_to_tokens(token_id) or ""
        if match := re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece):
            return [int(match[1], 16)]
        table = _byte_level_table()
        if piece and all(c in table for c in piece):
            return [table[c] for c in piece]
        return list(text.encode("utf-8"))


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def legacy_logprobs(
    tokens: TokenText, entries: list[TokenLogprob], offset: int, first: int | None = None
) -> dict[str, Any]:
    """The completions API's format; each top dict also holds the chosen token, as OpenAI's does.
    `first`: an echoed prompt's first token, which nothing predicts: null log-prob and top entry, as
    OpenAI and vLLM write it. text_offset adds up the tokens' texts, as vLLM does."""
    ids = ([] if first is None else [first]) + [lp.token_id for lp in entries]
    texts = [tokens.text(i) for i in ids]
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    unscored: list[None] = [] if first is None else [None]
    return {
        "tokens": texts,
        "token_logprobs": unscored + [_finite(lp.logprob) for lp in entries],
        "top_logprobs": unscored
        + [
            {
                **{tokens.text(i): _finite(v) for i, v in lp.top},
                tokens.text(lp.token_id): _finite(lp.logprob),
            }
            for lp in entries
        ],
        "text_offset": offsets,
    }


def chat_logprobs(tokens: TokenText, entries: list[TokenLogprob]) -> dict[str, Any]:
    def item(token_id: int, logprob: float) -> dict[str, Any]:
        return {
            "token": tokens.text(token_id),
            "logprob": _finite(logprob),
            "bytes": tokens.bytes(token_id),
        }

    content = [
        {**item(lp.token_id, lp.logprob), "top_logprobs": [item(i, v) for i, v in lp.top]} for lp in entries
    ]
    return {"content": content, "refusal": None}


def streaming(body: Any) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
