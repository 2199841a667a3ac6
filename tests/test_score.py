"""`pacos data score`: judge ratings (scripted endpoint, tiny local model), the expected score over rating
logprobs, caching, crash-resume, and perplexity / IFD against a hand computation."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pacos.score import (
    RatingSettings,
    expected_rating,
    judgment_key,
    length_signals,
    parse_rating,
    rating_prompt,
    read_verdict,
)
from tests.conftest import write_jsonl
from tests.scripted_teacher import Action, ScriptedTeacher


def rated_records(n: int, start: int = 0) -> list[dict]:
    """Records whose output names the rating the scripted judge will give it ("quality K")."""
    return [
        {"id": f"r{i}", "instruction": f"Describe thing number {i}.", "input": "",
         "output": f"Thing {i} is fine. quality {1 + i % 5}"}
        for i in range(start, start + n)
    ]  # fmt: skip


def rate_by_marker(prompt: str, rng) -> str:
    found = re.search(r"quality (\d)", prompt)
    return found.group(1) if found else "I would rather not say."


def judge_action() -> Action:
    return Action("custom", respond=rate_by_marker)


def serve_logprobs(teacher: ScriptedTeacher, table) -> None:
    """Make the scripted (chat) endpoint return first-token top logprobs: `table(reply text)` -> {token:
    logprob}, in the OpenAI chat shape."""
    base = teacher.server.RequestHandlerClass

    class WithLogprobs(base):  # type: ignore[misc, valid-type]
        def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
            if status == 200 and self.command == "POST":
                payload = json.loads(body)
                choice = payload["choices"][0]
                top = [{"token": t, "logprob": v} for t, v in table(choice["message"]["content"]).items()]
                choice["logprobs"] = {"content": [{"token": top[0]["token"], "logprob": top[0]["logprob"],
                                                   "top_logprobs": top}]}  # fmt: skip
                body = json.dumps(payload).encode()
            super()._send(status, body, headers)

    teacher.server.RequestHandlerClass = WithLogprobs


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PACOS_CACHE", str(tmp_path / "pacos-cache"))


# --- pure functions ----------------------------------------------------------------------------------


def test_expected_rating_is_the_renormalised_mean_over_rating_tokens():
    lp = {
        "4": math.log(0.5),
        " 4": math.log(0.1),
        "5": math.log(0.2),
        "3": math.log(0.1),
        "The": math.log(0.1),
    }
    # P(4) = 0.6, P(5) = 0.2, P(3) = 0.1 over a mass of 0.9; "The" is no rating.
    assert expected_rating(lp) == pytest.approx((4 * 0.6 + 5 * 0.2 + 3 * 0.1) / 0.9, abs=1e-12)
    assert expected_rating({"A": 0.0, "10": -1.0}) is None
    assert expected_rating(None) is None


def test_read_verdict_uses_logprobs_only_when_the_reply_starts_with_the_rating():
    lp = {"4": math.log(0.75), "2": math.log(0.25)}
    assert read_verdict("4", lp) == (pytest.approx(3.5), "logprobs")
    assert read_verdict(" 4\n", lp) == (pytest.approx(3.5), "logprobs")
    assert read_verdict("Score: 4", lp) == (4.0, "text")  # the first token's alternatives are not ratings
    assert read_verdict("4", None) == (4.0, "text")
    assert read_verdict("I cannot judge this.", lp) == (None, "unparseable")


def test_a_reply_without_a_rating_is_read_from_its_first_tokens_rating_alternatives():
    lp = {"I": math.log(0.8), "4": math.log(0.09), " 2": math.log(0.03), "The": math.log(0.05)}
    assert read_verdict("I'm sorry, but", lp, 0.05) == (
        pytest.approx((4 * 0.09 + 2 * 0.03) / 0.12),
        "first_token",
    )
    assert read_verdict("I'm sorry, but", lp, 0.2) == (None, "unparseable")  # 0.12 of the mass: too little
    assert read_verdict("I'm sorry, but", lp, None) == (None, "unparseable")
    assert read_verdict("I'm sorry, but", None, 0.05) == (None, "unparseable")
    assert read_verdict("Score: 4", lp, 0.05) == (4.0, "text")  # a written rating wins
    assert parse_rating("10 out of 10") is None and parse_rating("3/5") == 3 and parse_rating("0.5") is None


def test_length_signals_count_cjk_characters_as_words():
    en = length_signals(
        {"instruction": "Name three colours.", "input": "red or blue", "output": "Red, green."}
    )
    assert en == {"instruction_words": 3, "input_words": 3, "output_words": 2}
    zh = length_signals({"instruction": "请解释GPU的作用。", "input": "", "output": "图形处理器"})
    assert zh == {
        "instruction_words": 7,
        "input_words": 0,
        "output_words": 5,
    }  # 6 characters + "GPU"; "。" is none


def test_a_huge_loss_gives_a_capped_perplexity_that_stays_valid_json():
    from pacos.score.signals import PERPLEXITY_CAP, _perplexity

    assert _perplexity(1.0) == pytest.approx(math.e)
    assert _perplexity(5000.0) == PERPLEXITY_CAP and math.isfinite(PERPLEXITY_CAP)
    json.dumps({"ppl": _perplexity(5000.0)}, allow_nan=False)  # no Infinity in the output


def test_chinese_records_get_the_chinese_prompt():
    zh = rating_prompt({"instruction": "写一首诗。", "input": "", "output": "春眠不觉晓"})
    en = rating_prompt({"instruction": "Write a poem.", "input": "about spring", "output": "Roses."})
    assert "只回复一个 1 到 5 的数字" in zh and "写一首诗。" in zh and "春眠不觉晓" in zh
    assert "single digit from 1 to 5" in en and "Write a poem.\n\nabout spring" in en


# --- the scripted judge --------------------------------------------------------------------------------


def test_scripted_judge_ratings_cache_and_failures(cli, tmp_path):
    records = rated_records(5)
    records.append({"instruction": "Say nothing.", "input": "", "output": "no marker here"})  # unparseable
    records.append({"instruction": "请解释这个词。", "input": "", "output": "这是一个例子。quality 5"})
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out, cache = tmp_path / "scored.jsonl", tmp_path / "cache"
    # One request is refused (400: not retried): recorded as a failure, not cached.
    script = [judge_action(), Action("status", status=400)]
    with ScriptedTeacher(script=script, default=judge_action()) as teacher:
        # One request at a time: the refusal (the 2nd request) must hit a rated record, not the unparseable.
        args = ["data", "score", source, "--judge", teacher.url, "--out", out, "--cache", cache,
                "--concurrency", "1"]  # fmt: skip
        first = cli(*args, "--report", tmp_path / "report.json")
        assert first.code == 0, first.err
        assert len(teacher.requests) == 7
        scored = read_out(out)
        by_reply = {r["scoring"]["judge_from"] for r in scored}
        assert by_reply == {"text", "unparseable", "failed"}
        failed = [r for r in scored if r["scoring"]["judge_from"] == "failed"]
        assert len(failed) == 1 and "judge" not in failed[0].get("scores", {})
        assert "bad_request" in failed[0]["scoring"]["judge_error"]
        for r in scored:
            if r["scoring"]["judge_from"] == "text":
                assert r["scores"]["judge"] == float(re.search(r"quality (\d)", r["output"]).group(1))
                assert r["scoring"]["judge_model"] == teacher.url
        unparseable = next(r for r in scored if r["scoring"]["judge_from"] == "unparseable")
        assert unparseable["output"] == "no marker here"
        assert unparseable["scoring"]["judge_reply"] == "I would rather not say."
        assert "judge" not in unparseable.get("scores", {})
        assert any("只回复一个" in q["body"]["messages"][0]["content"] for q in teacher.requests)
        report = json.loads((tmp_path / "report.json").read_text())["judge"]
        assert report["calls"] == 7 and report["cache_hits"] == 0
        assert report["failed"] == {"bad_request": 1} and report["unparseable"] == 1
        assert "7 calls, 0 cache hits, 1 failed, 1 unparseable" in first.out
        # A rerun asks only for the failed record: everything answered is cached.
        second = cli(*args)
        assert second.code == 0, second.err
        assert len(teacher.requests) == 8
        assert "1 calls, 6 cache hits, 0 failed" in second.out
        assert all(r["scoring"]["judge_from"] in ("text", "unparseable") for r in read_out(out))
        # And the one after that makes no call at all.
        third = cli(*args)
        assert len(teacher.requests) == 8 and "0 calls, 7 cache hits" in third.out


def test_scripted_judge_with_logprobs_gives_the_expected_score(cli, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", rated_records(4))

    def table(text: str) -> dict[str, float]:  # the written rating at 0.6, the one below at 0.3
        r = int(text)
        low = str(max(1, r - 1)) if r > 1 else "5"
        return {text: math.log(0.6), low: math.log(0.3), "Sure": math.log(0.1)}

    with ScriptedTeacher(default=judge_action()) as teacher:
        serve_logprobs(teacher, table)
        result = cli("data", "score", source, "--judge", teacher.url, "--out", tmp_path / "o.jsonl",
                     "--judge-model", "scripted-teacher")  # fmt: skip
        assert result.code == 0, result.err
        body = teacher.requests[0]["body"]
        assert body["logprobs"] is True and body["top_logprobs"] == 5 and body["temperature"] == 0.0
    for r in read_out(tmp_path / "o.jsonl"):
        written = int(re.search(r"quality (\d)", r["output"]).group(1))
        low = max(1, written - 1) if written > 1 else 5
        assert r["scoring"]["judge_from"] == "logprobs"
        assert r["scores"]["judge"] == pytest.approx((written * 0.6 + low * 0.3) / 0.9, abs=1e-4)
        assert r["scoring"]["judge_model"] == f"{teacher.url}#scripted-teacher"


def _cache_keys(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()]


def test_killed_run_resumes_without_losing_or_repeating_judgments(cli, tmp_path):
    records = rated_records(16)
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out, cache = tmp_path / "scored.jsonl", tmp_path / "cache"
    with ScriptedTeacher(default=judge_action(), delay=0.25) as teacher:
        args = ["data", "score", str(source), "--judge", teacher.url, "--out", str(out),
                "--cache", str(cache), "--concurrency", "2"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.Popen([sys.executable, "-m", "pacos", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while len(teacher.requests) < 7 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            assert proc.poll() is None, "the run ended before it could be killed"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(30)
        assert not out.exists()  # killed before the end: no half-written output
        done_before = set(_cache_keys(cache / "judgments.jsonl"))
        assert 1 <= len(done_before) < 16
        asked_before = len(teacher.requests)
        result = cli(*args)
        assert result.code == 0, result.err
        again = [q["body"]["messages"][0]["content"] for q in teacher.requests[asked_before:]]
    settings = RatingSettings(teacher.url)
    again_keys = [judgment_key(settings.identity(), p, settings.decoding()) for p in again]
    assert not set(again_keys) & done_before  # nothing finished before the kill was asked again
    assert len(again_keys) == len(set(again_keys)) == 16 - len(done_before)
    keys = _cache_keys(cache / "judgments.jsonl")
    assert len(keys) == len(set(keys)) == 16  # every record judged exactly once, nothing duplicated
    scored = read_out(out)
    assert [r["id"] for r in scored] == [r["id"] for r in records]
    for r in scored:
        assert r["scores"]["judge"] == float(re.search(r"quality (\d)", r["output"]).group(1))


# --- a local judge and the reference model -------------------------------------------------------------


def test_local_tiny_judge_runs_end_to_end(cli, tmp_path, tiny_llama):
    source = write_jsonl(tmp_path / "in.jsonl", rated_records(3))
    args = ["data", "score", source, "--judge", f"local:{tiny_llama}", "--out", tmp_path / "o.jsonl",
            "--signals", "len", "--report", tmp_path / "r.json"]  # fmt: skip
    first = cli(*args)
    assert first.code == 0, first.err
    scored = read_out(tmp_path / "o.jsonl")
    assert len(scored) == 3
    for r in scored:
        assert r["scoring"]["judge_from"] in ("logprobs", "text", "unparseable")
        assert r["scoring"]["judge_model"] == f"local:{tiny_llama}"
        assert ("judge" in r["scores"]) == (r["scoring"]["judge_from"] != "unparseable")
        assert 1.0 <= r["scores"].get("judge", 3.0) <= 5.0
        assert r["scores"]["output_words"] == 6
    report = json.loads((tmp_path / "r.json").read_text())["judge"]
    assert report["calls"] == 3 and sum(report["read_from"].values()) == 3
    second = cli(*args)
    assert second.code == 0 and "0 calls, 3 cache hits" in second.out
    assert read_out(tmp_path / "o.jsonl") == scored


def _hand_losses(model_dir: Path, record: dict) -> tuple[float, float]:
    """Mean response loss (response + EOS) with the Alpaca prompt and after BOS alone, by
    F.cross_entropy on the full logits of the HF model."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pacos.data.templates import render_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    prompt = tok(render_prompt(record, "alpaca")).input_ids
    response = tok(record["output"], add_special_tokens=False).input_ids
    response = [*response, tok.eos_token_id]

    def loss(prefix: list[int]) -> float:
        ids = torch.tensor([prefix + response])
        with torch.no_grad():
            logits = model(ids).logits[0]
        return float(F.cross_entropy(logits[len(prefix) - 1 : -1], torch.tensor(response)))

    return loss(prompt), loss([tok.bos_token_id])


