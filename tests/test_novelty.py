"""The ROUGE-L novelty filter against rouge_score, the reference Alpaca uses: same tokens, same float scores,
same keep/drop decisions, and the top-k most similar items of a brute-force scan."""

from __future__ import annotations

import heapq
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from pacos.data.seeds import load_seed_tasks
from pacos.errors import PacosError
from pacos.text.rouge import NoveltyFilter, rouge_l_f1, tokenize

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3]")
EN = [t["instruction"] for t in load_seed_tasks("en")]
ZH = [t["instruction"] for t in load_seed_tasks("zh")]


def reference_tokens(text: str) -> list[str]:
    return SCORER._tokenizer.tokenize(text)


def reference_score(new: list[str], other: list[str]) -> float:
    return rouge_scorer._score_lcs(new, other).fmeasure


def top(scores: list[float], k: int) -> list[tuple[int, float]]:
    """Brute force: the k best positive scores, best first, ties by pool order."""
    return [(i, -s) for s, i in heapq.nsmallest(k, ((-s, i) for i, s in enumerate(scores) if s > 0))]


def replay(
    pool: list[str], stream: list[str], tokenizer: str = "rouge", threshold: float = 0.7, k: int = 5
) -> tuple[int, int]:
    """Alpaca's loop with rouge_score next to NoveltyFilter.offer: every outcome must be the same."""
    novelty = NoveltyFilter(threshold, tokenizer, top_k=k)
    texts = list(pool)
    for i, text in enumerate(pool):
        novelty.add(text, key=i)
    tokens = [tokenize(t, tokenizer) for t in pool]
    kept = 0
    for text in stream:
        new = tokenize(text, tokenizer)
        if tokenizer == "rouge":
            assert new == reference_tokens(text)
        scores = [reference_score(new, other) for other in tokens]
        keep = max(scores, default=0.0) <= threshold
        verdict = novelty.offer(text, key=len(texts))
        assert verdict.novel == keep, text
        assert verdict.max_score == max(scores, default=0.0), text
        assert verdict.most_similar == top(scores, k), text
        if keep:
            texts.append(text)
            tokens.append(new)
            kept += 1
    assert len(novelty) == len(texts)
    return kept, len(stream) - kept


# --- tokenizer ------------------------------------------------------------------------------------

TEXT = st.text(
    alphabet=st.sampled_from(
        [*"abcXYZ019 \t\n.,!?'-_/()", "İ", "ß", "é", "K", "ﬁ", "Σ", "ǅ", "\u00a0", "\u3000", "中", "の", "한"]
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(TEXT)
def test_rouge_tokenizer_is_rouge_scores(text):
    assert tokenize(text, "rouge") == reference_tokens(text)


@settings(max_examples=400, deadline=None)
@given(TEXT)
def test_cjk_tokenizer_only_adds_cjk_characters(text):
    cjk = tokenize(text, "cjk")
    assert [t for t in cjk if not CJK.fullmatch(t)] == tokenize(text, "rouge")
    assert all(len(t) == 1 for t in cjk if CJK.search(t))
    without = CJK.sub("", text)
    assert tokenize(without, "cjk") == tokenize(without, "rouge") == reference_tokens(without)


def test_tokenizers_on_examples():
    assert tokenize("İstanbul's Straße, café 42x!") == ["i", "stanbul", "s", "stra", "e", "caf", "42x"]
    assert tokenize("请解释什么是AI。") == ["ai"]
    assert tokenize("请解释什么是AI。", "cjk") == ["请", "解", "释", "什", "么", "是", "ai"]
    assert tokenize("カタカナとひらがな、한국어", "cjk") == list("カタカナとひらがな한국어")
    assert tokenize("...!?", "cjk") == [] == tokenize("", "rouge")
    with pytest.raises(PacosError, match="unknown tokenizer"):
        tokenize("x", "words")


# --- scores ---------------------------------------------------------------------------------------

TOKENS = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=30)


@settings(max_examples=600, deadline=None)
@given(TOKENS, TOKENS)
def test_f1_is_rouge_scores_float(new, other):
    assert rouge_l_f1(new, other) == reference_score(new, other)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(st.sampled_from("abcdefgh"), max_size=12).map(" ".join), max_size=25),
    st.lists(st.lists(st.sampled_from("abcdefghij"), max_size=12).map(" ".join), min_size=1, max_size=25),
    st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
    st.integers(1, 6),
)
def test_filter_equals_brute_force(pool, stream, threshold, k):
    replay(pool, stream, threshold=threshold, k=k)


