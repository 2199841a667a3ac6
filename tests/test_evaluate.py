"""`pacos eval --prompts`: answers (local and through an endpoint, cached) and the reference metrics."""

from __future__ import annotations

import json

import pytest

from pacos.evaluate.metrics import distinct_n, reference_metrics, repeated_ngram_share, rouge_l
from pacos.fileio import KeyedCache
from pacos.llm.answers import Decoding, answer_records
from pacos.models import model_identity

PROMPTS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Repeat the word.", "input": "cat", "output": "cat"},
    {"instruction": "把这句话翻译成英文。", "input": "我喜欢猫。", "output": "I like cats."},
]


def test_rouge_l_scores_chinese_on_characters():
    assert rouge_l("The cat sat.", "the cat sat") == 1.0
    assert rouge_l("我喜欢猫", "我喜欢狗") == pytest.approx(0.75)  # 3 of 4 characters in order
    assert rouge_l("我喜欢猫", "我喜欢狗", tokenizer="rouge") == 0.0  # rouge_score's tokenizer deletes them
    assert rouge_l("", "reference") == 0.0


def test_repetition_measures_looping():
    assert repeated_ngram_share("one two three four five six") == 0.0
    loop = " ".join(["the cat sat on the mat"] * 10)
    assert repeated_ngram_share(loop) > 0.8
    assert distinct_n(["a b c", "d e f"]) == 1.0 and distinct_n(["a b a b a b"]) == pytest.approx(2 / 5)


def test_reference_metrics_eos_rate_and_lengths():
    answers = [
        {"text": "Blue.", "finish_reason": "stop", "completion_tokens": 2},
        {"text": "cat cat cat", "finish_reason": "length", "completion_tokens": 8},
    ]
    metrics = reference_metrics(answers, ["Blue.", None])
    assert metrics["eos_rate"] == 0.5 and metrics["mean_new_tokens"] == 5
    assert metrics["with_reference"] == 1 and metrics["rouge_l"] == 1.0
    assert "embedding_similarity" not in metrics


def test_embedding_similarity_with_the_packaged_minilm():
    from pacos.evaluate.metrics import Embedder

    embedder = Embedder()
    same, different = embedder.similarity(
        ["A dog runs in the park.", "A dog runs in the park."],
        ["A puppy is running through the park.", "Quarterly tax filings are due in April."],
    )
    assert 0.5 < same <= 1.0 + 1e-6 and different < same - 0.3
    assert embedder.encode(["x"]).norm().item() == pytest.approx(1.0, abs=1e-5)


def test_answers_are_cached_and_a_rerun_generates_nothing(tiny_llama, tmp_path):
    cache = KeyedCache(tmp_path / "cache.jsonl")
    decoding = Decoding(max_new_tokens=6)
    first, generated = answer_records(str(tiny_llama), PROMPTS, decoding, cache=cache)
    assert generated == 3 and all(a["completion_tokens"] <= 6 for a in first)
    cache.close()
    again, generated = answer_records(
        str(tiny_llama), PROMPTS, decoding, cache=KeyedCache(tmp_path / "cache.jsonl")
    )
    assert generated == 0 and again == first
    # Other decoding settings are other answers.
    _, generated = answer_records(str(tiny_llama), PROMPTS[:1], Decoding(max_new_tokens=5), cache=cache)
    assert generated == 1
    bf16, generated = answer_records(
        str(tiny_llama), PROMPTS, Decoding(max_new_tokens=6, dtype="bfloat16"), cache=cache
    )
    assert generated == 3 and all(a["completion_tokens"] <= 6 for a in bf16)  # its own cache entries


def test_model_identity_follows_the_weights(tiny_llama, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama, copy)
    assert model_identity(str(copy)) == model_identity(str(tiny_llama))  # content, not path
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_identity(str(copy)) != model_identity(str(tiny_llama))
    assert model_identity("http://h:1/v1", "m") == "http://h:1/v1#m"


@pytest.fixture(scope="module")
def served_tiny(tiny_llama):
    """`pacos serve`'s app over the tiny model, started outside any test's output capture (uvicorn's log
    handlers keep the stream they were given)."""
    from pacos.infer import TorchEngine
    from pacos.infer.scheduler import Scheduler
    from pacos.serve import create_app
    from tests.test_serve import Served

    engine = TorchEngine.load(str(tiny_llama), dtype="float32", device="cpu")
    scheduler = Scheduler(engine, max_batch_size=8, max_waiting=64).start()
    served = Served(create_app(engine, scheduler, model_name="tiny"))
    yield f"http://127.0.0.1:{served.port}/v1"
    served.stop()
    scheduler.stop()


