"""Parsing what teachers write, the generation prompts, and the candidate filters."""

from __future__ import annotations

import pytest

from pacos.config import build_config
from pacos.generate.config import GenerateConfig
from pacos.generate.filters import CandidateFilter
from pacos.generate.parse import parse_tasks
from pacos.generate.prompts import continuation_prefix, list_prompt, stop_strings
from pacos.text.cjk import count_words

SEEDS = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat, sleep, move."},
    {
        "instruction": "Translate the sentence into French.",
        "input": "I like cats.",
        "output": "J'aime les chats.",
    },
]


def triples(text: str, truncated: bool = False) -> list[tuple[str, str, str]]:
    return [(c.instruction, c.input, c.output) for c in parse_tasks(text, truncated).candidates]


def test_alpaca_block_format_with_continuation_prefix_and_cut_off_last_item():
    text = continuation_prefix(3, "en") + (
        " Name a prime number.\n3. Input:\n<noinput>\n3. Output:\n7\n###\n"
        "4. Instruction: Sort the list.\n4. Input:\n3, 1, 2\n4. Output:\n1. one\n2. two\n3. three\n###\n"
        "5. Instruction: Summarize the text.\n5. Input:\nA long text that"
    )
    parsed = parse_tasks(text, truncated=True)
    assert [(c.instruction, c.input, c.output, c.number) for c in parsed.candidates] == [
        ("Name a prime number.", "", "7", 3),
        ("Sort the list.", "3, 1, 2", "1. one\n2. two\n3. three", 4),  # a numbered output stays whole
    ]
    assert parsed.truncated == "Summarize the text."
    # Without finish_reason "length" the same last block is incomplete (no output), never guessed at.
    untruncated = parse_tasks(text)
    assert len(untruncated.candidates) == 2 and untruncated.incomplete == ["Summarize the text."]


def test_chat_markdown_bold_labels_headings_bullets_and_code():
    text = (
        "Sure! Here are the tasks:\n\n**4. Instruction:** Write a limerick about a cat.\n"
        "**Input:** <noinput>\n**Output:** There once was a cat\nwho sat.\n\n---\n\n"
        "### Task 5\n**Instruction:** Classify the sentiment.\n**Input:** I love it.\n"
        "**Output:** Positive\n\n"
        "6. Describe water.\nInput: none\nOutput: Water is wet.\n\n"
        "7. Name a fruit printer.\n- Input: N/A\n- Output:\n```python\nprint('apple')\n# Output: apple\n```\n"
        "Instruction 8: Explain gravity.\nInput 8: <noinput>\nOutput 8: Things fall.\n"
    )
    assert triples(text) == [
        ("Write a limerick about a cat.", "", "There once was a cat\nwho sat."),
        ("Classify the sentiment.", "I love it.", "Positive"),
        ("Describe water.", "", "Water is wet."),
        ("Name a fruit printer.", "", "```python\nprint('apple')\n# Output: apple\n```"),
        ("Explain gravity.", "", "Things fall."),
    ]


def test_whole_answer_in_a_code_fence_and_missing_numbers():
    text = "```\nInstruction: Name a color.\nInput: <noinput>\nOutput: Red\n###\nInstruction: Add 2 and 3.\n"
    text += "Input:\n<noinput>\nOutput:\n5\n```"
    assert triples(text) == [("Name a color.", "", "Red"), ("Add 2 and 3.", "", "5")]


def test_chinese_labels_and_full_width_colons():
    text = "4. 指令：写一首关于春天的短诗。\n4. 输入：\n<无输入>\n4. 输出：\n春风拂面。\n###\n"
    text += "5. 指令：把句子翻译成英文。\n5. 输入：\n我喜欢猫。\n5. 输出：\nI like cats."
    assert triples(text) == [
        ("写一首关于春天的短诗。", "", "春风拂面。"),
        ("把句子翻译成英文。", "我喜欢猫。", "I like cats."),
    ]


def test_malformed_text_gives_no_candidates():
    for text in ["", "I cannot help with that.", "Output: 5\n###\nInput: x", "1. Instruction:\n1. Output:\n"]:
        parsed = parse_tasks(text)
        assert parsed.candidates == []
    assert parse_tasks("Output: 5\n###\nInput: x").incomplete  # counted, not silently lost


