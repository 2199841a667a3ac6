"""`pacos generate` end to end against a real scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pacos.llm.client import _retry_after
from pacos.llm.limits import RateLimiter, load_prices, price_for
from tests.scripted_teacher import CLI_ENV, Action, ScriptedTeacher, kill_when_accepted, new_task

FAST_RETRIES = ["--set", "client.backoff_base=0.01", "--set", "client.backoff_max=0.05"]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_faults_are_retried_or_rejected_with_a_counted_reason(cli, tmp_path):
    script = [
        Action("status", status=429, retry_after="0"),  # retried after Retry-After
        Action("status", status=500),  # retried with backoff
        Action("reset"),  # connection reset: retried
        Action("slow", seconds=3.0),  # slower than the timeout: retried
        Action("malformed"),  # 200 with a body that is not a completion: retried
        Action("list", tasks=3, finish_reason="length"),  # the last item is set aside as truncated
        Action("text", text="I am sorry, I cannot write tasks."),  # nothing usable
        Action("markdown", tasks=2),
        Action("list", text="", tasks=0),
    ]
    out = tmp_path / "run"
    with ScriptedTeacher(script=script) as teacher:
        result = cli(
            "generate", "--teacher", teacher.url, "--num", "8", "--out", out, *FAST_RETRIES,
            "--set", "client.timeout=1", "--set", "requests_per_round=1",
        )  # fmt: skip
    assert result.code == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accepted"] == 8 and summary["stopped"] == "target reached"
    assert summary["rejected_by_reason"]["truncated"] == 1
    assert summary["failed_requests"] == {}  # every fault was retried until an answer came
    requests = lines(out / "requests.jsonl")
    assert requests[0]["attempts"] == 6  # 429, 500, reset, timeout, malformed, then the truncated list
    assert [r["finish_reason"] for r in requests[:2]] == ["length", "stop"]
    assert len(lines(out / "accepted.jsonl")) == 8
    data = json.loads((out / "data.json").read_text())
    assert len(data) == 8 and len({r["instruction"] for r in data}) == 8
    assert cli("data", "validate", out / "data.json").code == 0


def test_retries_exhausted_count_the_failure_and_never_crash(cli, tmp_path):
    out = tmp_path / "run"
    script = [Action("status", status=503)] * 2 + [Action("list", tasks=1)]
    script += [Action("malformed")] * 2 + [Action("status", status=400)]
    with ScriptedTeacher(script=script) as teacher:
        result = cli(
            "generate", "--teacher", teacher.url, "--num", "3", "--out", out, *FAST_RETRIES,
            "--set", "client.max_retries=1", "--set", "requests_per_round=1",
        )  # fmt: skip
    assert result.code == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_requests"] == {"server_error": 1, "malformed": 1, "bad_request": 1}
    assert summary["accepted"] == 3 and summary["requests"] == 5
    errors = [r["error"] for r in lines(out / "requests.jsonl")]
    assert errors == ["server_error", None, "malformed", "bad_request", None]


def test_a_teacher_that_never_answers_stops_the_run_cleanly(cli, tmp_path):
    out = tmp_path / "run"
    with ScriptedTeacher(default=Action("status", status=500)) as teacher:
        result = cli(
            "generate", "--teacher", teacher.url, "--num", "3", "--out", out, *FAST_RETRIES,
            "--set", "client.max_retries=0", "--set", "requests_per_round=2",
        )  # fmt: skip
    assert result.code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "every request of 3 rounds in a row failed"
    assert summary["failed_requests"] == {"server_error": 6}
    assert json.loads((out / "data.json").read_text()) == []


def test_a_refused_key_is_one_line_and_the_key_is_never_written(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    out = tmp_path / "run"
    with ScriptedTeacher(default=Action("status", status=401)) as teacher:
        result = cli("generate", "--teacher", teacher.url, "--num", "3", "--out", out)
        assert teacher.requests[0]["auth"] == "Bearer sk-secret-value"
    assert result.code == 1
    assert result.err.strip().splitlines()[-1].startswith("pacos: error: teacher http://127.0.0.1:")
    assert "$OPENAI_API_KEY" in result.err and "Traceback" not in result.err
    for path in out.iterdir():
        assert "sk-secret-value" not in path.read_text()


def test_chinese_generation_keeps_new_tasks_and_rejects_near_copies(cli, tmp_path):
    import random

    from pacos.data.seeds import load_seed_tasks

    seed = next(t for t in load_seed_tasks("zh") if len(t["instruction"]) >= 12)
    near_seed = {"instruction": seed["instruction"][:-2] + "吧。", "input": "", "output": "好的。"}
    fresh = [new_task(random.Random(i), "zh") for i in range(4)]
    near_fresh = {**fresh[0], "instruction": fresh[0]["instruction"].replace("请解释", "请说明")}
    items = [fresh[0], near_seed, fresh[1], near_fresh, fresh[2], fresh[3]]
    out = tmp_path / "run"
    with ScriptedTeacher(script=[Action("list", items=items, language="zh")]) as teacher:
        result = cli("generate", "--teacher", teacher.url, "--language", "zh", "--num", "4", "--out", out)
        assert "指令：" in teacher.requests[0]["body"]["messages"][0]["content"]
    assert result.code == 0, result.err
    kept = [r["instruction"] for r in json.loads((out / "data.json").read_text(encoding="utf-8"))]
    assert kept == [t["instruction"] for t in fresh]
    rejected = lines(out / "rejected.jsonl")
    assert [(r["instruction"], r["_rejected"]["rule"]) for r in rejected] == [
        (near_seed["instruction"], "not_novel"),
        (near_fresh["instruction"], "not_novel"),
    ]
    assert seed["instruction"] in rejected[0]["_rejected"]["reason"]
    assert cli("data", "validate", out / "data.json").code == 0


def test_rerun_with_other_settings_is_refused_unless_forced(cli, tmp_path):
    out = tmp_path / "run"
    with ScriptedTeacher() as teacher:
        assert cli("generate", "--teacher", teacher.url, "--num", "3", "--out", out).code == 0
        again = cli(
            "generate", "--teacher", teacher.url, "--num", "3", "--out", out, "--set", "temperature=0.5"
        )
        assert again.code == 1 and "temperature" in again.err and "--force" in again.err
        # A larger target is not another run: it continues this one.
        more = cli("generate", "--teacher", teacher.url, "--num", "5", "--out", out)
        assert more.code == 0, more.err
        forced = cli(
            "generate",
            "--teacher",
            teacher.url,
            "--num",
            "6",
            "--out",
            out,
            "--set",
            "temperature=0.5",
            "--force",
        )
        assert forced.code == 0, forced.err
    ids = [r["id"] for r in json.loads((out / "data.json").read_text())]
    assert ids == [f"gen-{i:06d}" for i in range(1, 7)]


def test_budget_stops_cleanly_and_needs_a_price(cli, tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  scripted-teacher: {prompt: 1000.0, completion: 1000.0}\n")
    out = tmp_path / "run"
    with ScriptedTeacher() as teacher:
        result = cli(
            "generate", "--teacher", teacher.url, "--num", "50", "--out", out, "--budget", "0.5",
            "--set", f"prices={prices}", "--set", "requests_per_round=1",
        )  # fmt: skip
        assert result.code == 1
        summary = json.loads((out / "summary.json").read_text())
        assert summary["stopped"] == "budget of $0.5 reached"
        assert 0.5 <= summary["cost_usd"] < 1.5 and summary["accepted"] < 50
        unpriced = cli(
            "generate", "--teacher", teacher.url, "--num", "5", "--out", tmp_path / "b", "--budget", "1"
        )
        assert unpriced.code == 1 and "no price for model 'scripted-teacher'" in unpriced.err


def test_completions_api_continues_the_list(cli, tmp_path):
    out = tmp_path / "run"
    with ScriptedTeacher() as teacher:
        result = cli("generate", "--teacher", teacher.url, "--num", "4", "--out", out, "--api", "completions")
        body = teacher.requests[0]["body"]
    assert result.code == 0, result.err
    assert teacher.requests[0]["path"] == "/v1/completions" and body["prompt"].endswith("4. Instruction:")
    assert body["stop"] == ["\n21.", "21. "] and body["model"] == "scripted-teacher"
    assert len(json.loads((out / "data.json").read_text())) == 4


def test_killed_run_resumes_exactly(tmp_path):
    """SIGKILL halfway, rerun the same command: exactly 30 distinct examples, none lost."""
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "pacos", "generate", "--num", "30", "--out", str(out),
        "--set", "requests_per_round=1",
    ]  # fmt: skip
    with ScriptedTeacher(default=Action("list", tasks=2), delay=0.15) as teacher:
        command += ["--teacher", teacher.url]
        accepted = out / "accepted.jsonl"
        before = kill_when_accepted(command, accepted, 12, "gen-9999")
        assert not (out / "data.json").exists()  # it really died mid-run
        assert 12 <= before.count("\n") < 30
        rerun = subprocess.run(command, env=CLI_ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    kept = before.splitlines()
    rows = lines(accepted)
    assert len(rows) == 30 and accepted.read_text().splitlines()[: len(kept)] == kept
    assert len({r["instruction"] for r in rows}) == 30
    data = json.loads((out / "data.json").read_text())
    assert [r["id"] for r in data] == [f"gen-{i:06d}" for i in range(1, 31)]
    requests = lines(out / "requests.jsonl")
    assert len({r["id"] for r in requests}) == len(requests)  # the request counter continued


def test_a_rerun_with_a_smaller_num_reports_what_data_json_holds(cli, tmp_path):
    out = tmp_path / "run"
    with ScriptedTeacher() as teacher:
        assert cli("generate", "--teacher", teacher.url, "--num", "6", "--out", out).code == 0
        again = cli("generate", "--teacher", teacher.url, "--num", "4", "--out", out)
    assert again.code == 0, again.err
    assert len(lines(out / "accepted.jsonl")) == 6  # nothing already produced is lost
    assert len(json.loads((out / "data.json").read_text())) == 4
    assert json.loads((out / "summary.json").read_text())["accepted"] == 4 and "4 examples in" in again.out


def test_local_engine_teacher_runs_in_process(cli, tiny_llama, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "generate", "--teacher", f"local:{tiny_llama}", "--num", "2", "--out", out,
        "--set", "max_tokens=24", "--set", "max_requests=2", "--set", "requests_per_round=2",
    )  # fmt: skip
    assert result.code == 1  # a random tiny model writes no usable tasks: it stops at max_requests
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "max_requests=2 reached" and summary["requests"] == 2
    assert summary["completion_tokens"] > 0 and summary["cost_usd"] == 0
    assert summary["teacher"] == f"local:{tiny_llama}"


def test_bad_settings_are_one_line_errors(cli, tmp_path):
    assert "no teacher" in cli("generate", "--out", tmp_path / "x").err
    bad = cli("generate", "--teacher", "ftp://x", "--out", tmp_path / "y")
    assert bad.code == 1 and "expected http(s)://HOST:PORT/v1" in bad.err
    missing = cli("generate", "--teacher", "llama.cpp:/no/such.gguf", "--out", tmp_path / "w")
    assert missing.code == 1 and "the llama.cpp backend needs a .gguf file" in missing.err
    typo = cli("generate", "--teacher", "local:x", "--out", tmp_path / "z", "--set", "filters.disable=[nope]")
    assert typo.code == 1 and "unknown rule(s) nope" in typo.err


def test_rate_limiter_holds_requests_and_tokens_per_minute(monkeypatch):
    clock = [0.0]
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr("pacos.llm.limits.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("pacos.llm.limits.asyncio.sleep", fake_sleep)

    async def scenario() -> None:
        limiter = RateLimiter(requests_per_minute=2, tokens_per_minute=None)
        await limiter.acquire(10)
        await limiter.acquire(10)
        await limiter.acquire(10)  # the third waits until the first leaves the window
        assert clock[0] == pytest.approx(60.0)
        tokens = RateLimiter(requests_per_minute=None, tokens_per_minute=100)
        entry = await tokens.acquire(80)
        RateLimiter.settle(entry, 20)  # the teacher reported fewer tokens than reserved
        start = clock[0]
        await tokens.acquire(70)
        assert clock[0] == start  # 20 + 70 fits
        await tokens.acquire(30)
        assert clock[0] == pytest.approx(start + 60)

    asyncio.run(scenario())


def test_retry_after_and_prices():
    assert _retry_after("2.5") == 2.5 and _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait
    prices = load_prices(None)
    assert price_for("gpt-4o-mini-2024-07-18", prices) == prices["gpt-4o-mini"]
    assert price_for("my-model", prices) is None
    assert prices["gpt-4o-mini"].cost(1_000_000, 1_000_000) == pytest.approx(0.75)


def self_instruct_teacher(prompt: str, rng) -> str:
    """Answers each of Self-Instruct's three kinds of request the way a good teacher would."""
    from tests.scripted_teacher import pseudo_word

    if prompt.startswith("Come up with a series"):
        words = [" ".join(pseudo_word(rng) for _ in range(5)) for _ in range(3)]
        return f" Classify whether {words[0]} is alpha or beta.\nTask 10: Describe how {words[1]} grows.\n"
    if prompt.rstrip().endswith("Classification:"):
        return " Yes" if "Classify whether" in prompt.rsplit("Task:", 1)[1] else " No"
    if "first a class label" in prompt:
        return "Class label: alpha\nInput: first thing\nClass label: beta\nInput: second thing\n"
    return "Input: wet soil\nOutput: It grows slowly, then quickly.\nInput: a\nOutput: a\n"


