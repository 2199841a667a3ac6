"""Preference pairs from a model's own answers: the verifiable prompt pool, rewards, pairing, resume."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pacos.data.io import read_records
from pacos.data.pairs import read_pairs
from pacos.data.verifiable import load_ifeval_prompts, prompt_pool
from pacos.errors import PacosError
from pacos.score import pairs as pairs_module
from pacos.score.pairs import PairSettings, answer_rewards, build_pairs, choose_pair
from pacos.text.checks import check_prompt, validate_check
from pacos.text.rouge import rouge_l_f1, tokenize
from tests.conftest import write_jsonl


@pytest.fixture(scope="module")
def seed_tasks():
    return read_records("seed-tasks-en") + read_records("seed-tasks-zh")


def test_pool_is_deterministic_balanced_and_valid(seed_tasks):
    pool = prompt_pool(seed_tasks, 120, seed=3)
    assert pool == prompt_pool(seed_tasks, 120, seed=3) and pool != prompt_pool(seed_tasks, 120, seed=4)
    assert sum(p["language"] == "zh" for p in pool) == 60
    assert len({(p["instruction"], p["input"]) for p in pool}) == 120
    for p in pool:
        assert 1 <= len(p["checks"]) <= 2
        for check in p["checks"]:
            validate_check(p["id"], check)
        if p["language"] == "zh":
            assert not {"all_lowercase", "all_uppercase"} & {c["type"] for c in p["checks"]}
    # A keyword check asks for a word of the task's own reference answer: a good answer can use it.
    with_keyword = [p for p in pool if p["checks"][0]["type"] == "keywords_included"]
    assert with_keyword and all(
        p["checks"][0]["kwargs"]["keywords"][0].lower() in p["output"].lower() for p in with_keyword
    )


def test_pool_is_disjoint_from_the_evaluation_prompts(seed_tasks):
    """No pool prompt is (nearly) an evaluation prompt: pairs never train on what `--ifeval` measures."""
    pool = prompt_pool(seed_tasks, 400, seed=0)
    evaluation = [tokenize(p["instruction"], "cjk") for p in load_ifeval_prompts()]
    for p in pool:
        mine = tokenize(p["instruction"], "cjk")
        assert max(rouge_l_f1(mine, other) for other in evaluation) < 0.7, p["instruction"]


def test_checks_reward_counts_each_instruction_and_the_whole_prompt():
    prompt = {"instruction": "x", "checks": [{"type": "no_commas"}, {"type": "all_lowercase"}]}
    both = answer_rewards(prompt, {"text": "all good here", "finish_reason": "stop"}, ("checks", "eos"))
    one = answer_rewards(prompt, {"text": "All good here", "finish_reason": "stop"}, ("checks", "eos"))
    cut = answer_rewards(prompt, {"text": "Yes, Sure", "finish_reason": "length"}, ("checks", "eos"))
    assert (both["checks"], one["checks"], cut["checks"]) == (2.0, 0.5, 0.0)
    assert (both["eos"], cut["eos"]) == (0.0, -1.0)
    loop = answer_rewards(prompt, {"text": "the cat sat " * 20, "finish_reason": "stop"}, ("repetition",))
    assert loop["repetition"] < -1.5
    ref = answer_rewards({"instruction": "x", "output": "a b c d"}, {"text": "a b c d"}, ("reference",))
    assert ref == {"reference": 1.0}


def test_pairs_need_a_margin_and_a_chosen_answer_that_ended():
    prompt = {"instruction": "x", "id": "p1", "checks": [{"type": "no_commas"}]}
    group = [
        {"text": "b", "reward": 0.1, "finish_reason": "stop"},
        {"text": "a", "reward": 1.0, "finish_reason": "stop"},
        {"text": "c", "reward": -0.5, "finish_reason": "length"},
    ]
    pair = choose_pair(prompt, group, 0.25)
    assert (pair["chosen"], pair["rejected"], pair["id"]) == ("a", "c", "p1")
    assert choose_pair(prompt, group, 2.0) is None
    group[1]["finish_reason"] = "length"
    assert choose_pair(prompt, group, 0.25) is None


def test_bad_settings_are_errors():
    with pytest.raises(PacosError, match="unknown reward"):
        PairSettings(model="m", rewards=("checks", "vibes"))
    with pytest.raises(PacosError, match="needs --judge"):
        PairSettings(model="m", rewards=("judge",))
    with pytest.raises(PacosError, match="at least 2"):
        PairSettings(model="m", k=1)


def test_killed_run_resumes_without_asking_again(tiny_llama, tmp_path, monkeypatch):
    prompts = [
        {"instruction": f"Say something about item {i}. Avoid commas entirely.", "input": "", "id": f"p{i}",
         "checks": [{"type": "no_commas", "kwargs": {}}]}
        for i in range(6)
    ]  # fmt: skip
    settings = PairSettings(
        model=str(tiny_llama), k=2, max_new_tokens=12, min_margin=0.01, batch_prompts=4,
        dtype="float32", quantize="none", rewards=("checks", "repetition"),
    )  # fmt: skip
    real = pairs_module.answer_records
    calls = {"n": 0, "generated": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed in the third batch (second sample, first prompts)
        got, fresh = real(*args, **kwargs)
        calls["generated"] += fresh
        return got, fresh

    monkeypatch.setattr(pairs_module, "answer_records", dying)
    with pytest.raises(KeyboardInterrupt):
        build_pairs(prompts, settings, tmp_path / "out")
    assert calls["generated"] == 6  # every prompt's first answer, in the cache
    calls["generated"] = 0
    summary = build_pairs(prompts, settings, tmp_path / "out", trl=True)
    assert calls["generated"] == 6  # only the second answers were asked for
    assert summary["answers"] == 12
    calls["generated"] = 0
    again = build_pairs(prompts, settings, tmp_path / "out", trl=True)
    assert calls["generated"] == 0 and again["pairs"] == summary["pairs"]
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [len(s["answers"]) for s in samples] == [2] * 6
    for s, p in zip(samples, prompts):
        for a in s["answers"]:
            passed = check_prompt(a["text"], p["checks"])["strict"]
            assert a["rewards"]["checks"] == (2.0 if passed else 0.0)
    if summary["pairs"]:
        assert len(read_pairs(tmp_path / "out" / "pairs.jsonl")) == summary["pairs"]
        assert len(read_pairs(tmp_path / "out" / "pairs-trl.jsonl")) == summary["pairs"]
    # Another pairing into another folder from the same answers: nothing is sampled again.
    wider = dataclasses.replace(settings, min_margin=0.5)
    other = build_pairs(prompts, wider, tmp_path / "other", answers=tmp_path / "out" / "answers.jsonl")
    assert (
        calls["generated"] == 0
        and other["answers"] == 12
        and not (tmp_path / "other" / "answers.jsonl").exists()
    )
    with pytest.raises(PacosError, match="no such folder"):
        build_pairs(prompts, settings, tmp_path / "third", answers=tmp_path / "missing" / "answers.jsonl")


def test_cli_pool_and_pairs(cli, tiny_llama, tmp_path):
    result = cli("data", "pool", "--out", tmp_path / "pool.jsonl", "--n", "6")
    assert result.code == 0 and "6 verifiable prompts (3 en, 3 zh)" in result.out
    result = cli(
        "pairs", tmp_path / "pool.jsonl", "--model", tiny_llama, "--out", tmp_path / "p", "--k", "2",
        "--max-new-tokens", "8", "--reward", "checks=2,eos,repetition", "--min-margin", "0.01",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "pairs from 6 prompts x 2 answers" in result.out
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["settings"]["weights"]["checks"] == 2.0
    bad = cli("pairs", write_jsonl(tmp_path / "x.jsonl", [{"instruction": "a"}]), "--model", "m",
              "--out", tmp_path / "q", "--reward", "checks=high")  # fmt: skip
    assert bad.code != 0 and "the weight must be a number" in bad.err


def test_repair_adds_an_edited_chosen_answer_only_where_no_answer_passes(tmp_path, monkeypatch):
    upper = [{"type": "all_uppercase"}]
    prompts = [
        {"instruction": "Name a colour. Answer in capitals.", "id": "a", "checks": upper},
        {"instruction": "Name a fruit. Answer in capitals.", "id": "b", "checks": upper},
        {"instruction": "Write 300 words.", "id": "c",
         "checks": [{"type": "word_count", "kwargs": {"at_least": 300}}]},
    ]  # fmt: skip
    texts = {"a": ["Red is a colour.", "blue", "Green, I think, maybe" * 3], "b": ["APPLE.", "pear"],
             "c": ["Too short.", "Also short"]}  # fmt: skip

    def answers(model, records, decoding, **kwargs):
        j = decoding.seed
        got = [{"text": texts[r["id"]][j % len(texts[r["id"]])], "finish_reason": "stop"} for r in records]
        return got, 0

    monkeypatch.setattr(pairs_module, "answer_records", answers)
    settings = PairSettings(model="m", k=2, rewards=("checks",), repair=True)
    summary = build_pairs(prompts, settings, tmp_path / "out")
    pairs = {p["id"]: p for p in read_pairs(tmp_path / "out" / "pairs.jsonl")}
    # a: no answer passes; the better one (by reward, then order) upper-cased is chosen over the worst.
    assert pairs["a"]["chosen"] == "RED IS A COLOUR." and pairs["a"]["rejected"] == "blue"
    # b: an answer passes already: no repair; c: cannot be repaired (more words needed): no pair.
    assert pairs["b"]["chosen"] == "APPLE." and "c" not in pairs
    assert summary["repaired"] == 1 and summary["pairs_with_repaired_chosen"] == 1
    assert summary["answers"] == 6  # the model's own answers only
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["answers"][-1]["repaired_from"] == 0
    # Minimal pairs: the repaired answer against the very answer it was edited from; others unchanged.
    settings = PairSettings(model="m", k=2, rewards=("checks",), repair=True, minimal=True)
    build_pairs(prompts, settings, tmp_path / "minimal")
    pairs = {p["id"]: p for p in read_pairs(tmp_path / "minimal" / "pairs.jsonl")}
    assert pairs["a"]["chosen"] == "RED IS A COLOUR." and pairs["a"]["rejected"] == "Red is a colour."
    assert pairs["b"]["rejected"] == "pear"
    with pytest.raises(PacosError, match="use them with --repair"):
        PairSettings(model="m", minimal=True)


def test_reference_chosen_pairs_the_reference_with_the_worst_answer(tmp_path, monkeypatch):
    prompts = [
        {"instruction": "Say hi.", "id": "plain", "output": "Hi there."},
        {"instruction": "Say hi loudly.", "id": "checked", "output": "HI.",
         "checks": [{"type": "all_uppercase"}]},
        {"instruction": "Say bye.", "id": "no-reference"},
    ]  # fmt: skip
    texts = {"plain": ["Hi there!", "hi hi hi hi hi hi hi hi"], "checked": ["HELLO", "hello"],
             "no-reference": ["Bye.", "Bye bye."]}  # fmt: skip

    def answers(model, records, decoding, **kwargs):
        return [{"text": texts[r["id"]][decoding.seed % 2], "finish_reason": "stop"} for r in records], 0

    monkeypatch.setattr(pairs_module, "answer_records", answers)
    settings = PairSettings(
        model="m", k=2, rewards=("checks", "reference", "repetition"), reference_chosen=True
    )
    summary = build_pairs(prompts, settings, tmp_path / "out")
    pairs = {p["id"]: p for p in read_pairs(tmp_path / "out" / "pairs.jsonl")}
    # The reference beats the model's worst (looping) answer; a prompt with checks pairs as before.
    assert (pairs["plain"]["chosen"], pairs["plain"]["rejected"]) == ("Hi there.", "hi hi hi hi hi hi hi hi")
    assert (pairs["checked"]["chosen"], pairs["checked"]["rejected"]) == ("HELLO", "hello")
    assert "no-reference" not in pairs and summary["pairs_with_reference_chosen"] == 1


def test_stop_pairs_prefer_an_answer_cut_before_its_loop(tmp_path, monkeypatch):
    loop = "Pack water.\nBring a map.\nBring a map.\nBring a"
    prompts = [
        {"instruction": "What to pack?", "id": "loops", "output": "Water and a map."},
        {"instruction": "What to pack? Use capitals.", "id": "capitals",
         "checks": [{"type": "all_uppercase"}]},
        {"instruction": "Say hi.", "id": "ends", "output": "Hi."},
    ]  # fmt: skip
    texts = {"loops": ["Water.", loop], "capitals": ["PACK WATER.\nBRING A MAP.\nBRING A MAP.\nBRI", "water"],
             "ends": ["Hi.", "Hello."]}  # fmt: skip

    def answers(model, records, decoding, **kwargs):
        got = []
        for r in records:
            text = texts[r["id"]][decoding.seed % 2]
            got.append(
                {"text": text, "finish_reason": "length" if text in (loop, texts["capitals"][0]) else "stop"}
            )
        return got, 0

    monkeypatch.setattr(pairs_module, "answer_records", answers)
    settings = PairSettings(model="m", k=2, rewards=("reference", "eos", "checks"), stop_pairs=True)
    summary = build_pairs(prompts, settings, tmp_path / "out")
    stops = [p for p in read_pairs(tmp_path / "out" / "pairs.jsonl") if p.get("chosen_cut")]
    assert [(p["id"], p["chosen"], p["rejected"]) for p in stops] == [
        ("loops", "Pack water.\nBring a map.", loop),  # cut before the repeated line, preferred to the loop
        ("capitals", "PACK WATER.\nBRING A MAP.", texts["capitals"][0]),  # the cut keeps its passed check
    ]
    assert summary["stop_pairs"] == 2 and summary["pairs"] == 2 + 2  # the ordinary pairs are kept


def test_greedy_adds_the_greedy_answer_first(tmp_path, monkeypatch):
    loop = "Pack water.\nBring a map.\nBring a map.\nBring a"
    prompts = [{"instruction": "What to pack?", "id": "p", "output": "Water and a map."}]
    seen = []

    def answers(model, records, decoding, **kwargs):
        seen.append((decoding.temperature, decoding.seed))
        greedy = decoding.temperature == 0
        return [{"text": loop if greedy else "Water.", "finish_reason": "length" if greedy else "stop"}], 0

    monkeypatch.setattr(pairs_module, "answer_records", answers)
    settings = PairSettings(model="m", k=2, rewards=("reference", "eos"), stop_pairs=True, greedy=True)
    settings.seed = 5
    summary = build_pairs(prompts, settings, tmp_path / "out")
    assert seen == [(0.0, 5), (0.8, 5), (0.8, 6)]  # the greedy answer, then k samples
    assert summary["answers"] == 3
    stops = [p for p in read_pairs(tmp_path / "out" / "pairs.jsonl") if p.get("chosen_cut")]
    assert [(p["chosen"], p["rejected"]) for p in stops] == [("Pack water.\nBring a map.", loop)]
    assert len(seen) == 3
    build_pairs(prompts, PairSettings(model="m", k=2, rewards=("reference", "eos")), tmp_path / "plain")
    assert len(seen) == 5  # without --greedy: the k samples alone
