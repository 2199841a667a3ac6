"""Self-Instruct data generation: a teacher LM continues a list of tasks, filters keep the good and novel.

- `teachers`: one interface over an OpenAI-compatible endpoint, the pacos engine in-process and llama.cpp;
- `prompts`, `parse`: our own wording of the generation prompts (English, Chinese) and a parser that
  survives what real models write;
- `filters`: Alpaca's candidate filters as named, configurable rules (plus `pacos data clean`'s);
- `novelty`: the exact ROUGE-L novelty filter, fast;
- `run`: the crash-safe, resumable generation loop behind `pacos generate`.
"""
