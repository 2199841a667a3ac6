"""Pairwise judging: both orders, soft preferences from logprobs, win rates, length control, caching."""

from __future__ import annotations

import math

import pytest

from pacos.evaluate.judge import (
    PairJudgment,
    alpaca_eval_annotations,
    calibrate_position,
    first_preferred,
    judge_pairs,
    length_controlled_win_rate,
    win_rates,
)
from pacos.fileio import KeyedCache
from pacos.llm.client import LLM, Reply, Request


class ScriptedJudge(LLM):
    """Prefers the longer answer, or always the first shown (position bias), and counts its calls."""

    name, model, chat, batch_size = "scripted", "judge", True, 8

    def __init__(self, rule: str, logprobs: bool = True) -> None:
        self.rule, self.logprobs, self.calls = rule, logprobs, 0

    async def run(self, requests: list[Request], stop_spending=None) -> list[Reply]:
        replies = []
        for request in requests:
            self.calls += 1
            first = request.prompt.split("## Answer A\n")[1].split("\n\n## Answer B")[0]
            second = request.prompt.split("## Answer B\n")[1].split("\n\nWhich answer")[0]
            a_better = len(first) > len(second) if self.rule == "longer" else True  # "position": always A
            reply = Reply(request.id, "A" if a_better else "B", "length", completion_tokens=1)
            if self.logprobs:
                reply.first_token_logprobs = {"A": math.log(0.8), "B": math.log(0.2)} if a_better else {
                    "A": math.log(0.3), " B": math.log(0.7), "C": -9.0
                }  # fmt: skip
            replies.append(reply)
        return replies


INSTRUCTIONS = ["Say hi.", "Name a fruit.", "Count to three.", "Greet me."]
SHORT = ["Hi.", "Apple.", "1 2 3", "Hello."]
LONG = ["Hi there, friend!", "Apple, a sweet fruit.", "One, two, three.", "Hello and welcome!"]


def test_both_orders_and_soft_preferences_from_logprobs(tmp_path):
    judge = ScriptedJudge("longer")
    cache = KeyedCache(tmp_path / "judgments.jsonl")
    judgments, calls = judge_pairs(judge, INSTRUCTIONS, SHORT, LONG, cache)
    assert calls == 8 and judge.calls == 8  # two orders per pair
    for j in judgments:  # model 2 (longer) preferred in both orders
        assert j.order1 == pytest.approx(0.7) and j.order2 == pytest.approx(0.8)
        assert j.discrete == 1.0 and j.soft == pytest.approx(0.75)
    rates = win_rates(judgments, [len(a) for a in SHORT], [len(a) for a in LONG])
    assert rates["win_rate"] == 100 and rates["wins"] == 4 and rates["standard_error"] == 0
    uncalibrated = win_rates(judgments, [len(a) for a in SHORT], [len(a) for a in LONG], calibrate=False)
    assert uncalibrated["soft_win_rate"] == pytest.approx(75) and rates["soft_win_rate"] > 70
    # An immediate rerun asks nothing.
    again, calls = judge_pairs(judge, INSTRUCTIONS, SHORT, LONG, KeyedCache(tmp_path / "judgments.jsonl"))
    assert calls == 0 and judge.calls == 8 and [j.soft for j in again] == [j.soft for j in judgments]


def test_position_bias_becomes_ties():
    judgments, _ = judge_pairs(ScriptedJudge("position", logprobs=False), INSTRUCTIONS, SHORT, LONG)
    assert all(j.order1 == 0.0 and j.order2 == 1.0 and j.discrete == 0.5 for j in judgments)
    rates = win_rates(judgments, [1] * 4, [1] * 4)
    assert rates["win_rate"] == 50 and rates["ties"] == 4


def test_position_bias_is_calibrated_out_when_the_judge_gives_logprobs():
    # A judge that picks the first answer with P = 0.9, nudged by quality: model 2 is better on pairs 0-2.
    def p_first(model_2_first: bool, better: bool) -> float:
        nudge = 0.6 if better == model_2_first else -0.6
        return 1 / (1 + math.exp(-(math.log(9) + nudge)))

    better = [True, True, True, False]
    judgments = [PairJudgment(1 - p_first(False, b), p_first(True, b)) for b in better]
    assert all(j.discrete == 0.5 for j in judgments)  # raw: the first position always wins: all ties
    calibrated, preference = calibrate_position(judgments)
    assert preference == pytest.approx(0.9)
    assert [j.discrete for j in calibrated] == [1.0, 1.0, 1.0, 0.0]
    rates = win_rates(judgments, [10] * 4, [10] * 4)
    assert rates["win_rate"] == 75 and rates["win_rate_uncalibrated"] == 50
    assert rates["position_calibrated"] and rates["first_position_preference"] == pytest.approx(0.9)
    # A judge with nothing but position bias stays at ties; letters alone (0 or 1) are never calibrated.
    flat = [PairJudgment(0.1, 0.9)] * 4
    assert [j.discrete for j in calibrate_position(flat)[0]] == [0.5] * 4
    assert calibrate_position([PairJudgment(0.0, 1.0)])[1] is None


