"""Prompts that carry verifiable instructions: the bundled evaluation set (105 prompts, en + zh) and the
reader of any file in its format (one JSON object per line: id, language, instruction, checks), every
check validated against pacos.text.checks before use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pacos.errors import PacosError
from pacos.text.checks import LANGUAGES, validate_check

PROMPTS_FILE = Path(__file__).with_name("ifeval_prompts.jsonl")


def load_ifeval_prompts(language: str | None = None, path: str | Path | None = None) -> list[dict[str, Any]]:
    """The bundled prompt set (or the one at `path`), optionally one language, each prompt validated."""
    if language is not None and language not in LANGUAGES:
        raise PacosError(f"ifeval language must be one of {', '.join(LANGUAGES)}, not {language!r}")
    where = Path(path) if path else PROMPTS_FILE
    try:
        lines = where.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PacosError(f"ifeval prompts '{where}': {e.strerror or e}") from None
    prompts: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            prompt = json.loads(line)
        except ValueError as e:
            raise PacosError(f"ifeval prompts '{where}' line {number}: not JSON: {e}") from None
        prompt_id = str(prompt.get("id", f"line {number}")) if isinstance(prompt, dict) else f"line {number}"
        if not isinstance(prompt, dict) or not {"id", "language", "instruction", "checks"} <= prompt.keys():
            raise PacosError(f"ifeval prompt {prompt_id}: needs id, language, instruction and checks")
        if prompt_id in seen:
            raise PacosError(f"ifeval prompt {prompt_id}: the id is used twice")
        seen.add(prompt_id)
        if prompt["language"] not in LANGUAGES:
            raise PacosError(
                f"ifeval prompt {prompt_id}: language must be en or zh, not {prompt['language']!r}"
            )
        if not isinstance(prompt["checks"], list) or not prompt["checks"]:
            raise PacosError(f"ifeval prompt {prompt_id}: checks must be a non-empty list")
        for check in prompt["checks"]:
            validate_check(prompt_id, check)
        if language is None or prompt["language"] == language:
            prompts.append(prompt)
    return prompts
