"""Repairs that make an answer pass the verifiable instructions it missed, without inventing content."""

from __future__ import annotations

import json

import pytest

from pacos.data.io import read_records
from pacos.data.verifiable import prompt_pool
from pacos.text.checks import CHECKERS, check_prompt
from pacos.text.repair import FIXERS, repair, sentences

EN = (
    "Paris is the capital of France. It is known for the Eiffel Tower, museums and food. "
    "Many visit it yearly."
)
ZH = "巴黎是法国的首都。它以埃菲尔铁塔、博物馆和美食而闻名，每年都有很多人参观。人们喜欢那里的咖啡馆。"


def test_every_fixer_names_a_checker():
    assert set(FIXERS) <= set(CHECKERS)


@pytest.mark.parametrize(
    ("text", "checks", "want"),
    [
        (EN, [{"type": "all_uppercase"}], EN.upper()),
        (EN, [{"type": "all_lowercase"}], EN.lower()),
        (EN, [{"type": "no_commas"}], EN.replace(",", "")),
        (EN, [{"type": "bullet_count", "kwargs": {"exactly": 3}}],
         "* Paris is the capital of France.\n* It is known for the Eiffel Tower, museums and food.\n"
         "* Many visit it yearly."),
        (EN, [{"type": "paragraph_count", "kwargs": {"exactly": 2}}],
         "Paris is the capital of France. It is known for the Eiffel Tower, museums and food.\n\n"
         "Many visit it yearly."),
        (EN, [{"type": "sentence_count", "kwargs": {"at_most": 1}}], "Paris is the capital of France."),
        (EN, [{"type": "word_count", "kwargs": {"at_most": 17}}],
         "Paris is the capital of France. It is known for the Eiffel Tower, museums and food."),
        (EN, [{"type": "ends_with", "kwargs": {"phrase": "Any other questions?"}}],
         EN + "\nAny other questions?"),
        (EN, [{"type": "starts_with", "kwargs": {"phrase": "My answer:"}}], "My answer: " + EN),
        (EN, [{"type": "title"}], "<<Paris is the capital of France>>\n\n" + EN),
        (EN, [{"type": "json_format"}], json.dumps({"answer": EN})),
        (EN, [{"type": "keywords_excluded", "kwargs": {"keywords": ["France"]}}],
         EN.replace(" France", "")),
        (ZH, [{"type": "bullet_count", "kwargs": {"exactly": 3}}],
         "* 巴黎是法国的首都。\n* 它以埃菲尔铁塔、博物馆和美食而闻名，每年都有很多人参观。\n"
         "* 人们喜欢那里的咖啡馆。"),
        (ZH, [{"type": "no_commas"}, {"type": "placeholders", "kwargs": {"at_least": 2}}],
         ZH.replace("，", " ") + "\n\n[姓名] [日期]"),
        (ZH, [{"type": "starts_with", "kwargs": {"phrase": "我的回答是："}}], "我的回答是：" + ZH),
    ],
)  # fmt: skip
def test_a_repair_passes_its_checks_and_keeps_the_words(text, checks, want):
    assert not check_prompt(text, checks)["strict"]
    got = repair(text, checks)
    assert got == want.replace("  ", " ")
    assert check_prompt(got, checks)["strict"]


def test_several_instructions_at_once_and_already_passing_ones_are_left_alone():
    checks = [
        {"type": "bullet_count", "kwargs": {"exactly": 2}},
        {"type": "all_lowercase"},
        {"type": "ends_with", "kwargs": {"phrase": "That is all."}},
        {"type": "keywords_included", "kwargs": {"keywords": ["Paris"]}},  # passes: untouched
    ]
    got = repair(EN, checks)
    assert got == ("* paris is the capital of france. it is known for the eiffel tower, museums and food.\n"
                   "* many visit it yearly.\nthat is all.")  # fmt: skip
    assert check_prompt(got, checks)["strict"]


@pytest.mark.parametrize(
    "checks",
    [
        [{"type": "word_count", "kwargs": {"at_least": 200}}],  # would need new content
        [{"type": "sentence_count", "kwargs": {"at_least": 5}}],
        [{"type": "bullet_count", "kwargs": {"exactly": 7}}],  # only 3 sentences to spread
        [{"type": "keywords_included", "kwargs": {"keywords": ["Louvre"]}}],  # no fixer
        [{"type": "response_language", "kwargs": {"language": "zh"}}],
        [{"type": "json_format"}, {"type": "starts_with", "kwargs": {"phrase": "Answer:"}}],  # contradict
    ],
)
def test_what_cannot_be_repaired_is_none(checks):
    assert repair(EN, checks) is None
    assert repair("", [{"type": "all_uppercase"}]) is None
    assert repair(EN.upper(), [{"type": "all_uppercase"}]) is None  # nothing to repair