def test_reference_and_cut_answers_reach_the_judge():
    from pacos.evaluate.judge import judge_prompt, shown

    prompt = judge_prompt("Add 2 and 2.", "4", "5", reference="2 + 2 = 4")
    assert prompt.index("## Reference answer") < prompt.index("## Answer A") and "2 + 2 = 4" in prompt
    assert "Reference" not in judge_prompt("Add 2 and 2.", "4", "5")
    assert shown("x" * 50, 10) == "x" * 10 + " [... cut]" and shown("short", 10) == "short"


def test_first_preferred_reads_logprobs_then_text():
    assert first_preferred("A", {"A": 0.0, "B": -math.inf}) == 1.0
    assert first_preferred("B", {" A": math.log(0.25), "B": math.log(0.75)}) == pytest.approx(0.25)
    assert first_preferred("**B**", None) == 0.0 and first_preferred("Neither", None) is None
    assert first_preferred("A", {"A": -0.1}) == 1.0  # only one label among the logprobs: the text decides


def test_win_rate_standard_error_is_over_instructions():
    judgments = [
        PairJudgment(0.9, 0.9),
        PairJudgment(0.1, 0.1),
        PairJudgment(0.9, 0.2),
        PairJudgment(0.8, 0.7),
    ]
    rates = win_rates(judgments, [10] * 4, [10] * 4)
    scores = [1.0, 0.0, 0.5, 1.0]
    mean = sum(scores) / 4
    se = math.sqrt(sum((s - mean) ** 2 for s in scores) / 3) / 2
    assert rates["win_rate"] == pytest.approx(100 * mean) and rates["standard_error"] == pytest.approx(
        100 * se
    )


def test_length_control_removes_a_verbosity_preference():
    # Model 2 wins exactly when its answer is longer: its raw win rate is high, but at equal length the
    # judge would be indifferent, so the length-controlled rate is near 50%.
    len_1 = [100] * 40
    len_2 = [150 if i % 4 else 50 for i in range(40)]
    soft = [0.9 if b > a else 0.1 for a, b in zip(len_1, len_2)]
    raw = sum(soft) / len(soft)
    lc = length_controlled_win_rate(soft, len_1, len_2)
    assert raw == pytest.approx(0.7) and abs(lc - 0.5) < 0.1
    # A model that is better whatever the length keeps its lead.
    better = [0.85] * 40
    assert length_controlled_win_rate(better, len_1, len_2) == pytest.approx(0.85, abs=0.01)


def test_annotations_in_alpaca_eval_layout():
    judgments = [PairJudgment(0.7, 0.8), PairJudgment(None, None)]
    rows = alpaca_eval_annotations(["i1", "i2"], ["a", "b"], ["c", "d"], judgments, "base", "tuned", "judge")
    assert set(rows[0]) >= {"instruction", "output_1", "output_2", "generator_1", "generator_2", "preference"}
    assert rows[0]["preference"] == pytest.approx(1.75) and rows[0]["preference_both_orders"] == 2.0
    assert rows[1]["preference"] == 1.5  # no verdict: neither side


def test_a_judge_that_follows_position_gets_no_headline_win_rate(tmp_path):
    from pacos.evaluate.report import UNRELIABLE, judge_unreliable, metric_rows, write_report

    biased, _ = judge_pairs(ScriptedJudge("position", logprobs=False), INSTRUCTIONS, SHORT, LONG)
    rates = win_rates(biased, [1] * 4, [1] * 4)
    assert rates["reliable"] is False and rates["first_position_raw"] == 1.0
    assert "picks the answer shown first in 100% of its verdicts" in rates["unreliable_because"]
    assert "same winner in both orders for only 0% of pairs" in rates["unreliable_because"]
    run = {"name": "tuned", "metrics": {"judge": {**rates, "baseline": "base"}}}
    rows = {row[0]: row[1] for row in metric_rows([run])}
    assert rows["win rate vs baseline"] == UNRELIABLE and rows["length-controlled win rate"] == "-"
    assert rows["judge: verdicts for the answer shown first"] == "100.0%"
    assert judge_unreliable(run["metrics"]) == rates["unreliable_because"]
    md, page = write_report([{**run, "answers": [], "annotations": []}], tmp_path)
    assert "Unreliable judge." in md.read_text() and "Unreliable judge." in page.read_text()
    assert "not reported: unreliable judge" in page.read_text()
    # A judge whose verdicts follow quality in both orders is trusted.
    fair = win_rates(
        [PairJudgment(0.8, 0.7), PairJudgment(0.3, 0.2), PairJudgment(0.9, 0.6)], [1] * 3, [1] * 3
    )
    assert fair["reliable"] is True and fair["order_agreement"] == 1.0 and fair["unreliable_because"] is None
    assert {row[0]: row[1] for row in metric_rows([{"name": "t", "metrics": {"judge": fair}}])}[
        "win rate vs baseline"
    ] == "66.7%"
