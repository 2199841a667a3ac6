"""Inference: the batched KV-cache engine, sampling, streaming text, and prompt formats."""

from pacos.infer.engine import Completion, Engine, Event
from pacos.infer.sampling import SamplingParams, TokenLogprob

__all__ = ["Completion", "Engine", "Event", "SamplingParams", "TokenLogprob"]
