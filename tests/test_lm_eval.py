"""lm-evaluation-harness itself against `pacos serve` (a real server on 127.0.0.1, an ephemeral port) over
the tiny random Llama, offline, on two local YAML tasks over JSONL files:

- `local-completions` on a multiple-choice task: every log-likelihood lm_eval records equals pacos's own
  computation (training's loss code, in-process) of the same continuation given the same context, to 1e-3,
  and so does its greedy flag;
- `local-chat-completions` on a generate_until task: the answers are the engine's own for those chats.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-evaluation-harness is not installed (pip install 'lm_eval[api]')"
)
pytest.importorskip(
    "aiohttp", reason="lm_eval's API models need its `api` extra (pip install 'lm_eval[api]')"
)

from lm_eval.tasks import TaskManager  # noqa: E402

from pacos.infer import TorchEngine  # noqa: E402
from pacos.infer.sampling import SamplingParams  # noqa: E402
from pacos.infer.scheduler import Scheduler  # noqa: E402
from pacos.serve import create_app  # noqa: E402
from tests.conftest import write_jsonl  # noqa: E402
from tests.test_serve import Served  # noqa: E402
from tests.test_serve_echo import pacos_loglikelihood  # noqa: E402

MODEL = "tiny"
QUESTIONS = [
    {"question": "The sky is", "choices": ["blue", "green", "made of cheese"], "label": 0},
    {"question": "Two plus two is", "choices": ["four", "five"], "label": 0},
    {"question": "Water is", "choices": ["wet", "dry", "loud and very old"], "label": 0},
]
GREEDY_CONTEXT = "Once upon a time"  # its last choice is the model's own greedy continuation
PROMPTS = [{"question": "Say hello.", "answer": "hello"}, {"question": "Name a colour.", "answer": "blue"}]
MAX_GEN = 8


@pytest.fixture(autouse=True)
def offline(monkeypatch) -> None:
    """No network: the variables for anything started from here, and the flags the hub and datasets
    libraries read them into when imported (already, by this module or another test's)."""
    import datasets
    import huggingface_hub

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


@pytest.fixture(scope="module")
def served(tiny_llama: Path):
    engine = TorchEngine.load(str(tiny_llama), dtype="float32", device="cpu")
    scheduler = Scheduler(engine, max_batch_size=8, max_waiting=64).start()
    server = Served(create_app(engine, scheduler, model_name=MODEL))
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.port}/v1", engine=engine)
    server.stop()
    scheduler.stop()


@pytest.fixture
def questions(served) -> list[dict]:
    """QUESTIONS and one whose last choice the model would write itself: lm_eval must find it greedy."""
    engine = served.engine
    answer = engine.generate([GREEDY_CONTEXT], SamplingParams(max_new_tokens=4))[0]
    assert (
        answer.text and engine.tokenizer(answer.text, add_special_tokens=False).input_ids == answer.token_ids
    )
    return [*QUESTIONS, {"question": GREEDY_CONTEXT, "choices": ["ever after", answer.text], "label": 1}]


@pytest.fixture
def tasks(tmp_path: Path, questions: list[dict]) -> TaskManager:
    """Two tasks over local JSONL files; only these are indexed (lm_eval's thousands of built-in task
    files take 15 s to scan)."""
    questions = write_jsonl(tmp_path / "questions.jsonl", questions)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    folder = tmp_path / "tasks"
    folder.mkdir()
    common = {"dataset_path": "json", "test_split": "test"}
    files = {"cache_dir": str(tmp_path / "hf-cache")}  # datasets' cache of the parsed files stays here
    configs = {
        "pacos_tiny_choice": {
            **common,
            "dataset_kwargs": {"data_files": {"test": str(questions)}, **files},
            "output_type": "multiple_choice",
            "doc_to_text": "{{question}}",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "target_delimiter": "",  # the choices are continuations as they are
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        },
        "pacos_tiny_answer": {
            **common,
            "dataset_kwargs": {"data_files": {"test": str(prompts)}, **files},
            "output_type": "generate_until",
            "doc_to_text": "{{question}}",
            "doc_to_target": "answer",
            "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": MAX_GEN},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        },
    }
    for name, config in configs.items():  # JSON is YAML
        (folder / f"{name}.yaml").write_text(json.dumps({"task": name, **config}), encoding="utf-8")
    return TaskManager(include_path=str(folder), include_defaults=False)


def test_lm_eval_loglikelihoods_equal_pacos_own_scoring(served, tasks, questions, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "base_url": f"{served.url}/completions",
            "model": MODEL,
            "tokenizer_backend": "huggingface",
            "tokenizer": str(tiny_llama),
            "tokenized_requests": True,  # token ids: the server scores exactly the tokens lm_eval counts
            "add_bos_token": True,  # as the model was trained
            "num_concurrent": 1,
            "batch_size": 4,  # lists of token-id prompts, 4 choices per request
            "max_retries": 1,
        },
        tasks=["pacos_tiny_choice"],
        task_manager=tasks,
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = results["samples"]["pacos_tiny_choice"]
    assert len(samples) == len(questions)
    assert 0 <= results["results"]["pacos_tiny_choice"]["acc,none"] <= 1

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    compared, greedy_found = 0, []
    for sample in samples:
        doc = sample["doc"]
        assert len(sample["arguments"]) == len(sample["filtered_resps"]) == len(doc["choices"])
        for argument, (loglikelihood, greedy) in zip(sample["arguments"], sample["filtered_resps"]):
            context, continuation = argument
            assert context == doc["question"] and continuation in doc["choices"]
            # lm_eval's own split of the tokens: the whole text's, after the context's (BOS first).
            ids = tokenizer(context + continuation).input_ids
            start = len(tokenizer(context).input_ids)
            want = pacos_loglikelihood(model, ids, start)
            assert loglikelihood == pytest.approx(want, abs=1e-3), (context, continuation)
            with torch.no_grad():
                best = model(torch.tensor([ids])).logits[0, start - 1 : -1].argmax(-1).tolist()
            assert greedy == (best == ids[start:])
            compared += 1
            if greedy:
                greedy_found.append((context, continuation))
    assert compared == sum(len(q["choices"]) for q in questions)
    assert (GREEDY_CONTEXT, questions[-1]["choices"][1]) in greedy_found


def test_lm_eval_generates_through_chat_completions(served, tasks):
    results = lm_eval.simple_evaluate(
        model="local-chat-completions",
        model_args={"base_url": f"{served.url}/chat/completions", "model": MODEL, "max_retries": 1},
        tasks=["pacos_tiny_answer"],
        task_manager=tasks,
        apply_chat_template=True,
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = results["samples"]["pacos_tiny_answer"]
    assert sorted(s["doc"]["question"] for s in samples) == sorted(p["question"] for p in PROMPTS)
    assert "exact_match,none" in results["results"]["pacos_tiny_answer"]
    engine = served.engine
    for sample in samples:
        chat = [{"role": "user", "content": sample["doc"]["question"]}]
        params = SamplingParams(max_new_tokens=MAX_GEN, stop=["\n\n", *engine.chat_stops()], seed=1234)
        want = engine.generate([engine.encode_chat(chat)], params)[0].text
        assert sample["filtered_resps"] == [want] and want  # greedy: the engine's own answer, not empty
