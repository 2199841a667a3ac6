"""How to reach an LM: the settings every client of `pacos.llm` shares (teacher, judge, answerer)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ClientConfig(BaseModel):
    """How to talk to an LM (teacher, judge or answerer). The API key never appears here: it comes from
    `api_key_env`."""

    model_config = ConfigDict(extra="forbid")

    # "chat": /v1/chat/completions (chat models); "completions": /v1/completions (base models continue
    # the list, as Alpaca's text-davinci-003 and Self-Instruct's GPT-3 did). Local teachers pick by model.
    api: Literal["auto", "chat", "completions"] = "auto"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = Field(600.0, gt=0)  # seconds for one request (OpenAI's client waits as long)
    max_retries: int = Field(6, ge=0)
    backoff_base: float = Field(1.0, ge=0)  # seconds; doubles per attempt, with full jitter
    backoff_max: float = Field(60.0, ge=0)
    concurrency: int = Field(8, ge=1)  # requests in flight at once; a local engine: rows decoded together
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    # Local teachers (local:NAME, llama.cpp:FILE): the pacos engine's settings.
    dtype: str = "auto"
    quantize: str = "auto"  # fp16 weights on x86 CPUs computing in fp32 (pacos.infer.quantize)
    # Prompt-lookup drafts per step for greedy requests (pacos.infer.lookup): a judge quoting the answers
    # it compares, rewrites. Used where the local engine takes drafts; 0: off.
    prompt_lookup: int = Field(0, ge=0, le=16)
