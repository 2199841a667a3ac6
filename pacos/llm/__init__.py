"""The one LM client layer, used as teacher (generate), judge (evaluate, score) and answerer (eval,
self-training): `client` (an OpenAI-compatible endpoint, the pacos engine in-process, llama.cpp; retries,
rate limits, prices), `answers` (a model's answers to records, cached by the model's identity)."""