def test_ppl_and_ifd_match_a_hand_computation(cli, tmp_path, tiny_llama):
    records = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Write a long sentence about the sea.", "input": "",
         "output": "The sea is wide, deep and blue, and it moves all day under the wind."},
        {"instruction": "请解释这个词。", "input": "", "output": "这是一个例子。"},
    ]  # fmt: skip
    source = write_jsonl(tmp_path / "in.jsonl", records)
    args = ["data", "score", source, "--signals", "len,ppl,ifd", "--ref-model", tiny_llama,
            "--out", tmp_path / "o.jsonl", "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    result = cli(*args)
    assert result.code == 0, result.err
    scored = read_out(tmp_path / "o.jsonl")
    for record, got in zip(records, scored, strict=True):
        conditioned, alone = _hand_losses(tiny_llama, record)
        assert got["scores"]["ppl"] == pytest.approx(math.exp(conditioned), rel=1e-5)
        assert got["scores"]["ppl_alone"] == pytest.approx(math.exp(alone), rel=1e-5)
        assert got["scores"]["ifd"] == pytest.approx(math.exp(conditioned) / math.exp(alone), rel=1e-5)
    assert scored[2]["scores"]["output_words"] == 6  # six characters; "。" is no word
    # Cached: the rerun reads the losses back (same numbers, no model needed).
    again = cli(*args)
    assert again.code == 0 and read_out(tmp_path / "o.jsonl") == scored


def test_prompt_longer_than_max_length_is_skipped_not_cut(cli, tmp_path, tiny_llama):
    records = [{"instruction": "word " * 200, "input": "", "output": "ok"},
               {"instruction": "Hi.", "input": "", "output": "Hello."}]  # fmt: skip
    source = write_jsonl(tmp_path / "in.jsonl", records)
    result = cli("data", "score", source, "--signals", "ppl", "--ref-model", tiny_llama,
                 "--max-length", "400", "--out", tmp_path / "o.jsonl")  # fmt: skip
    assert result.code == 0, result.err
    long, short = read_out(tmp_path / "o.jsonl")
    assert "ppl" not in long.get("scores", {}) and "ref_skipped" in long["scoring"]
    assert short["scores"]["ppl"] > 1 and "ifd" not in short["scores"]  # ifd was not asked for
    assert "1 records have no ppl/ifd" in result.out


# --- bad input ----------------------------------------------------------------------------------------


def test_bad_input_is_one_line_naming_file_and_line(cli, tmp_path):
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "no output"}\n')
    result = cli("data", "score", missing, "--signals", "len", "--out", tmp_path / "o.jsonl")
    assert result.code == 1
    assert result.err.strip() == f"pacos: error: {missing}:2: field 'output': required field is missing"
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": \n')
    result = cli("data", "score", broken, "--signals", "len", "--out", tmp_path / "o.jsonl")
    assert result.code == 1 and len(result.err.strip().splitlines()) == 1
    assert result.err.startswith(f"pacos: error: {broken}:3: invalid JSON")
    assert not (tmp_path / "o.jsonl").exists()


