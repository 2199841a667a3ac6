"""A model's answers to an instruction set: the pacos engine in-process, or any OpenAI-compatible endpoint.

Both render the same prompt (the model's template: the one it was trained with, else its chat template,
else Alpaca's) and ask for the same decoding, so a model answers the same through either path; the
endpoint gets the rendered text on /v1/completions, which `pacos serve` tokenizes exactly as training did.
Answers are cached on disk, keyed by the model's identity (its files' content, or the endpoint and
served name), the record and the decoding settings: a rerun costs nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from pacos.errors import PacosError
from pacos.fileio import KeyedCache
from pacos.models import model_identity


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 256
    temperature: float = 0.0  # greedy: comparable across runs and endpoints
    top_p: float = 1.0
    seed: int = 0
    # Local models only: quantize "fp16" decodes about 3x as fast on x86 CPUs, "bfloat16" about twice on
    # GPUs (pacos.infer.decoding_weights resolves "auto"); greedy answers can differ from float32's after
    # a near-tie, so both are part of the cache key.
    dtype: str = "float32"
    quantize: str = "none"


def _key(identity: str, template: str | None, record: dict[str, Any], decoding: Decoding) -> str:
    settings = asdict(decoding)
    if settings["dtype"] == "float32":
        del settings["dtype"]  # keys written before the dtype setting existed stay valid
    if settings["quantize"] == "none":
        del settings["quantize"]
    payload = [identity, template, record["instruction"], record.get("input") or "", settings]
    if record.get("messages"):  # a conversation is asked in its context (plain records' keys unchanged)
        payload.append(record["messages"])
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


def prompt_ids(engine: Any, records: list[dict[str, Any]]) -> list[list[int]]:
    """Each record's prompt in the engine's template, tokenized as in training: a chat template writes
    its own BOS, a plain template gets the tokenizer's."""
    from pacos.data.turns import record_prompt

    return [
        engine.tokenizer(
            record_prompt(r, engine.template, engine.tokenizer), add_special_tokens=engine.template != "chat"
        ).input_ids
        for r in records
    ]


def _local_answers(
    model: str, records: list[dict[str, Any]], decoding: Decoding, template: str | None
) -> list[dict[str, Any]]:
    from pacos.infer import SamplingParams, load_engine

    engine = load_engine(model, dtype=decoding.dtype, quantize=decoding.quantize, template=template)
    # A whole evaluation set in one batch (up to 48 rows): the weights are read once per decoding step
    # whatever the rows, so more rows give more tokens/s (here, bf16: 24 rows of 256 tokens in about 60 s).
    engine.max_batch_size = max(engine.max_batch_size, min(len(records), 48))
    prompts = prompt_ids(engine, records)
    params = SamplingParams(
        max_new_tokens=decoding.max_new_tokens,
        temperature=decoding.temperature,
        top_p=decoding.top_p,
        seed=decoding.seed,
    )
    done = engine.generate(prompts, params)
    return [
        {"text": c.text, "finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens}
        for c in done
    ]


def _endpoint_answers(
    url: str, served_model: str | None, records: list[dict[str, Any]], decoding: Decoding, template: str
) -> list[dict[str, Any]]:
    from pacos.data.turns import record_prompt
    from pacos.llm.client import OpenAILLM, Request
    from pacos.llm.config import ClientConfig

    if template == "chat":
        raise PacosError(
            "an endpoint is evaluated through /v1/completions: choose an Alpaca-style --template"
        )

    async def run() -> list[dict[str, Any]]:
        teacher = OpenAILLM(url, served_model, ClientConfig(api="completions"), None)
        try:
            await teacher.resolve_model()
            requests = [
                Request(
                    id=f"eval-{i}",
                    prompt=record_prompt(r, template, None),
                    max_tokens=decoding.max_new_tokens,
                    temperature=decoding.temperature,
                    top_p=decoding.top_p,
                    stop=[],
                    seed=decoding.seed,
                )
                for i, r in enumerate(records)
            ]
            replies = await teacher.run(requests)
        finally:
            await teacher.close()
        failed = next((r for r in replies if r.error), None)
        if failed is not None:
            why = f"{failed.error}: {failed.detail}"
            raise PacosError(f"endpoint {url}: a request failed after retries ({why})")
        return [
            {"text": r.text, "finish_reason": r.finish_reason, "completion_tokens": r.completion_tokens}
            for r in replies
        ]

    return asyncio.run(run())


def answer_records(
    model: str,
    records: list[dict[str, Any]],
    decoding: Decoding | None = None,
    *,
    served_model: str | None = None,
    template: str | None = None,
    cache: KeyedCache | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Each record's answer {"text", "finish_reason", "completion_tokens"} and how many were generated
    (the rest came from the cache)."""
    decoding = decoding or Decoding()
    identity = model_identity(model, served_model)
    keys = [_key(identity, template, r, decoding) for r in records]
    answers: list[dict[str, Any] | None] = [cache.get(k) if cache else None for k in keys]
    missing = [i for i, a in enumerate(answers) if a is None]
    if missing:
        todo = [records[i] for i in missing]
        if model.startswith(("http://", "https://")):
            fresh = _endpoint_answers(model, served_model, todo, decoding, template or "alpaca")
        else:
            fresh = _local_answers(model, todo, decoding, template)
        for i, answer in zip(missing, fresh, strict=True):
            answers[i] = answer
            if cache is not None:
                cache.put(keys[i], answer)
    return answers, len(missing)  # type: ignore[return-value]
