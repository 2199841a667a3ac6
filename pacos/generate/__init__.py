"""Self-Instruct data generation: a teacher LM continues a list of tasks, filters keep the good and novel.

- `run`: the crash-safe, resumable loop behind `pacos generate` (rounds until the target, the budget or
  the request limit is reached);
- `generator`: one run's state and what every mode does with it (send, admit, reject);
- `modes/`: one module per mode (alpaca, self-instruct, evol, magpie): adding a mode is adding a file;
- `prompts`, `parse`: our own wording of Alpaca's prompts (English, Chinese) and a parser that survives
  what real models write;
- `filters`: Alpaca's candidate filters as named, configurable rules (plus `pacos data clean`'s).
The teacher is any `pacos.llm` client; the novelty filter is `pacos.text.rouge.NoveltyFilter`.
"""