def test_usage_errors(cli, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", rated_records(1))
    out = tmp_path / "o.jsonl"
    assert "nothing to score" in cli("data", "score", source, "--out", out).err
    assert "need a reference model" in cli("data", "score", source, "--signals", "ifd", "--out", out).err
    assert "unknown signal 'rouge'" in cli("data", "score", source, "--signals", "rouge", "--out", out).err
    bad = cli("data", "score", source, "--judge", "gpt4", "--out", out)
    assert bad.code == 1 and "expected http(s)://HOST:PORT/v1" in bad.err


def test_a_judge_that_fails_every_request_stops_the_run(cli, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", rated_records(40))
    refused = Action("status", status=400)
    with ScriptedTeacher(script=[judge_action()] * 3, default=refused) as teacher:
        result = cli("data", "score", source, "--judge", teacher.url, "--out", tmp_path / "o.jsonl",
                     "--cache", tmp_path / "cache", "--concurrency", "1")  # fmt: skip
        # Three answered, then 16 refusals in a row (one more may already be in flight when it stops).
        assert 3 + 16 <= len(teacher.requests) <= 3 + 16 + 1
    assert result.code == 1 and len(result.err.strip().splitlines()) == 1
    assert "the last 16 requests all failed (last: bad_request: 400" in result.err
    assert not (tmp_path / "o.jsonl").exists()
    assert len(_cache_keys(tmp_path / "cache" / "judgments.jsonl")) == 3
