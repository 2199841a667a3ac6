from __future__ import annotations

from pathlib import Path

import pytest

from pacos.config import apply_overrides, load_config
from pacos.data.clean import CleanConfig
from pacos.errors import PacosError
from pacos.pipeline.quickstart_config import QUICKSTART, TRAIN, QuickstartConfig
from pacos.train.config import TrainConfig

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
    path.write_text("lr: lots\nlora:\n  rank: 8\n")
    with pytest.raises(PacosError) as info:
        load_config(TrainConfig, path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "field 'lr': Input should be a valid number" in message
    assert "field 'lora.rank': unknown setting" in message


TRAINING = sorted(
    p.name
    for p in RECIPES.glob("*.yaml")
    if p.name not in ("clean.yaml", "quickstart.yaml") and not p.name.startswith(("generate", "selftrain"))
)


@pytest.mark.parametrize("recipe", TRAINING)
def test_training_recipes_load(recipe):
    assert isinstance(load_config(TrainConfig, RECIPES / recipe), TrainConfig)


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("selftrain*.yaml")))
def test_selftrain_recipes_load(recipe):
    from pacos.pipeline.selftrain_config import SelfTrainConfig

    assert isinstance(load_config(SelfTrainConfig, RECIPES / recipe), SelfTrainConfig)


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("generate*.yaml")))
def test_generation_recipes_load(recipe):
    from pacos.generate.config import GenerateConfig

    assert isinstance(load_config(GenerateConfig, RECIPES / recipe), GenerateConfig)


def test_quickstart_recipe_matches_built_in_defaults_and_alpaca_recipe_is_alpaca():
    assert load_config(TrainConfig, RECIPES / "quickstart-cpu.yaml") == TrainConfig(**TRAIN)
    whole = load_config(QuickstartConfig, RECIPES / "quickstart.yaml")
    assert whole == QuickstartConfig(**QUICKSTART)
    # The loop trains exactly as the training-only recipe does (its data and output are the loop's own).
    assert whole.train.model_dump(exclude={"data", "clean", "val_fraction", "output_dir"}) == TrainConfig(
        **TRAIN
    ).model_dump(exclude={"data", "clean", "val_fraction", "output_dir"})
    alpaca = load_config(TrainConfig, RECIPES / "alpaca-7b-fsdp.yaml")
    assert (
        alpaca.lr,
        alpaca.epochs,
        alpaca.batch_size,
        alpaca.max_length,
        alpaca.lr_scheduler,
        alpaca.warmup_ratio,
        alpaca.weight_decay,
        alpaca.method,
        alpaca.distributed,
    ) == (2e-5, 3, 128, 512, "cosine", 0.03, 0.0, "full", "fsdp")
    assert load_config(CleanConfig, RECIPES / "clean.yaml").fix is True


def test_errors_are_blamed_on_the_command_line_or_the_file_they_came_from(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("lr: 1e-4\nlora:\n  rank: 8\n")
    with pytest.raises(PacosError) as info:
        load_config(TrainConfig, path, ["max_step=3"])
    message = str(info.value)
    assert "command line (max_step=3): field 'max_step': unknown setting" in message
    assert f"{path}: field 'lora.rank': unknown setting" in message
    with pytest.raises(PacosError, match=r"^command line \(lora=4\): field 'lora'"):
        load_config(TrainConfig, None, ["lora=4"])


def test_bundled_recipes_load_by_name_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here
    for name in ("alpaca-lora", "alpaca-lora.yaml", "recipes/alpaca-lora.yaml"):
        assert (
            load_config(TrainConfig, name).lora.r
            == load_config(TrainConfig, RECIPES / "alpaca-lora.yaml").lora.r
        )
    with pytest.raises(
        PacosError, match=r"^nope.yaml: config file not found \(bundled recipes: alpaca-7b-fsdp, "
    ):
        load_config(TrainConfig, "nope.yaml")
    (tmp_path / "alpaca-lora.yaml").write_text("lr: 0.5\n")  # a file of that name wins
    assert load_config(TrainConfig, "alpaca-lora.yaml").lr == 0.5
