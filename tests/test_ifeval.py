"""Verifiable instruction following: each checker, strict against loose, the scoring and the bundled set."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pacos.data.verifiable import load_ifeval_prompts
from pacos.errors import PacosError
from pacos.text.checks import CHECKERS, check_prompt, count_sentences, loose_variants, score


def check(name: str, response: str, **kwargs) -> bool:
    return CHECKERS[name](response, **kwargs)


def test_word_count_counts_chinese_characters_and_latin_words():
    assert check("word_count", "one two three", at_least=3) and not check("word_count", "one two", at_least=3)
    assert check("word_count", "一二三四五", at_most=5) and not check("word_count", "一二三四五六", at_most=5)
    assert check("word_count", "one two three", at_least=2, at_most=3)


def test_sentence_count_in_both_languages():
    assert count_sentences("Hi there. How are you? Fine!") == 3
    assert count_sentences("今天下雨了。我们在家！好吗？") == 3
    assert count_sentences("Version 2.5 is out. Great") == 2  # a decimal point ends no sentence
    assert check("sentence_count", "One. Two.", at_most=2) and not check(
        "sentence_count", "A. B. C.", at_most=2
    )
    assert check("sentence_count", "一。二。三。", at_least=3)


def test_paragraphs_split_on_blank_lines_and_stars():
    assert check("paragraph_count", "First.\n\nSecond.\n  \nThird.", exactly=3)
    assert check("paragraph_count", "First.\n***\nSecond.\n\n***\n\nThird.", exactly=3)
    assert check("paragraph_count", "* a\n* b\n* c", exactly=1)  # a list is one paragraph
    assert not check("paragraph_count", "Only one paragraph.\nStill the same one.", exactly=2)
    assert check("paragraph_count", "第一段。\n\n第二段。", at_least=2)


def test_keywords_are_whole_words_in_english_and_substrings_in_chinese():
    assert check("keywords_included", "A Bucket and a collision.", keywords=["bucket", "COLLISION"])
    assert not check("keywords_included", "A bucket only.", keywords=["bucket", "collision"])
    assert not check("keywords_included", "Let us start.", keywords=["art"])
    assert check("keywords_included", "大熊猫生活在四川，爱吃竹子。", keywords=["竹子", "四川"])
    assert check("keywords_excluded", "A calm beach.", keywords=["sun", "sea"])
    assert check("keywords_excluded", "Seasons change.", keywords=["sea"])  # "seasons" is not "sea"
    assert not check("keywords_excluded", "The Sun was hot.", keywords=["sun"])
    assert not check("keywords_excluded", "北京烤鸭很好吃。", keywords=["烤鸭"])


def test_keyword_frequency():
    text = "Leaf after leaf, the LEAF falls; leaflets don't count."
    assert check("keyword_frequency", text, keyword="leaf", at_least=3)
    assert not check("keyword_frequency", text, keyword="leaf", at_most=2)
    assert check("keyword_frequency", "月亮月亮，月亮。", keyword="月亮", at_least=3)
    assert check("keyword_frequency", "no door here", keyword="door", at_least=1, at_most=1)


def test_json_format_bare_or_in_one_fence():
    assert check("json_format", '{"a": [1, 2]}')
    assert check("json_format", '```json\n{"a": 1}\n```')
    assert check("json_format", "```\n[1, 2]\n```\n")
    assert not check("json_format", 'Here you go: {"a": 1}')
    assert not check("json_format", '```json\n{"a": 1}\n```\nHope this helps!')
    assert not check("json_format", "{'a': 1}")


def test_bullets_with_dash_and_star():
    assert check("bullet_count", "* one\n* two\n- three", exactly=3)
    assert check("bullet_count", "Intro:\n  - nested\n- top", exactly=2)
    assert not check("bullet_count", "**bold** text\n---\n*emphasis*", exactly=1)
    assert not check("bullet_count", "- a\n- b", exactly=3)
    assert check("bullet_count", "- a\n* * *\n- - -\n- b", exactly=2)  # horizontal rules


def test_title_lowercase_uppercase():
    assert check("title", "<<T>>\nBody.") and check("title", "A poem <<月亮>> here")
    assert not check("title", "<<>> no title") and not check("title", "<title>")
    assert check("all_lowercase", "all lower, 100%.") and not check("all_lowercase", "Not all lower")
    assert not check("all_lowercase", "中文没有大小写")  # no cased letter at all
    assert check("all_uppercase", "GO TEAM! 2024") and not check("all_uppercase", "GO Team")


def test_starts_ends_placeholders_commas():
    assert check("starts_with", "  here is why: ...", phrase="Here is why")
    assert not check("starts_with", "Well, here is why", phrase="Here is why")
    assert check(
        "ends_with",
        "Done. Is there anything else I can help with?\n",
        phrase="Is there anything else I can help with?",
    )
    assert not check(
        "ends_with",
        "Is there anything else I can help with? Bye.",
        phrase="Is there anything else I can help with?",
    )
    assert check("ends_with", "祝你生日快乐！", phrase="生日快乐！")
    assert check("placeholders", "Dear [name], at [address] on [日期].", at_least=3)
    assert not check(
        "placeholders", "See [the docs](http://x) and [name].", at_least=2
    )  # a link is no placeholder
    assert check("no_commas", "No commas here.") and check("no_commas", "没有逗号。")
    assert not check("no_commas", "a, b") and not check("no_commas", "甲，乙")


def test_response_language_by_script():
    assert check("response_language", "Walking is good for the heart.", language="en")
    assert not check("response_language", "Walking is good for the heart.", language="zh")
    assert check("response_language", "Python是一种流行的编程语言，适合初学者。", language="zh")
    assert not check("response_language", "Python是一种流行的编程语言，适合初学者。", language="en")
    assert check("response_language", "My friend 王 lives in Beijing and loves dumplings.", language="en")
    assert not check("response_language", "Привет, как дела?", language="en")
    with pytest.raises(PacosError, match="language"):
        check("response_language", "text", language="fr")


def test_an_empty_response_follows_no_instruction():
    for name, kwargs in [
        ("no_commas", {}),
        ("keywords_excluded", {"keywords": ["x"]}),
        ("word_count", {"at_most": 5}),
    ]:
        assert not check(name, "", **kwargs) and not check(name, "  \n", **kwargs)


def test_loose_forgives_a_preamble_and_markdown():
    assert len(loose_variants("a\nb\nc")) == 8
    response = "Sure, here it is:\nthe cat sat on the mat"
    result = check_prompt(response, [{"type": "all_lowercase", "kwargs": {}}, {"type": "no_commas"}])
    assert not result["strict"] and result["loose"]
    assert [(i["strict"], i["loose"]) for i in result["instructions"]] == [(False, True), (False, True)]
    starred = check_prompt(
        "**Here is why** sleep matters.", [{"type": "starts_with", "kwargs": {"phrase": "Here is why"}}]
    )
    assert not starred["strict"] and starred["loose"]
    both = check_prompt('Here:\n{"a": 1}\nEnjoy!', [{"type": "json_format", "kwargs": {}}])
    assert not both["strict"] and both["loose"]
    wrong = check_prompt("Hello, World", [{"type": "all_lowercase", "kwargs": {}}])
    assert not wrong["strict"] and not wrong["loose"]
    with pytest.raises(PacosError, match="unknown"):
        check_prompt("x", [{"type": "no_such_check", "kwargs": {}}])


def test_score_arithmetic():
    results = [
        check_prompt("hello there", [{"type": "all_lowercase"}, {"type": "no_commas"}]),  # both pass
        check_prompt(
            "Sure:\nhi, you\nbye, now", [{"type": "all_lowercase"}, {"type": "no_commas"}]
        ),  # lower: loose
        check_prompt("ok", [{"type": "all_uppercase"}]),  # fails
    ]
    s = score(results)
    assert s["prompts"] == 3 and s["instructions"] == 5
    assert s["prompt_strict"] == pytest.approx(1 / 3) and s["prompt_loose"] == pytest.approx(1 / 3)
    assert s["instruction_strict"] == pytest.approx(2 / 5) and s["instruction_loose"] == pytest.approx(3 / 5)
    assert s["by_type"]["all_lowercase"] == {"count": 2, "strict": 0.5, "loose": 1.0}
    assert s["by_type"]["all_uppercase"] == {"count": 1, "strict": 0.0, "loose": 0.0}
    assert score([])["prompt_strict"] == 0.0


def test_bundled_prompt_set():
    prompts = load_ifeval_prompts()
    languages = Counter(p["language"] for p in prompts)
    assert len(prompts) >= 100 and languages["zh"] >= 30 and languages["en"] >= 60
    assert len({p["id"] for p in prompts}) == len(prompts)
    uses = Counter(c["type"] for p in prompts for c in p["checks"])
    assert set(uses) == set(CHECKERS) and min(uses.values()) >= 4
    assert all(1 <= len(p["checks"]) <= 3 and p["instruction"].strip() for p in prompts)
    assert {p["language"] for p in load_ifeval_prompts("zh")} == {"zh"}
    assert len(CHECKERS) >= 12


@pytest.mark.parametrize(
    "check, message",
    [
        ({"type": "nope", "kwargs": {}}, "unknown check type 'nope'"),
        ({"type": "word_count", "kwargs": {"minimum": 3}}, "kwargs"),
        ({"type": "word_count", "kwargs": {}}, "needs at_least"),
        ({"type": "bullet_count", "kwargs": {}}, "kwargs"),
        ({"type": "keywords_included", "kwargs": {"keywords": "bucket"}}, "not a non-empty list"),
        ({"type": "word_count", "kwargs": {"at_most": "80"}}, "not a count"),
        ({"type": "response_language", "kwargs": {"language": "fr"}}, "language"),
    ],
)
def test_a_bad_check_names_the_prompt(tmp_path, check, message):
    path = tmp_path / "prompts.jsonl"
    row = {"id": "my-7", "language": "en", "instruction": "Say hi.", "checks": [check]}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(PacosError, match=f"my-7.*{message}"):
        load_ifeval_prompts(path=path)


def test_duplicate_ids_and_bad_language_are_refused(tmp_path):
    path = tmp_path / "prompts.jsonl"
    row = {"id": "a", "language": "en", "instruction": "Hi.", "checks": [{"type": "no_commas", "kwargs": {}}]}
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(PacosError, match="a: the id is used twice"):
        load_ifeval_prompts(path=path)
    with pytest.raises(PacosError, match="en, zh"):
        load_ifeval_prompts("fr")


@pytest.mark.parametrize(
    "prompt_id, answer",
    [
        (
            "en-001",
            "Dear Mr Smith\n\nThe heater broke on Monday. When will it be repaired?\n\nThanks\nAnna",
        ),
        ("en-007", '```json\n[{"name": "France", "capital": "Paris", "population": 68000000}]\n```'),
        (
            "en-018",
            "<<Trains vs Planes>>\n- Centre to centre\n- Planes fly faster\n- Airports take time\n- Less CO2",
        ),
        ("zh-023", "通货膨胀是指物价总体水平持续上涨的现象。货币的购买力因此下降。"),
        ("zh-034", "hi! i am lin. i love reading books and hiking on weekends."),
    ],
)
def test_a_compliant_answer_to_a_bundled_prompt_passes_strictly(prompt_id, answer):
    prompt = next(p for p in load_ifeval_prompts() if p["id"] == prompt_id)
    assert check_prompt(answer, prompt["checks"])["strict"]