def test_sentences_drop_list_marks_and_line_breaks():
    assert sentences("1. First one.\n2. Second one!\n- third") == ["First one.", "Second one!", "third"]
    assert sentences("第一句。第二句！") == ["第一句。", "第二句！"]


def test_most_pool_prompts_are_repairable_from_a_plain_answer():
    """A plain five-sentence answer can be repaired for most of the pool's prompts, in both languages."""
    pool = prompt_pool(read_records("seed-tasks-en") + read_records("seed-tasks-zh"), 200, seed=0)
    answer = {"en": " ".join(f"This is sentence number {i} of the answer." for i in range(5)),
              "zh": "".join(f"这是回答的第{i}句话。" for i in range(5))}  # fmt: skip
    for language in ("en", "zh"):
        prompts = [p for p in pool if p["language"] == language]
        fixed = [repair(answer[language], p["checks"]) for p in prompts]
        assert all(check_prompt(f, p["checks"])["strict"] for f, p in zip(fixed, prompts) if f is not None)
        assert sum(f is not None for f in fixed) >= 0.5 * len(prompts)


def test_cut_loop_keeps_what_came_before_the_loop():
    from pacos.text.repair import cut_loop

    days = "Pack water. Bring a map.\n- Day 1: the lake, 10 km\n- Day 2: the ridge, 12 km"
    assert cut_loop(f"{days}\n- Day 1: the lake, 10 km\n- Day 1: the lake, 10 km\n- D") == days
    # Counting on: lines, or runs inside a line, that differ only in their numbers.
    start = "Opposites of numbers:\nThe opposite of 1 is -1."
    assert cut_loop(f"{start}\nThe opposite of 2 is -2.\nThe opposite of 3 is -3.\nThe opp") == start
    years = "下面按顺序列出二十世纪初期每一年的变化情况。\n" + "，".join(
        f"从{y}年到{y + 1}年" for y in range(1900, 1930)
    )
    assert cut_loop(years + "，从19") == "下面按顺序列出二十世纪初期每一年的变化情况。"
    # Chinese: a repeated line ends it too; the piece the token limit cut is never kept.
    named = "给奶茶店起的名字如下：\n书香奶茶铺\n月光茶舍小馆"
    assert cut_loop(f"{named}\n书香奶茶铺\n书香") == named
    # Repetition inside sentences (no repeated sentence): cut where repeated 4-grams pass 10%.
    words = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen."
    assert cut_loop(f"{words} a b c d a b c d a b c d a b c d a b c d. unfinished") == words
    assert cut_loop("[[[[[[[[[[[[[[[[[[[[[[[[[[[[") is None  # loops from its start: nothing to keep
    assert cut_loop("Short. Short. Short. Sho") is None  # under 20 characters left
    # A list that goes on with near-copies of one item (distinct words, so no exact repeat): cut before
    # the first near-copy; a list marker ("3.") never dangles at the end of what is kept.
    jars = (
        "1. Use jars as vases.\n2. Use empty containers that are too big for your kitchen.\n"
        "3. Use empty containers that are too small for your bedroom.\n4. Use empty containers that"
    )
    kept = "1. Use jars as vases.\n2. Use empty containers that are too big for your kitchen."
    assert cut_loop(jars) == kept
    first = "行程安排如下：\n1. 早上7点出发，沿途会遇到很多堵车，建议提前准备好手机。"
    assert cut_loop(f"{first}\n2. 早上8点左右到达杭州，会遇到很多堵车，建议提前准备好手机。\n3.") == first
    nested = "行程安排如下：\n* 1. 早上7点出发，先吃早餐，准备好行李箱。\n* 2. 早上8点到达杭州，先去西湖。"
    again = "\n* 3. 早上9点到达杭州，先去西湖。\n* 4. 早上10点到达杭州，先去西湖。\n* 5."
    assert cut_loop(nested + again) == nested  # "* 3." (a bullet and a number) never dangles either
    assert cut_loop("It weighs 2.5 kg and costs 3.5 dollars.\n2. It is big.\n3. It") == (
        "It weighs 2.5 kg and costs 3.5 dollars.\n2. It is big."
    )