def test_an_endpoint_gives_the_same_answers_and_numbers_as_the_local_model(
    cli, tiny_llama, served_tiny, tmp_path, monkeypatch
):
    monkeypatch.setenv("PACOS_CACHE", str(tmp_path / "cache"))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS, ensure_ascii=False), encoding="utf-8")
    options = ["--prompts", prompts, "--max-new-tokens", "8", "--no-embeddings"]
    local = cli("eval", "--model", tiny_llama, "--out", tmp_path / "local", *options)
    assert local.code == 0, local.err
    remote = cli("eval", "--model", served_tiny, "--out", tmp_path / "remote", *options)
    assert remote.code == 0, remote.err
    rerun = cli("eval", "--model", served_tiny, "--out", tmp_path / "remote", *options)
    assert "(0 generated" in rerun.out
    a = [json.loads(line) for line in (tmp_path / "local" / "answers.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "remote" / "answers.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in a] == [r["answer"] for r in b]
    metrics_a = json.loads((tmp_path / "local" / "metrics.json").read_text())
    metrics_b = json.loads((tmp_path / "remote" / "metrics.json").read_text())
    for key in ("eos_rate", "rouge_l", "mean_new_tokens", "distinct_2", "repeated_4gram_share"):
        assert metrics_a[key] == metrics_b[key], key


def test_eval_errors_are_one_line(cli, tmp_path):
    bad = cli("eval", "--model", "x", "--prompts", tmp_path / "missing.json", "--out", tmp_path / "o")
    assert bad.code == 1 and bad.err.startswith("pacos: error:") and "Traceback" not in bad.err
    zero = cli(
        "eval", "--model", "x", "--prompts", "seed-tasks", "--out", tmp_path / "o", "--max-new-tokens", "0"
    )
    assert zero.code == 1 and "--max-new-tokens" in zero.err
    dtype = cli("eval", "--model", "x", "--prompts", "seed-tasks-zh", "--out", tmp_path / "o",
                "--dtype", "float8", "--no-embeddings")  # fmt: skip
    assert dtype.code == 1 and "dtype 'float8'" in dtype.err and "Traceback" not in dtype.err


def test_judged_eval_writes_annotations_and_a_rerun_makes_no_calls(cli, tiny_llama, tmp_path, monkeypatch):
    from tests.scripted_teacher import Action, ScriptedTeacher

    def prefers_the_longer(prompt: str, rng) -> str:
        first = prompt.split("## Answer A\n")[1].split("\n\n## Answer B")[0]
        second = prompt.split("## Answer B\n")[1].split("\n\nWhich answer")[0]
        return "A" if len(first) >= len(second) else "B"

    monkeypatch.setenv("PACOS_CACHE", str(tmp_path / "cache"))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS, ensure_ascii=False), encoding="utf-8")
    options = ["--model", tiny_llama, "--prompts", prompts, "--out", tmp_path / "out",
               "--max-new-tokens", "8", "--no-embeddings"]  # fmt: skip
    with ScriptedTeacher(default=Action("custom", respond=prefers_the_longer)) as judge:
        first = cli("eval", *options, "--judge", judge.url)
        assert first.code == 0, first.err
        assert len(judge.requests) == 6  # 3 pairs, both orders
        assert judge.requests[0]["body"]["max_tokens"] == 1 and judge.requests[0]["body"]["logprobs"] is True
        again = cli("eval", *options, "--judge", judge.url)
        assert again.code == 0 and len(judge.requests) == 6  # zero judge calls
        assert "(0 generated" in again.out and "0 judge calls" in again.out
        # The model against itself, with the references shown: identical answers, so this judge always says
        # "A": it fails the position check and no win rate is reported.
        guided = cli("eval", "--model", tiny_llama, "--prompts", prompts, "--out", tmp_path / "self",
                     "--max-new-tokens", "8", "--no-embeddings", "--judge", judge.url, "--baseline",
                     tiny_llama, "--reference-guided")  # fmt: skip
        assert guided.code == 0, guided.err
        shown = [r["body"].get("prompt") or r["body"]["messages"][-1]["content"] for r in judge.requests[6:]]
        assert len(shown) == 6 and all("## Reference answer" in text for text in shown)
        assert PROMPTS[0]["output"] in shown[0] or PROMPTS[0]["output"] in shown[1]
        assert "no win rate reported" in guided.out and "picks the answer shown first" in guided.out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["judge"]
    assert metrics["n"] == 3 and metrics["wins"] + metrics["ties"] + metrics["losses"] == 3
    assert {"win_rate", "standard_error", "length_controlled_win_rate"} <= set(metrics)
    rows = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert [r["output_1"] for r in rows] == [p["output"] for p in PROMPTS]
    assert all(1 <= r["preference"] <= 2 and r["generator_1"] == "references" for r in rows)


