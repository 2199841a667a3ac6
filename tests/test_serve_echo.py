"""Prompt log-probs: the engine's `prompt_logprobs` and `pacos serve`'s `echo` with `logprobs` (OpenAI's
legacy completions format, what lm-evaluation-harness's `local-completions` scores continuations with),
checked against training's own loss code run on the tiny random Llama in-process."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest
import torch

import pacos.infer.decoder as decoder_module
from pacos.infer import TorchEngine
from pacos.infer.decoder import Decoder
from pacos.infer.sampling import SamplingParams
from pacos.infer.scheduler import Scheduler
from pacos.serve import create_app
from tests.test_serve import API_KEY, Served, assert_error, call

MODEL = "tiny"
URL = "/v1/completions"
TEXT = "Hello there, how are you?"


def pacos_loglikelihood(model: Any, ids: list[int], start: int) -> float:
    """log p(ids[start:] | ids[:start]) as pacos's training and `pacos eval` loss compute it
    (pacos.train.loss.CausalLMLoss: the decoder's hidden states through the LM head, cross-entropy summed
    over the labelled tokens), negated."""
    from pacos.train.data import IGNORE
    from pacos.train.loss import CausalLMLoss

    targets = [IGNORE] * (start - 1) + ids[start:] + [IGNORE]  # position i predicts token i + 1
    with torch.no_grad():
        loss, count = CausalLMLoss(model).eval()(
            torch.tensor([ids]), torch.arange(len(ids))[None], None, torch.tensor([targets])
        )
    assert int(count) == len(ids) - start
    return -float(loss)


def token_logprobs(model: Any, ids: list[int]) -> list[float]:
    """Each token's log-prob given the ones before it, one by one through training's loss code."""
    return [pacos_loglikelihood(model, ids[: i + 1], i) for i in range(1, len(ids))]


@pytest.fixture(scope="module")
def hf_model(tiny_llama: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(tiny_llama: Path) -> TorchEngine:
    return TorchEngine.load(str(tiny_llama), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def server(engine: TorchEngine):
    scheduler = Scheduler(engine, max_batch_size=8, max_waiting=64).start()
    served = Served(create_app(engine, scheduler, api_key=API_KEY, model_name=MODEL))
    yield SimpleNamespace(port=served.port, scheduler=scheduler)
    served.stop()
    scheduler.stop()


def post(server: SimpleNamespace, **body: Any) -> dict[str, Any]:
    status, _, answer = call(server.port, "POST", URL, {"model": MODEL, "temperature": 0, **body})
    assert status == 200, answer
    return answer


# -- the engine --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ragged", [True, False], ids=["ragged", "padded"])
def test_engine_prompt_logprobs_are_trainings_and_leave_the_answer_unchanged(
    tiny_llama, hf_model, engine, ragged, monkeypatch
):
    if not ragged:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
        engine = TorchEngine(model, engine.tokenizer, engine.template, ragged=False)
    assert engine.ragged == ragged
    # Prompts scored over several forwards, the second waiting for room in a step.
    monkeypatch.setattr(decoder_module, "SCORED_PER_STEP", 7)
    prompts = [engine.encode(TEXT), engine.encode("a b"), engine.encode("not scored at all")]
    params = [
        SamplingParams(max_new_tokens=0, prompt_logprobs=3),
        SamplingParams(max_new_tokens=4, prompt_logprobs=0, logprobs=1, ignore_eos=True),
        SamplingParams(max_new_tokens=4, ignore_eos=True),
    ]
    scored, generated, plain = engine.generate(prompts, params)
    assert scored.finish_reason == "length" and scored.completion_tokens == 0 and scored.text == ""
    assert plain.prompt_logprobs is None

    for done, ids, k in ((scored, prompts[0], 3), (generated, prompts[1], 0)):
        lps = done.prompt_logprobs
        assert len(lps) == len(ids) and lps[0] is None
        assert [lp.token_id for lp in lps[1:]] == ids[1:]
        got = [lp.logprob for lp in lps[1:]]
        assert got == pytest.approx(token_logprobs(hf_model, ids), abs=1e-4)
        for lp in lps[1:]:
            assert len(lp.top) == k and all(v <= lp.top[0][1] for _, v in lp.top)
            assert not k or lp.logprob <= lp.top[0][1]
    # The answer after a scored prompt is the one a plain request gets, its logprobs included.
    alone = engine.generate([prompts[1]], params[1])[0]
    assert generated.token_ids == alone.token_ids == engine.generate([prompts[1]], params[2])[0].token_ids
    assert [lp.logprob for lp in generated.logprobs] == pytest.approx([lp.logprob for lp in alone.logprobs])


def test_a_prompt_scored_in_chunks_beside_a_streaming_row(engine, hf_model):
    # With a row streaming, prompts are admitted prefill_chunk tokens a step, in the decode step's
    # forward (ragged): the scored prompt's positions ride in that forward too.
    greedy = SamplingParams(max_new_tokens=40, ignore_eos=True)
    want = engine.generate(["abc"], greedy)[0].token_ids
    streamed: list[int] = []
    events: list[Any] = []
    decoder = Decoder(engine, prefill_chunk=3)
    decoder.add([engine.new_sequence(engine.encode("abc"), greedy, lambda e: streamed.extend(e.token_ids))])
    decoder.step()
    decoder.step()
    ids = engine.encode(TEXT)
    decoder.add(
        [engine.new_sequence(ids, SamplingParams(max_new_tokens=0, prompt_logprobs=1), events.append)]
    )
    steps = 0
    while decoder.prefilling:
        before = len(streamed)
        decoder.step()
        steps += 1
        assert len(streamed) == before + 1  # the running row got its token
    assert steps == -(-len(ids) // 3)
    (event,) = events  # finished as soon as its prompt ran: one event, no token
    assert event.finish_reason == "length" and event.token_ids == [] and event.completion_tokens == 0
    lps = event.prompt_logprobs
    assert lps[0] is None and [lp.logprob for lp in lps[1:]] == pytest.approx(
        token_logprobs(hf_model, ids), abs=1e-4
    )
    while len(decoder):
        decoder.step()
    assert streamed == want


def test_engine_scores_a_one_token_prompt_and_refuses_a_bad_setting(engine):
    done = engine.generate([[5]], SamplingParams(max_new_tokens=0, prompt_logprobs=1))[0]
    assert done.prompt_logprobs == [None] and done.finish_reason == "length"
    with pytest.raises(Exception, match="prompt_logprobs must be between 0 and 20"):
        SamplingParams(prompt_logprobs=21)


# -- the server --------------------------------------------------------------------------------------------


def test_echo_with_logprobs_and_no_answer_scores_the_prompt(server, engine, hf_model):
    got = post(server, prompt=TEXT, echo=True, logprobs=2, max_tokens=0)
    (choice,) = got["choices"]
    ids = engine.encode(TEXT)
    assert choice["text"] == TEXT and choice["finish_reason"] == "length"
    assert got["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert all(len(lp[key]) == len(ids) for key in lp)
    assert lp["tokens"] == [engine.tokenizer.decode([i]) for i in ids] and lp["tokens"][0] == "<bos>"
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx(token_logprobs(hf_model, ids), abs=1e-4)
    offsets = [0]
    for token in lp["tokens"][:-1]:
        offsets.append(offsets[-1] + len(token))
    assert lp["text_offset"] == offsets
    for token, logprob, top in zip(lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:]):
        # The 2 most likely tokens and the prompt's own (the same float when it is one of them).
        assert top[token] == logprob and 2 <= len(top) <= 3 and logprob <= max(top.values())


def test_lm_eval_requests_token_ids_batched_with_one_answer_token(server, engine, hf_model):
    # What local-completions sends (tokenized_requests=True, batch_size=2): token-id prompts without
    # BOS, max_tokens 1, logprobs 1, and it reads token_logprobs[ctxlen:-1] (the last is the answer's).
    contexts = [engine.tokenizer("The sky is", add_special_tokens=False).input_ids, [40, 41, 42, 43]]
    continuations = [engine.tokenizer(" blue", add_special_tokens=False).input_ids, [44, 45]]
    prompts = [c + x for c, x in zip(contexts, continuations)]
    got = post(server, prompt=prompts, echo=True, logprobs=1, max_tokens=1, seed=1234)
    assert [c["index"] for c in got["choices"]] == [0, 1]
    for choice, prompt, context in zip(got["choices"], prompts, contexts):
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(prompt) + 1 and choice["text"].startswith(
            engine.tokenizer.decode(prompt)
        )
        answer = engine.generate([prompt], SamplingParams(max_new_tokens=1, logprobs=1))[0]
        assert choice["text"] == engine.tokenizer.decode(prompt) + answer.text
        assert lp["token_logprobs"][-1] == pytest.approx(answer.logprobs[0].logprob)
        continuation = lp["token_logprobs"][len(context) : -1]
        want = pacos_loglikelihood(hf_model, prompt, len(context))
        assert math.isclose(sum(continuation), want, abs_tol=1e-4)
        # Greedy as lm_eval checks it: the token's log-prob is the best of its top dict, exactly.
        greedy = [
            t == max(top.values()) for t, top in zip(continuation, lp["top_logprobs"][len(context) : -1])
        ]
        with torch.no_grad():
            best = hf_model(torch.tensor([prompt])).logits[0, len(context) - 1 : -1].argmax(-1).tolist()
        assert greedy == [b == t for b, t in zip(best, prompt[len(context) :])]


def test_echo_with_answers_n_and_text_batches(server, engine):
    plain = post(server, prompt=["abc", "12345"], logprobs=1, max_tokens=3, ignore_eos=True)
    echoed = post(server, prompt=["abc", "12345"], echo=True, logprobs=1, max_tokens=3, ignore_eos=True, n=2)
    assert [c["index"] for c in echoed["choices"]] == [0, 1, 2, 3]
    for i, choice in enumerate(echoed["choices"]):
        prompt, alone = ["abc", "12345"][i // 2], plain["choices"][i // 2]
        ids = engine.encode(prompt)
        assert choice["text"] == prompt + alone["text"]
        lp = choice["logprobs"]
        # The prompt's tokens, then the answer's as a request without echo gets them (batched
        # differently: equal up to float32 rounding).
        assert lp["tokens"][len(ids) :] == alone["logprobs"]["tokens"]
        assert lp["token_logprobs"][len(ids) :] == pytest.approx(
            alone["logprobs"]["token_logprobs"], abs=1e-5
        )
        for top, want in zip(lp["top_logprobs"][len(ids) :], alone["logprobs"]["top_logprobs"]):
            assert top == pytest.approx(want, abs=1e-5)
        assert lp["token_logprobs"][0] is None and None not in lp["token_logprobs"][1:]
    # echo without logprobs: the text only, no model run for max_tokens 0.
    got = post(server, prompt=[[1, 40, 41]], echo=True, max_tokens=0)
    assert (
        got["choices"][0]["text"] == engine.tokenizer.decode([1, 40, 41])
        and got["choices"][0]["logprobs"] is None
    )


def test_echo_through_the_official_client(server, engine, hf_model):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=API_KEY, max_retries=0)
    got = client.completions.create(
        model=MODEL, prompt=TEXT, echo=True, logprobs=0, max_tokens=0, temperature=0
    )
    lp = got.choices[0].logprobs
    assert got.choices[0].text == TEXT and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert sum(lp.token_logprobs[1:]) == pytest.approx(
        pacos_loglikelihood(hf_model, engine.encode(TEXT), 1), abs=1e-4
    )
    assert all(len(top) == 1 for top in lp.top_logprobs[1:])  # logprobs 0: the prompt's own token only


@pytest.mark.parametrize(
    "body, param, message",
    [
        ({"echo": True, "logprobs": 1, "stream": True}, "echo", "echo: not supported with stream"),
        ({"echo": True, "logprobs": 6}, "logprobs", "logprobs: "),
        ({"echo": "yes", "logprobs": 1}, "echo", "echo: "),
        ({"echo": True, "logprobs": 1, "max_tokens": 2048}, "prompt", "maximum context length"),
    ],
)
def test_bad_echo_requests_are_a_400(server, body, param, message):
    status, _, got = call(server.port, "POST", URL, {"prompt": TEXT, **body})
    assert_error(status, got, 400, param)
    assert message in got["error"]["message"]