@pytest.mark.parametrize(
    ("lcs", "m", "n", "expected", "novel"),
    [
        (7, 7, 13, 0.7000000000000001, False),  # 2L/(m+n) is 0.7, the float is not: the reference drops it
        (7, 12, 8, 0.7000000000000001, False),
        (7, 10, 10, 0.7, True),
        (14, 17, 23, 0.7, True),
        (21, 23, 37, 0.6999999999999998, True),
    ],
)
def test_threshold_decided_on_the_references_float(lcs, m, n, expected, novel):
    shared = [f"w{i}" for i in range(lcs)]
    new = " ".join(shared + [f"x{i}" for i in range(m - lcs)])
    other = " ".join(shared + [f"y{i}" for i in range(n - lcs)])
    assert reference_score(reference_tokens(new), reference_tokens(other)) == expected
    novelty = NoveltyFilter()
    novelty.add(other)
    verdict = novelty.check(new)
    assert (verdict.novel, verdict.max_score) == (novel, expected)


# --- the filter -----------------------------------------------------------------------------------


def mutations(rng: random.Random, n: int, base: list[str] = EN) -> list[str]:
    """Candidates made from seed tasks: edits of every kind, and the odd cases."""
    words = " ".join(EN).split()
    out = []
    for _ in range(n):
        w = rng.choice(base).split()
        kind = rng.randrange(14)
        if kind == 0:
            del w[rng.randrange(len(w))]
        elif kind == 1 and len(w) > 1:
            i = rng.randrange(len(w) - 1)
            w[i], w[i + 1] = w[i + 1], w[i]
        elif kind == 2:
            w.insert(rng.randrange(len(w) + 1), rng.choice(words))
        elif kind == 3:
            w = [x.upper() if rng.random() < 0.3 else x.lower() for x in w]  # mixed case: the same tokens
        elif kind == 4:
            w = [rng.choice(words) for _ in range(rng.randint(3, 12))]  # new word salad: mostly novel
        elif kind == 5:
            w = [rng.choice(["...", "!?", "—", "#", "()", "„“"]) for _ in range(rng.randint(1, 4))]
        elif kind == 6:
            w = [rng.choice(["你好", "こんにちは", "안녕", "😀", "‽"])]  # no rouge tokens at all
        elif kind == 7:
            w = [rng.choice(["the", "a", "list"])] * rng.randint(2, 30)  # repeated tokens
        elif kind == 8:
            i = rng.randrange(len(w))
            w[i] = w[i] + rng.choice(["İ", "ß", "é", "ñ"]) + rng.choice(["a", "x", ""])  # non-ASCII letters
        elif kind == 9:
            w += [str(rng.randint(0, 999)) for _ in range(rng.randint(1, 3))]  # digits
        elif kind == 10:
            w = w + rng.choice(EN).split()  # two tasks glued together
        elif kind == 11:
            w = w[: max(1, len(w) // 2)]  # the first half
        elif kind == 12:
            for _ in range(rng.randint(2, 5)):  # several edits: near the threshold
                w.insert(rng.randrange(len(w) + 1), rng.choice(words))
                del w[rng.randrange(len(w))]
        # kind 13: an exact copy
        out.append(" ".join(w))
    return out


@pytest.mark.parametrize("part", range(8))
def test_seed_stream_equals_reference(part):
    """3,200 candidates in all, in eight streams (the reference's cost grows with the pool)."""
    rng = random.Random(part)
    seeds = EN[part::8]
    pool = [*seeds, ZH[part], "", "!!!"]  # Chinese and empty items have no rouge tokens
    kept, rejected = replay(pool, mutations(rng, 400, seeds))
    assert kept > 60 and rejected > 60  # both decisions are well represented


@pytest.mark.parametrize("k", [1, 5])
def test_large_pool_with_many_ties_equals_reference(k):
    """Thousands of pool items sharing tokens take the vectorised pruning rounds, ties everywhere."""
    rng = random.Random(k)
    vocabulary = "write a the list of give three tips for an and to explain sort name".split()
    pool = [" ".join(rng.choices(vocabulary, k=rng.randint(3, 12))) for _ in range(1500)]
    stream = [" ".join(rng.choices(vocabulary, k=rng.randint(1, 14))) for _ in range(60)]
    replay(pool, stream + mutations(rng, 20), k=k)


def test_long_instructions_equal_reference():
    rng = random.Random(1)
    long = [" ".join(rng.sample(EN, rng.randint(10, 25))) for _ in range(10)]  # hundreds of words
    stream = long + mutations(rng, 10) + [" ".join(t.split()[5:]) for t in long[:6]]
    kept, rejected = replay(EN[:30] + long[:2], stream)
    assert kept and rejected


def test_chinese_near_copy_is_rejected_under_cjk_only():
    seed = ZH[1]  # 把下面这段文言文翻译成现代汉语。
    copy = seed.replace("翻译", "改写").replace("下面", "以下")
    novelty = NoveltyFilter(tokenizer="cjk")
    for i, text in enumerate(ZH):
        novelty.add(text, key=i)
    verdict = novelty.check(copy)
    assert not verdict.novel and verdict.most_similar[0][0] == 1
    assert verdict.max_score == reference_score(tokenize(copy, "cjk"), tokenize(seed, "cjk")) > 0.7
    # rouge_score's tokenizer deletes every Chinese character: everything scores 0 and passes.
    assert tokenize(copy) == [] and reference_tokens(seed) == []
    rouge = NoveltyFilter(tokenizer="rouge")
    for text in ZH:
        rouge.add(text)
    assert rouge.check(copy) == rouge.check(seed) == rouge.check("")
    assert rouge.check(copy).novel and rouge.check(copy).max_score == 0.0


def test_chinese_stream_equals_reference_scores():
    rng = random.Random(2)
    stream = []
    for _ in range(250):
        chars = list(rng.choice(ZH))
        for _ in range(rng.randint(0, 6)):
            i = rng.randrange(len(chars))
            if rng.random() < 0.5:
                del chars[i]
            else:
                chars.insert(
                    i, rng.choice("的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得")
                )
        stream.append("".join(chars) or "空")
    replay(ZH[:20], stream, tokenizer="cjk")


def test_pool_basics():
    novelty = NoveltyFilter(top_k=2)
    assert len(novelty) == 0
    empty = novelty.check("Give three tips for staying healthy.")
    assert empty.novel and empty.max_score == 0.0 and empty.most_similar == []
    assert novelty.add("Give three tips for staying healthy.", key="seed-1") == 0
    novelty.add("Give three tips for staying healthy.")  # add() does not check
    novelty.add("")  # a pool item without tokens scores 0 with everything
    assert len(novelty) == 3
    verdict = novelty.check("Give three tips for staying healthy!")
    assert not verdict.novel and verdict.max_score == 1.0
    assert verdict.most_similar == [("seed-1", 1.0), ("Give three tips for staying healthy.", 1.0)]
    assert len(novelty) == 3  # check() has no side effect
    assert not novelty.offer("give THREE tips, for staying healthy").novel and len(novelty) == 3
    for text in ("", "...", "你好"):  # no tokens: 0 with everything, always novel, like the reference
        assert novelty.check(text) == novelty.check("") and novelty.check(text).novel
    assert novelty.offer("Name three primary colours.", key=7).novel and len(novelty) == 4
    assert novelty.check("Name the three primary colours.").most_similar[0][0] == 7


def test_threshold_zero_and_one():
    strict, lenient = NoveltyFilter(0.0), NoveltyFilter(1.0)
    for novelty in (strict, lenient):
        novelty.add("Write a poem about the sea.")
    assert not strict.check("Explain the rules of chess.").novel  # shares "the"
    assert strict.check("Explain chess rules.").novel
    assert lenient.check("Write a poem about the sea.").novel  # 1.0 <= 1.0


def test_saturated_counts_stay_exact():
    novelty = NoveltyFilter()
    novelty.add("a " * 66_000)  # more repeats than the index's uint16 counts hold
    verdict = novelty.check("b " + "a " * 66_001)
    assert verdict.max_score == rouge_l_f1(["b"] + ["a"] * 66_001, ["a"] * 66_000) > 0.99
    assert not verdict.novel


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 1.5}, "between 0 and 1"),
        ({"threshold": -0.1}, "between 0 and 1"),
        ({"threshold": float("nan")}, "between 0 and 1"),
        ({"tokenizer": "spaces"}, "unknown tokenizer"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, message):
    with pytest.raises(PacosError, match=message):
        NoveltyFilter(**kwargs)
