"""YAML recipes loaded into typed settings (pydantic), with `key.sub=value` overrides from the CLI.

Unknown keys, wrong types and broken YAML are one-line errors naming the file and the field or line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pacos.errors import PacosError

T = TypeVar("T", bound=BaseModel)
_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


RECIPES = Path(__file__).parent / "recipes"  # bundled with the package; `recipes/` in a checkout


def bundled_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def find_recipe(path: str | Path) -> Path:
    """A config file: the path if it exists, else a bundled recipe named like it (`alpaca-lora`,
    `alpaca-lora.yaml` or `recipes/alpaca-lora.yaml`), so README commands work outside a checkout."""
    path = Path(path)
    if path.exists() or path.parent.name not in ("", "recipes"):
        return path
    bundled = RECIPES / f"{path.name.removesuffix('.yaml').removesuffix('.yml')}.yaml"
    return bundled if bundled.is_file() else path


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = find_recipe(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PacosError(
            f"{path}: config file not found (bundled recipes: {', '.join(bundled_recipes())})"
        ) from None
    except UnicodeDecodeError:
        raise PacosError(f"{path}: config file is not valid UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise PacosError(f"{where}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise PacosError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PacosError(
            f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}"
        )
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides; the value is read as YAML, so `3`, `true`, `[a, b]` get their types."""
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PacosError(f"--set '{item}': expected KEY=VALUE, e.g. --set train.lr=1e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 2e-5 as a string; people mean the number
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return data


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"field '{field}': unknown setting"
    if error["type"] == "missing":
        return f"field '{field}': required setting is missing"
    got = error.get("input")
    got_text = f" (got {got!r})" if isinstance(got, (str, int, float, bool)) or got is None else ""
    message = error["msg"].removeprefix("Value error, ")
    return f"field '{field}': {message}{got_text}"


def known_names(names: list[str], known: Iterable[str]) -> list[str]:
    """A validator's check that every name in a `disable` list names a rule."""
    known = list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown rule(s) {', '.join(unknown)} (rules: {', '.join(known)})")
    return names


def _set_by(field: str, overrides: list[str]) -> str | None:
    """The override (`key=value`, from --set or an option) that set `field` or a setting around it."""
    for item in reversed(overrides):  # the last one wins, as when applied
        key = item.partition("=")[0].strip()
        if field == key or field.startswith(key + ".") or key.startswith(field + "."):
            return item
    return None


def build_config(cls: type[T], data: dict[str, Any], source: str, overrides: list[str] | None = None) -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        # Each error is blamed where its value came from: the command line or the file.
        by_source: dict[str, list[str]] = {}
        for err in e.errors():
            item = _set_by(".".join(str(p) for p in err["loc"]), overrides or [])
            where = f"command line ({item})" if item else source
            by_source.setdefault(where, []).append(_describe(err))
        raise PacosError(
            "; ".join(f"{where}: {'; '.join(errs)}" for where, errs in by_source.items())
        ) from None


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> T:
    """Settings from a YAML file (or `defaults`) with overrides applied; errors name the file and field."""
    data = load_yaml(path) if path else dict(defaults or {})
    data = apply_overrides(data, overrides or [])
    source = str(path) if path else "defaults"
    return build_config(cls, data, source, overrides)