def test_self_instruct_mode_runs_its_four_steps(cli, tmp_path):
    out = tmp_path / "run"
    with ScriptedTeacher(default=Action("custom", respond=self_instruct_teacher)) as teacher:
        result = cli(
            "generate", "--teacher", teacher.url, "--mode", "self-instruct", "--num", "6", "--out", out,
            "--api", "completions", "--set", "requests_per_round=1",
        )  # fmt: skip
        prompts = [r["body"]["prompt"] for r in teacher.requests]
    assert result.code == 0, result.err
    assert prompts[0].count("\nTask ") == 7 and prompts[0].endswith("Task 7:")  # 6 human, no machine yet
    assert any(p.count("\nTask ") == 9 for p in prompts)  # later: 6 human + 2 machine examples
    data = json.loads((out / "data.json").read_text())
    assert len(data) == 6
    classified = [r for r in data if r["metadata"]["is_classification"]]
    assert {r["output"] for r in classified} == {"alpha", "beta"}  # output-first: one input per label
    assert all(r["input"] in ("first thing", "second thing") for r in classified)
    other = [r for r in data if not r["metadata"]["is_classification"]]
    assert other and all(r["output"] == "It grows slowly, then quickly." for r in other)
    rejected = {r["_rejected"]["rule"] for r in lines(out / "rejected.jsonl")}
    assert "input_is_output" in rejected  # "Input: a / Output: a"
    steps = {r["step"] for r in lines(out / "requests.jsonl")}
    assert steps == {"instructions", "classify", "instances"}


def test_a_cpu_teacher_gets_small_requests_unless_the_user_chose_otherwise():
    from pacos.generate.config import GenerateConfig

    config, changed = GenerateConfig().for_cpu_teacher()
    assert (config.max_tokens, config.tasks_per_request, config.client.concurrency) == (768, 8, 2)
    assert changed == [
        "max_tokens=768",
        "tasks_per_request=8",
        "client.concurrency=2",
    ]  # magpie's: not a word
    config, changed = GenerateConfig(
        mode="magpie", max_tokens=100, client={"concurrency": 4}
    ).for_cpu_teacher()
    assert (config.max_tokens, config.client.concurrency, config.magpie.instruction_max_tokens) == (
        100,
        4,
        128,
    )
    assert changed == ["tasks_per_request=8", "magpie.instruction_max_tokens=128"]
    config, _ = GenerateConfig(prompt_examples=10, tasks_per_request=20).for_cpu_teacher()
    assert config.tasks_per_request == 20
