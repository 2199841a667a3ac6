"""The seed tasks shipped with pacos: human-written, in Self-Instruct's format, English and Chinese."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

SEED_FILES = {"en": "seed_tasks_en.jsonl", "zh": "seed_tasks_zh.jsonl"}
BUILTIN_DATASETS = {
    "seed-tasks": ("en", "zh"),
    "seed-tasks-en": ("en",),
    "seed-tasks-zh": ("zh",),
}


def seed_task_path(language: str) -> Path:
    return Path(str(resources.files("pacos.data") / "seed_tasks" / SEED_FILES[language]))


def builtin_paths(name: str) -> list[Path]:
    """The files behind a built-in dataset name such as `seed-tasks`."""
    return [seed_task_path(lang) for lang in BUILTIN_DATASETS[name]]


def load_seed_tasks(*languages: str) -> list[dict[str, Any]]:
    """Seed tasks in their raw Self-Instruct form (with `instances` and `is_classification`)."""
    tasks = []
    for language in languages or tuple(SEED_FILES):
        with open(seed_task_path(language), encoding="utf-8") as f:
            tasks.extend(json.loads(line) for line in f if line.strip())
    return tasks
