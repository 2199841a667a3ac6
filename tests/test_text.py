"""The one CJK definition and word counter that every stage uses."""

from __future__ import annotations

from pacos.text.cjk import CJK, HAN, count_words, has_cjk, language_of
from pacos.text.rouge import lcs_length, tokenize


def test_words_are_cjk_characters_plus_other_pieces_with_a_letter_or_digit():
    assert count_words("The cat sat on the mat.") == 6
    assert count_words("我喜欢猫，you know? 真的。") == 8  # 6 characters, 2 words, punctuation is no word
    assert count_words(" — ") == 0
    assert count_words("用Python写代码") == 5  # 用 + Python + 写代码
    assert count_words("こんにちは 세계") == 7  # kana and hangul are CJK characters too
    assert count_words("Hello , world") == 2  # a lone comma is no word


def test_language_and_cjk_ranges():
    assert language_of("写一首诗") == "zh" and language_of("Write a poem") == "en"
    assert language_of("𠀀") == "zh"  # an extension-B ideograph
    assert language_of("ひらがな") == "en" and has_cjk("ひらがな")  # kana: CJK, but not Chinese
    assert HAN.search("々") and CJK.search("한") and not CJK.search("・")  # the middle dot: punctuation


def test_rouge_tokens_and_lcs():
    assert tokenize("写一首诗 about Spring!", "cjk") == ["写", "一", "首", "诗", "about", "spring"]
    assert tokenize("写一首诗 about Spring!", "rouge") == ["about", "spring"]  # rouge_score drops Chinese
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4
    assert lcs_length([], ["a"]) == 0