def test_ifeval_runs_the_bundled_prompts_through_the_model(cli, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("PACOS_CACHE", str(tmp_path / "cache"))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS[:1]), encoding="utf-8")
    result = cli("eval", "--model", tiny_llama, "--prompts", prompts, "--out", tmp_path / "out",
                 "--max-new-tokens", "4", "--no-embeddings", "--ifeval")  # fmt: skip
    assert result.code == 0, result.err
    scores = json.loads((tmp_path / "out" / "metrics.json").read_text())["ifeval"]
    assert scores["prompts"] >= 100 and set(scores["by_language"]) == {"en", "zh"}
    assert 0 <= scores["prompt_strict"] <= scores["prompt_loose"] <= 1
    rows = [json.loads(line) for line in (tmp_path / "out" / "ifeval.jsonl").read_text().splitlines()]
    assert len(rows) == scores["prompts"] and {"answer", "strict", "loose", "instructions"} <= set(rows[0])


def test_data_loss_is_the_response_only_loss_transformers_computes(cli, tiny_llama, tmp_path):
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pacos.data.templates import render_prompt

    data = tmp_path / "val.json"
    data.write_text(json.dumps(PROMPTS, ensure_ascii=False), encoding="utf-8")
    result = cli("eval", "--model", tiny_llama, "--data", data, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    loss = json.loads((tmp_path / "out" / "metrics.json").read_text())["data_loss"]
    # The reference: prompt tokens labelled -100, response + EOS labelled, summed over all examples.
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    total = count = 0.0
    for record in PROMPTS:
        prompt = tok(render_prompt(record, "alpaca"), add_special_tokens=True).input_ids
        response = [*tok(record["output"], add_special_tokens=False).input_ids, tok.eos_token_id]
        ids = torch.tensor([prompt + response])
        labels = torch.tensor([[-100] * len(prompt) + response])
        with torch.no_grad():
            mean = model(input_ids=ids, labels=labels).loss.item()
        total, count = total + mean * len(response), count + len(response)
    assert loss["loss"] == pytest.approx(total / count, rel=1e-4)
    assert loss["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert loss["examples"] == 3 and loss["template"] == "alpaca"
    nothing = cli("eval", "--model", tiny_llama, "--out", tmp_path / "o2")
    assert nothing.code == 1 and "nothing to evaluate" in nothing.err


def _fake_run(directory, name: str, eos: list[bool]) -> None:
    directory.mkdir(parents=True)
    rows = [
        {
            **p,
            "answer": f"{name} answer {i} 中文",
            "finish_reason": "stop" if e else "length",
            "new_tokens": 5 + i,
        }
        for i, (p, e) in enumerate(zip(PROMPTS, eos))
    ]
    (directory / "answers.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    metrics = {"model": name, "eos_rate": sum(eos) / len(eos), "rouge_l": 0.25, "mean_new_tokens": 6.0}
    (directory / "metrics.json").write_text(json.dumps(metrics))


def test_compare_renders_two_runs_into_a_self_contained_page(cli, tmp_path):
    _fake_run(tmp_path / "base", "base", [False, False, False])
    _fake_run(tmp_path / "tuned", "tuned", [True, True, False])
    result = cli(
        "eval", "--compare", tmp_path / "base", "--compare", tmp_path / "tuned", "--out", tmp_path / "r"
    )
    assert result.code == 0, result.err
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "<td>answers ending with EOS</td><td>0.0%</td><td>66.7%</td>" in page
    assert page.count('src="data:image/png;base64,') >= 2 and "http" not in page.replace("http-equiv", "")
    assert "tuned answer 0 中文" in page and "base answer 2 中文" in page and "I like cats." in page
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "| answers ending with EOS | 0.0% | 66.7% |" in md and (tmp_path / "r" / "lengths.png").exists()
    bad = cli("eval", "--compare", tmp_path / "nothing", "--out", tmp_path / "r2")
    assert bad.code == 1 and "not a pacos eval run" in bad.err


def test_report_opens_in_headless_chromium(cli, tmp_path):
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium here (.ci/run installs it from Debian packages)")
    _fake_run(tmp_path / "base", "base", [False, True, False])
    _fake_run(tmp_path / "tuned", "tuned", [True, True, True])
    assert (
        cli(
            "eval", "--compare", tmp_path / "base", "--compare", tmp_path / "tuned", "--out", tmp_path / "r"
        ).code
        == 0
    )
    page = (tmp_path / "r" / "report.html").as_uri()
    flags = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1200,1400",
    ]
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert 'id="metrics"' in dom.stdout and "tuned answer 1" in dom.stdout and "<img" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", page], capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1200, 1400)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 50  # a table, plots and text, not a blank page