def test_prompts_show_the_examples_and_end_where_the_teacher_continues():
    completion = list_prompt(SEEDS, "en", 20, chat=False)
    assert completion.endswith("###\n3. Instruction:")
    assert "1. Instruction: Give three tips" in completion and "2. Input:\nI like cats." in completion
    assert "1. Input:\n<noinput>" in completion
    chat = list_prompt(SEEDS, "en", 20, chat=True)
    assert "tasks 3 to 20" in chat and not chat.endswith("Instruction:")
    zh = list_prompt([{"instruction": "写诗。", "input": "", "output": "好。"}], "zh", 10, chat=False)
    assert zh.endswith("2. 指令：") and "1. 输出：\n好。" in zh
    assert stop_strings(20) == ["\n21.", "21. "]
    # What the prompt shows, the parser reads back.
    assert triples(completion.split("List of 20 tasks:\n", 1)[1]) == [
        (s["instruction"], s["input"], s["output"]) for s in SEEDS
    ]


def _filter(**settings) -> CandidateFilter:
    return CandidateFilter(build_config(GenerateConfig, settings, "test"))


@pytest.mark.parametrize(
    ("instruction", "rule"),
    [
        ("Name a colour.", "too_short"),  # 3 words: Alpaca dropped <= 3
        (" ".join(["word"] * 151), "too_long_instruction"),
        ("Describe the image in four sentences.", "blacklisted_word"),
        ("Plot the sales numbers for each month.", "blacklisted_word"),
        ("Write a program that sorts a list.", "banned_prefix"),
        ('"Quoted" instruction starts with punctuation here.', "leading_punctuation"),
        ("Überprüfe bitte diesen Satz für mich jetzt.", "leading_non_ascii"),
        ("Describe the plotting of a novel.", None),  # "plotting" is not the whole word "plot"
        (
            "Summarize the main plot twists of Hamlet.",
            None,
        ),  # "plot" as a noun inside "plot twists"? see below
    ],
)
def test_alpaca_filters_name_their_rule(instruction, rule):
    record = {"instruction": instruction, "input": "", "output": "An answer."}
    got = _filter()(record)[1]
    if instruction.startswith("Summarize the main plot"):
        assert got == "blacklisted_word"  # Alpaca's whole-word list drops it too; disable the rule to keep it
        assert _filter(filters={"disable": ["blacklisted_word"]})(record)[1] is None
    else:
        assert got == rule


def test_filters_reuse_clean_rules_and_fix_records():
    f = _filter()
    assert (
        f({"instruction": "Give me the answer please now.", "input": "", "output": "N/A"})[1] == "na_output"
    )
    assert f({"instruction": "Explain what this page says.", "input": "https://x.org", "output": "It"})[
        1
    ] == ("url_or_attachment")
    record, rule, _ = f({"instruction": "  Name two colors of the sky. ", "input": "None", "output": "Blue."})
    assert rule is None and record["instruction"] == "Name two colors of the sky." and record["input"] == ""
    assert f({"instruction": "Repeat the sentence back exactly.", "input": "Hi.", "output": "Hi."})[1] == (
        "input_is_output"
    )
    assert (
        _filter(clean=False)({"instruction": "Give me the answer please now.", "input": "", "output": "N/A"})[
            1
        ]
        is None
    )


def test_chinese_filters_count_characters_and_keep_chinese():
    f = _filter(language="zh")
    assert count_words("写一首诗") == 4 and count_words("用Python写代码") == 5
    assert f({"instruction": "写诗。", "input": "", "output": "好。"})[1] == "too_short"
    assert (
        f({"instruction": "请推荐几首适合学习时听的音乐。", "input": "", "output": "好。"})[1]
        == "blacklisted_word"
    )
    assert (
        f({"instruction": "Explain the idea in English.", "input": "", "output": "Ok."})[1]
        == "wrong_language"
    )
    assert f({"instruction": "请用三句话介绍长城的历史。", "input": "", "output": "长城很长。"})[1] is None
    with pytest.raises(Exception, match="unknown rule"):
        _filter(filters={"disable": ["no_such_rule"]})


def test_the_next_items_bare_number_is_not_part_of_a_field():
    text = "4. Instruction: Explain tides in one sentence.\n5.\n4. Input:\n<noinput>\n"
    text += "4. Output:\nThe answer is\n42\n6."
    assert triples(text) == [("Explain tides in one sentence.", "", "The answer is\n42")]


def test_a_label_repeated_with_the_same_number_replaces_the_first():
    text = (
        "6. Instruction: Name a drama film.\n6. Input:\nA car.\n6. Input:\n<noinput>\n6. Output:\n<noinput>\n"
    )
    text += "6. Output:\nCasablanca.\n###\nInput: stray\nOutput: no instruction\n"
    parsed = parse_tasks(text)
    assert [(c.instruction, c.input, c.output) for c in parsed.candidates] == [
        ("Name a drama film.", "", "Casablanca.")
    ]
    assert parsed.incomplete == ["stray"]
