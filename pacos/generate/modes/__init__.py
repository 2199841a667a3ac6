"""The generation modes, one module each in this package: adding a mode is adding a file.

A mode module is named after its mode (`self_instruct.py` is `--mode self-instruct`) and defines
`MODE = Mode(...)`: the coroutine that runs one round on the run's `Generator` (make requests, send
them, admit or reject what comes back) and what the loop needs to know about it. A mode with settings of
its own reads them from the `GenerateConfig` section named after it (`evol:`, `magpie:`); only the chosen
mode's section is part of a run's identity.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pacos.errors import PacosError


@dataclass(frozen=True, kw_only=True)
class Mode:
    name: str
    round: Callable[[Any], Awaitable[bool]]  # one round on a Generator; False when every request failed
    uses_seeds: bool = True  # the seed tasks go into its prompts and the novelty pool
    check: Callable[[Any], None] | None = None  # on the GenerateConfig, before any teacher is contacted


def mode_names() -> list[str]:
    return sorted(
        m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")
    )


def get_mode(name: str) -> Mode:
    if name not in mode_names():
        raise PacosError(f"mode '{name}': choose one of {', '.join(mode_names())}")
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}").MODE
