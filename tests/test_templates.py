from __future__ import annotations

import pytest

from pacos.data.templates import ALPACA, get_template, render_prompt
from pacos.errors import PacosError
from pacos.models import load_tokenizer

# Stanford Alpaca's PROMPT_DICT, written out byte by byte.
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def test_alpaca_template_is_byte_identical():
    assert ALPACA.prompt_input.encode() == ALPACA_PROMPT_INPUT.encode()
    assert ALPACA.prompt_no_input.encode() == ALPACA_PROMPT_NO_INPUT.encode()
    assert get_template("alpaca") is ALPACA


def test_alpaca_rendering_with_and_without_input():
    with_input = render_prompt({"instruction": "Sum the numbers.", "input": "2, 3"})
    assert with_input == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSum the numbers.\n\n### Input:\n2, 3\n\n### Response:"
    )
    without = render_prompt({"instruction": "Name a colour.", "input": ""})
    assert without.endswith("### Instruction:\nName a colour.\n\n### Response:")
    assert "### Input:" not in without


def test_braces_in_records_are_literal():
    prompt = render_prompt({"instruction": 'Format {name} as JSON: {"a": 1}', "input": "{x}"})
    assert 'Format {name} as JSON: {"a": 1}' in prompt and "### Input:\n{x}\n" in prompt


def test_chinese_template():
    prompt = render_prompt({"instruction": "把这句话翻译成英文。", "input": "你好"}, "alpaca-zh")
    assert "### 指令：\n把这句话翻译成英文。\n\n### 输入：\n你好\n\n### 回答：" in prompt
    assert prompt.endswith("### 回答：")
    no_input = render_prompt({"instruction": "写一首诗。", "input": ""}, "alpaca-zh")
    assert "### 输入" not in no_input


def test_chat_template_uses_the_tokenizer(tiny_tokenizer_dir):
    tok = load_tokenizer(str(tiny_tokenizer_dir))
    record = {"instruction": "Say hello.", "input": "world", "metadata": {"system": "Be brief."}}
    assert render_prompt(record, "chat", tok) == (
        "<|system|>\nBe brief.\n<|user|>\nSay hello.\n\nworld\n<|assistant|>\n"
    )


def test_chat_template_needs_a_tokenizer_and_unknown_names_fail():
    with pytest.raises(PacosError, match="needs a tokenizer"):
        render_prompt({"instruction": "x"}, "chat")
    with pytest.raises(PacosError, match="unknown template 'vicuna'"):
        get_template("vicuna")
