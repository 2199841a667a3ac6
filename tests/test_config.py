from __future__ import annotations

from pathlib import Path

import pytest

from pacos.config import apply_overrides, load_config
from pacos.data.clean import CleanConfig
from pacos.errors import PacosError
from pacos.quickstart import QuickstartConfig

RECIPES = Path(__file__).parent.parent / "recipes"


def test_overrides_are_typed_and_nested():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=3", "a.c=true", "d=[x, y]", "e=1e-4", "f=hello world"])
    assert data == {"a": {"b": 3, "c": True}, "d": ["x", "y"], "e": 1e-4, "f": "hello world"}


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("fix: true\nmax_chars: 100\n")
    config = load_config(CleanConfig, path, ["max_chars=250", "disable=[too_long]"])
    assert config.fix is True and config.max_chars == 250 and config.disable == ["too_long"]


def test_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  val: lots\n  sorce: x\n")
    with pytest.raises(PacosError) as info:
        load_config(QuickstartConfig, path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "field 'data.val': Input should be a valid number" in message
    assert "field 'data.sorce': unknown setting" in message


def test_recipes_load_and_quickstart_recipe_matches_defaults():
    assert load_config(QuickstartConfig, RECIPES / "quickstart-cpu.yaml") == QuickstartConfig()
    assert load_config(CleanConfig, RECIPES / "clean.yaml").fix is True
