from __future__ import annotations

import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from pacos.errors import PacosError
from pacos.infer import SamplingParams, TorchEngine
from pacos.infer.decoder import Decoder
from pacos.infer.detokenize import TextStream
from pacos.infer.quantize import fbgemm_available
from pacos.infer.sampling import apply_repetition_penalty, sample_row
from pacos.infer.scheduler import QueueFull, Scheduler
from tests.conftest import TINY_CONFIG

PROMPTS = [
    "Hello there, how are you doing today my friend",
    "你好，世界",
    "a b c",
    "The quick brown fox jumps",
]
GREEDY = SamplingParams(max_new_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny(request, tiny_llama, tiny_gemma):
    path = tiny_llama if request.param == "llama" else tiny_gemma
    return TorchEngine.load(str(path), dtype="float32"), AutoModelForCausalLM.from_pretrained(path).eval()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    out = model.generate(
        torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
    )
    return out[0, len(ids) :].tolist()


def test_greedy_equals_transformers_alone_and_batched(tiny):
    # Gemma's tiny config has a 16-token sliding window, so these lengths cross it.
    engine, model = tiny
    singles = [engine.generate([p], GREEDY)[0] for p in PROMPTS]
    batched = engine.generate(PROMPTS, GREEDY)
    for prompt, single, batch in zip(PROMPTS, singles, batched, strict=True):
        expected = hf_greedy(model, engine.encode(prompt), 24)
        assert single.token_ids == expected
        assert batch.token_ids == expected
        assert (single.finish_reason, single.completion_tokens) == ("length", 24)
        assert single.prompt_tokens == len(engine.encode(prompt))


def test_rows_joining_and_leaving_a_running_batch_keep_their_answers(tiny):
    engine, _ = tiny
    expected = {p: engine.generate([p], GREEDY)[0].token_ids for p in PROMPTS}
    got: dict[str, list[int]] = {p: [] for p in PROMPTS}
    decoder = Decoder(engine)

    def sequence(prompt, n):
        return engine.new_sequence(
            engine.encode(prompt),
            SamplingParams(max_new_tokens=n, ignore_eos=True),
            lambda e: got[prompt].extend(e.token_ids),
        )

    decoder.add([sequence(PROMPTS[0], 24)])
    for _ in range(5):
        decoder.step()
    decoder.add([sequence(PROMPTS[1], 24), sequence(PROMPTS[2], 8)])  # the short one leaves early
    for _ in range(10):
        decoder.step()
    decoder.add([sequence(PROMPTS[3], 24)])
    while len(decoder):
        decoder.step()
    for prompt in PROMPTS:
        n = 8 if prompt == PROMPTS[2] else 24
        assert got[prompt] == expected[prompt][:n], prompt


def test_stream_matches_generate_and_stop_strings_never_leak(tiny_llama):
    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    prompt = PROMPTS[0]
    full = engine.generate([prompt], GREEDY)[0]
    events = list(engine.stream(prompt, GREEDY))
    assert "".join(e.text for e in events) == full.text
    assert [t for e in events for t in e.token_ids] == full.token_ids
    assert [e.finish_reason for e in events][-1] == "length" and all(
        e.finish_reason is None for e in events[:-1]
    )

    stop = full.text[6:9]  # a string the greedy answer really contains
    cut = full.text[: full.text.index(stop)]
    params = SamplingParams(max_new_tokens=24, ignore_eos=True, stop=["never appears", stop])
    stopped = engine.generate([prompt], params)[0]
    assert (stopped.text, stopped.finish_reason) == (cut, "stop")
    streamed = [e.text for e in engine.stream(prompt, params)]
    assert "".join(streamed) == cut
    assert all(stop not in "".join(streamed[: i + 1]) for i in range(len(streamed)))


def test_eos_ends_the_answer_and_is_not_shown(tiny_llama):
    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    sampled = SamplingParams(max_new_tokens=24, temperature=2.0, seed=1, ignore_eos=True)
    tokens = engine.generate([PROMPTS[0]], sampled)[0].token_ids
    first_new = next(i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i])
    engine.eos_ids = {tokens[first_new]}
    result = engine.generate([PROMPTS[0]], SamplingParams(**{**sampled.__dict__, "ignore_eos": False}))[0]
    assert result.finish_reason == "stop" and result.token_ids == tokens[:first_new]
    assert result.text == engine.tokenizer.decode(tokens[:first_new])
    assert engine.generate([PROMPTS[0]], sampled)[0].token_ids == tokens


def test_limits_max_new_tokens_zero_and_context_end(tiny_llama):
    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    none = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=0))[0]
    assert (none.text, none.finish_reason, none.completion_tokens) == ("", "length", 0)
    prompt_len = len(engine.encode(PROMPTS[0]))
    engine.context_length = prompt_len + 5
    capped = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=50, ignore_eos=True))[0]
    assert (capped.completion_tokens, capped.finish_reason) == (5, "length")
    with pytest.raises(PacosError, match="prompt is empty"):
        engine.generate([[]])


def test_seeded_sampling_is_reproducible_whatever_the_batch(tiny_llama):
    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    params = SamplingParams(max_new_tokens=16, temperature=1.5, top_k=50, top_p=0.95, seed=7, ignore_eos=True)
    alone = engine.generate([PROMPTS[0]], params)[0].token_ids
    in_batch = engine.generate([PROMPTS[0], PROMPTS[1], PROMPTS[0]], [params, GREEDY, params])
    assert in_batch[0].token_ids == alone and in_batch[2].token_ids == alone
    other_seed = SamplingParams(**{**params.__dict__, "seed": 8})
    assert engine.generate([PROMPTS[0]], other_seed)[0].token_ids != alone
    greedy = engine.generate([PROMPTS[0]], GREEDY)[0].token_ids
    top_1 = SamplingParams(max_new_tokens=24, temperature=1.0, top_k=1, ignore_eos=True)
    assert engine.generate([PROMPTS[0]], top_1)[0].token_ids == greedy


def _drawn(logits: torch.Tensor, n: int = 400, **settings) -> set[int]:
    params = SamplingParams(temperature=1.0, **settings)
    generator = torch.Generator().manual_seed(0)
    return {sample_row(logits, params, generator) for _ in range(n)}


def test_filters_and_repetition_penalty():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    assert _drawn(logits) == {0, 1, 2, 3, 4}
    assert _drawn(logits, top_k=2) == {0, 1}
    # Softmax mass: 0.64, 0.23, 0.09 ...: top_p 0.7 keeps the first two (the one crossing 0.7 stays).
    assert _drawn(logits, top_p=0.7) == {0, 1}
    assert _drawn(logits, top_p=0.5) == {0}
    assert _drawn(logits, top_k=3, top_p=0.75) == {0, 1}  # the nucleus of the top 3, renormalised
    # A flat vocabulary larger than the 1,024 candidates top-p looks at first: the nucleus is all of it.
    assert len(_drawn(torch.zeros(5000), n=3000, top_p=0.9)) > 1500
    penalised = logits.clone()
    apply_repetition_penalty(penalised, [0, 4, 4], 2.0)
    assert penalised.tolist() == [1.5, 2.0, 1.0, 0.0, -2.0]


def test_repetition_penalty_changes_a_repetitive_answer(tiny_llama):
    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    plain = engine.generate([PROMPTS[2]], GREEDY)[0].token_ids
    assert len(set(plain)) < len(plain) / 2  # the tiny model repeats itself
    params = SamplingParams(max_new_tokens=24, repetition_penalty=5.0, ignore_eos=True)
    penalised = engine.generate([PROMPTS[2]], params)[0]
    assert len(set(penalised.token_ids)) > len(set(plain))


def test_logprobs_are_the_models(tiny_llama):
    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    result = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=4, logprobs=3, ignore_eos=True))[0]
    ids = engine.encode(PROMPTS[0]) + result.token_ids
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    start = len(ids) - len(result.token_ids) - 1
    for i, lp in enumerate(result.logprobs):
        row = reference[start + i]
        assert lp.token_id == result.token_ids[i]
        assert lp.logprob == pytest.approx(float(row[lp.token_id]), abs=1e-4)
        assert [t for t, _ in lp.top] == torch.topk(row, 3).indices.tolist()
        assert lp.top[0][0] == lp.token_id  # greedy picks the most likely


def test_text_stream_holds_back_half_characters_and_possible_stops(tiny_tokenizer_dir, tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)  # byte-level: one Chinese character = 3 tokens
    text = "你好，世界！ stop here"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    stream = TextStream(tokenizer, stop=["stop"])
    shown = []
    for token in ids:
        piece, stopped = stream.push(token)
        assert "\ufffd" not in piece
        shown.append(piece)
        if stopped:
            break
    assert "".join(shown) == "你好，世界！ " and stopped
    plain = TextStream(tokenizer)
    assert "".join(plain.push(t)[0] for t in ids) + plain.flush() == text


def test_reduced_precision_weights_keep_the_model(tiny_llama):
    from pacos.infer.quantize import Fp16Linear, Int8Linear, Int8RowLinear, fbgemm_available

    linear = torch.nn.Linear(64, 32)
    x = torch.randn(3, 64) * torch.tensor([1.0, 10.0, 0.1])[:, None]  # rows of very different sizes
    with torch.inference_mode():
        assert torch.allclose(Int8Linear(linear)(x), linear(x), atol=0.03 * 10)
        if fbgemm_available():  # x86 CPUs
            assert torch.allclose(Fp16Linear(linear)(x), linear(x), atol=1e-2)
            int8 = Int8RowLinear(linear)
            error = (int8(x) - linear(x)).abs().amax(1)
            assert (error <= 0.02 * x.abs().amax(1)).all(), error  # relative to each row's size
            # Each row is quantized on its own: alone or batched, the same logits, bit for bit.
            assert all(torch.equal(int8(x[i : i + 1])[0], int8(x)[i]) for i in range(3))
    exact = TorchEngine.load(str(tiny_llama), dtype="float32", device="cpu")  # CPU schemes (fbgemm)
    ids = torch.tensor([exact.encode(PROMPTS[0])])
    for scheme in ("fp16", "int8") if fbgemm_available() else ("int8",):
        quantized = TorchEngine.load(str(tiny_llama), dtype="float32", quantize=scheme, device="cpu")
        assert not any(isinstance(m, torch.nn.Linear) for m in quantized.model.modules())
        with torch.no_grad():
            a, b = exact.model(ids).logits, quantized.model(ids).logits
        assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= (1.0 if scheme == "fp16" else 0.9)
    with pytest.raises(PacosError, match="quantize 'int4'"):
        TorchEngine.load(str(tiny_llama), quantize="int4")


@pytest.mark.skipif(not fbgemm_available(), reason="fbgemm: x86 CPUs")
def test_fp16_weights_multiply_many_rows_in_bf16_where_the_cpu_has_it(tiny_llama, monkeypatch):
    import pacos.device
    from pacos.infer.quantize import Fp16Linear, decoding_weights

    linear = torch.nn.Linear(64, 32)
    dual = Fp16Linear(linear, bf16_rows=4)
    x = torch.randn(6, 64)
    with torch.inference_mode():
        few, many = dual(x[:3]), dual(x)
        assert torch.equal(few, Fp16Linear(linear)(x[:3]))  # decode-sized inputs: fbgemm, fp32 math
        bf16 = torch.nn.functional.linear(x.bfloat16(), linear.weight.bfloat16(), linear.bias.bfloat16())
        assert torch.equal(many, bf16.float())  # prefill-sized inputs: the bf16 copy
        assert torch.allclose(many, linear(x), atol=0.05)
    # The copy exists only where bf16 is native; "auto" is fp16 weights with fp32 math on x86 CPUs.
    for native in (False, True):
        monkeypatch.setattr(pacos.device, "cpu_has_fast_bf16", lambda native=native: native)
        engine = TorchEngine.load(str(tiny_llama), quantize="auto", device="cpu")
        layers = [m for m in engine.model.modules() if isinstance(m, Fp16Linear)]
        assert engine.dtype == torch.float32 and layers
        assert all((m.bf16_weight is not None) == native for m in layers)
        assert decoding_weights("auto", "auto", "cpu") == ("float32", "fp16")
        assert decoding_weights("auto", "none", "cpu") == ("bfloat16" if native else "float32", "none")


def test_scheduler_batches_concurrent_requests_and_survives_failures(tiny_llama):
    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    expected = [engine.generate([p], GREEDY)[0].token_ids for p in PROMPTS]
    scheduler = Scheduler(engine, max_batch_size=3, max_waiting=8).start()
    sizes = []
    step = scheduler.decoder.step
    scheduler.decoder.step = lambda: (sizes.append(len(scheduler.decoder)), step())[1]
    done = threading.Event()
    got: dict[int, list[int]] = {i: [] for i in range(len(PROMPTS))}
    finished = []

    def on_event(i):
        def record(event):
            got[i].extend(event.token_ids)
            if event.finish_reason:
                finished.append(i)
                if len(finished) == len(PROMPTS):
                    done.set()

        return record

    for i, prompt in enumerate(PROMPTS):
        scheduler.submit(engine.encode(prompt), GREEDY, on_event(i))
    assert done.wait(60)
    assert [got[i] for i in range(len(PROMPTS))] == expected
    assert max(sizes) == 3

    # A model failure ends the requests it touched with an error, and the next request is served.
    errors = []
    broken, engine.step = engine.step, lambda *a: (_ for _ in ()).throw(RuntimeError("out of memory"))
    failed = threading.Event()

    def on_failure(event):
        if event.finish_reason:
            errors.append(event.error)
            failed.set()

    scheduler.submit(engine.encode("x"), GREEDY, on_failure)
    assert failed.wait(30) and errors == ["out of memory"]
    engine.step = broken
    again = threading.Event()
    scheduler.submit(engine.encode(PROMPTS[0]), GREEDY, lambda e: e.finish_reason == "length" and again.set())
    assert again.wait(30)
    scheduler.stop()


def test_a_stopped_scheduler_ends_the_requests_it_holds_with_an_error(tiny_llama):
    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    scheduler = Scheduler(engine)
    events = []
    scheduler.submit(engine.encode("x"), GREEDY, events.append)
    scheduler.stopping = True  # as Ctrl-C or SIGTERM before the loop took the request
    scheduler.run()
    assert [(e.finish_reason, e.error) for e in events] == [("error", "the server is shutting down")]
    assert not scheduler.waiting and not scheduler.alive


def test_scheduler_refuses_when_the_queue_is_full(tiny_llama):
    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    scheduler = Scheduler(engine, max_batch_size=1, max_waiting=1)  # not started: nothing leaves the queue
    scheduler.submit([1, 5], GREEDY, lambda e: None)
    with pytest.raises(QueueFull, match="busy"):
        scheduler.submit([1, 5], GREEDY, lambda e: None)


def test_compiled_decode_gives_the_eager_tokens_and_falls_back_when_it_fails(tiny_llama, caplog):
    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    expected = [c.token_ids for c in engine.generate(PROMPTS[:2], GREEDY)]
    engine.compile()
    assert engine.compiled_step is not None
    assert [c.token_ids for c in engine.generate(PROMPTS[:2], GREEDY)] == expected

    def broken(**kwargs):
        raise RuntimeError("inductor: no C++ compiler")

    engine.compiled_step = broken
    assert [c.token_ids for c in engine.generate(PROMPTS[:2], GREEDY)] == expected
    assert engine.compiled_step is None and "torch.compile failed (inductor: no C++ compiler)" in caplog.text


@pytest.mark.skipif(not fbgemm_available(), reason="fbgemm: x86 CPUs")
def test_compiled_ragged_steps_trace_fbgemm_weights_and_decode_the_same(tiny_llama, monkeypatch):
    """fbgemm's matmuls and the bf16 copy's run inside the compiled graph (custom ops): the same tokens as
    eager, with rows leaving and prompt chunks (eager) between compiled decode-only steps."""
    import pacos.device
    import pacos.infer.quantize

    monkeypatch.setattr(pacos.device, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(pacos.infer.quantize, "BF16_ROWS", 3)  # 3 rows: the bf16 copy; 1-2: fbgemm
    engine = TorchEngine.load(str(tiny_llama), dtype="float32", quantize="int8", device="cpu")
    assert engine.ragged and any(getattr(m, "bf16_rows", None) == 3 for m in engine.model.modules())
    params = [SamplingParams(max_new_tokens=n, ignore_eos=True) for n in (9, 4, 6)]
    expected = [engine.generate([p], q)[0].token_ids for p, q in zip(PROMPTS[:3], params, strict=True)]
    engine.compile()
    compiled, calls = engine.compiled_step, []
    engine.compiled_step = lambda **kw: calls.append(kw["pacos_step"].decode_rows) or compiled(**kw)
    decoder = Decoder(engine, prefill_chunk=3)
    prompts = [engine.encode(p) for p in PROMPTS[:3]]
    seqs = [engine.new_sequence(p, q, lambda e: None) for p, q in zip(prompts, params, strict=True)]
    decoder.add(seqs)
    while len(decoder):
        decoder.step()
    assert [s.output_ids for s in seqs] == expected
    assert engine.compiled_step is not None and 3 in calls and 1 in calls


@pytest.mark.skipif(not fbgemm_available(), reason="fbgemm: x86 CPUs")
def test_compile_warms_every_batch_shape_up_to_the_batch_size(tiny_llama, monkeypatch):
    """One row, several rows, and 16+ rows where a bf16 copy of the weights takes over are three graphs:
    all compile before the first request (a server must not stall mid-stream for a compile)."""
    from pacos.infer.quantize import Fp16Linear

    engine = TorchEngine.load(str(tiny_llama), dtype="float32", quantize="fp16", device="cpu")
    for module in engine.model.modules():
        if isinstance(module, Fp16Linear):
            module.bf16_rows = 4
    warmed: list[int] = []
    monkeypatch.setattr(engine, "generate", lambda prompts, params: warmed.append(len(prompts)))
    engine.max_batch_size = 8
    engine.compile()
    assert warmed == [1, 2, 4]
    warmed.clear()
    engine.max_batch_size = 3
    engine.compile()
    assert warmed == [1, 2]


def test_chunked_prefill_keeps_answers_and_running_rows_get_a_token_every_step(tiny):
    engine, _ = tiny
    expected = {p: engine.generate([p], GREEDY)[0].token_ids for p in PROMPTS}
    got: dict[str, list[int]] = {p: [] for p in PROMPTS}
    decoder = Decoder(engine, prefill_chunk=2)
    forwards = 0

    def count(*args, **kwargs):
        nonlocal forwards
        forwards += 1

    def sequence(prompt):
        return engine.new_sequence(engine.encode(prompt), GREEDY, lambda e: got[prompt].extend(e.token_ids))

    decoder.add([sequence(PROMPTS[0])])
    decoder.step()  # nothing running yet: the whole prompt at once; its first token comes next step
    assert not got[PROMPTS[0]] and not decoder.prefilling and len(decoder.seqs) == 1
    decoder.step()
    assert len(got[PROMPTS[0]]) == 1
    decoder.add([sequence(PROMPTS[1]), sequence(PROMPTS[3])])
    waiting = len(engine.encode(PROMPTS[1])) + len(engine.encode(PROMPTS[3]))
    steps = 0
    hook = engine.model.register_forward_pre_hook(count)
    while decoder.prefilling:  # two prompt tokens per step; the running row gets its token every step
        before = len(got[PROMPTS[0]])
        decoder.step()
        steps += 1
        assert len(got[PROMPTS[0]]) == before + 1
    hook.remove()
    assert steps == -(-waiting // 2)
    if engine.ragged:  # the running row's token and the prompt chunk ran in the same forward
        assert forwards == steps
    while len(decoder):
        decoder.step()
    assert {p: got[p] for p in (PROMPTS[0], PROMPTS[1], PROMPTS[3])} == {
        p: expected[p] for p in (PROMPTS[0], PROMPTS[1], PROMPTS[3])
    }


def test_a_failing_event_handler_cancels_only_its_own_request(tiny_llama):
    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    expected = engine.generate([PROMPTS[1]], GREEDY)[0].token_ids
    got: list[int] = []

    def broken(event):
        raise RuntimeError("event loop is closed")

    decoder = Decoder(engine)
    decoder.add([engine.new_sequence(engine.encode(PROMPTS[0]), GREEDY, broken)])
    decoder.add([engine.new_sequence(engine.encode(PROMPTS[1]), GREEDY, lambda e: got.extend(e.token_ids))])
    while len(decoder):
        decoder.step()
    assert got == expected


def test_ragged_rows_move_between_slots_and_grow_the_cache(tiny):
    # More rows than the cache has slots, a prompt longer than its first capacity (256), rows that join
    # while others are still being prefilled (their slots swap), and a row cancelled half-way through its
    # prompt: every answer stays the one transformers gives for that prompt alone.
    engine, model = tiny
    long_prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 33)
    prompts = [PROMPTS[0], long_prompt, PROMPTS[1], PROMPTS[2], PROMPTS[3]]
    expected = {p: hf_greedy(model, engine.encode(p), 6) for p in prompts}
    engine.max_batch_size, engine._spare_kv = 2, None
    got: dict[str, list[int]] = {p: [] for p in prompts}
    decoder = Decoder(engine, prefill_chunk=7)
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)

    def sequence(prompt):
        return engine.new_sequence(engine.encode(prompt), params, lambda e: got[prompt].extend(e.token_ids))

    decoder.add([sequence(p) for p in prompts[:4]])  # nothing running: all four prefilled in one forward
    decoder.step()
    assert len(decoder.seqs) == 4 and decoder.state.kv.capacity >= len(engine.encode(long_prompt))
    cancelled = sequence("a prompt that is cancelled while it is prefilled")
    decoder.add([cancelled, sequence(prompts[4])])
    decoder.step()
    cancelled.cancel()
    while len(decoder):
        decoder.step()
    assert got == expected
    assert cancelled.finished
    engine.max_batch_size = 8


def test_prompt_lookup_gives_the_greedy_answer_in_fewer_steps(tiny):
    # Prompt-lookup drafts: every kept token is the model's own greedy choice, so answers equal
    # transformers' (batched, rows joining and leaving, logprobs too), and where an answer repeats what
    # came before (tiny random models loop), one step gives a row several tokens.
    from pacos.infer.lookup import NgramIndex

    index = NgramIndex()
    index.extend([5, 6, 7, 8, 5, 6, 9, 5, 6])
    assert index.draft(3) == [9, 5, 6]  # the latest earlier "5 6" (the longest suffix found), then on
    index.extend([1])
    assert index.draft(3) == [] and NgramIndex().draft(3) == []

    engine, model = tiny
    prompts = [*PROMPTS, " ".join(["one two three four"] * 6)]
    expected = [hf_greedy(model, engine.encode(p), 24) for p in prompts]
    params = [GREEDY] * len(prompts)
    params[1] = SamplingParams(max_new_tokens=24, ignore_eos=True, logprobs=2)
    params[2] = SamplingParams(max_new_tokens=24, ignore_eos=True, temperature=0.8, seed=3)  # no drafts
    steps: list[list[list[int]] | None] = []
    step = engine.step

    def counted(state, tokens, chunks, drafts=None):
        steps.append(drafts)
        return step(state, tokens, chunks, drafts)

    engine.step = counted
    engine.max_batch_size = 3  # rows join while others run on guesses
    try:
        plain = engine.generate(prompts, params)
        plain_steps, steps[:] = len(steps), []
        engine.prompt_lookup = 4
        looked = engine.generate(prompts, params)
    finally:
        del engine.step
        engine.prompt_lookup, engine.max_batch_size = 0, 8
    for i, (a, b) in enumerate(zip(plain, looked, strict=True)):
        assert b.token_ids == a.token_ids and (b.finish_reason, b.completion_tokens) == ("length", 24)
        if i != 2:
            assert b.token_ids == expected[i]
    assert [lp.token_id for lp in looked[1].logprobs] == looked[1].token_ids
    for x, y in zip(plain[1].logprobs, looked[1].logprobs, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
        assert [t for t, _ in x.top] == [t for t, _ in y.top]
    assert any(d for drafts in steps if drafts for d in drafts)
    assert len(steps) < plain_steps


def test_local_llm_clients_and_the_cli_take_prompt_lookup(tiny_llama):
    import asyncio

    from pacos.cli.app import load_cli_engine
    from pacos.llm.client import Request, make_llm
    from pacos.llm.config import ClientConfig

    request = Request(id="1", prompt="a b c a b c a b", max_tokens=16, temperature=0.0, top_p=1.0, stop=[])
    texts = []
    for k in (0, 3):
        llm = make_llm(f"local:{tiny_llama}", None, ClientConfig(prompt_lookup=k), None)
        assert llm.engine.prompt_lookup == k
        texts.append(asyncio.run(llm.run([request]))[0].text)
    assert texts[0] == texts[1]
    engine = load_cli_engine(str(tiny_llama), "torch", "float32", "cpu", "none", False, None, prompt_lookup=4)
    assert engine.prompt_lookup == 4 and engine.takes_drafts


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "qwen3", "smollm3"])
def test_every_ragged_architecture_decodes_as_transformers(model_type, tiny_tokenizer_dir):
    # The other architectures pacos runs as ragged batches (tiny Llama and Gemma 3 are tested above):
    # greedy tokens of prompts alone and batched equal transformers' `generate` on the same weights.
    from transformers import AutoConfig, AutoTokenizer

    from pacos.infer.ragged import RAGGED_MODEL_TYPES

    assert model_type in RAGGED_MODEL_TYPES
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    extra = {"head_dim": 8} if model_type in ("qwen3", "smollm3") else {}
    config = AutoConfig.for_model(model_type, **TINY_CONFIG, vocab_size=len(tokenizer), **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    prompts = [[1, *(3 + (7 * i) % (len(tokenizer) - 3) for i in range(n))] for n in (3, 17, 40)]
    expected = [hf_greedy(model, ids, 12) for ids in prompts]
    engine = TorchEngine(model, tokenizer, "alpaca")
    assert engine.ragged
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    assert [c.token_ids for c in engine.generate(prompts, params)] == expected
    assert [engine.generate([ids], params)[0].token_ids for ids in prompts] == expected


def test_an_idle_scheduler_waits_for_requests_still_arriving(tiny_llama):
    # A front end holds `arrival()` while it parses a burst of requests: the idle scheduler waits for
    # all of them (gaps longer than its 20 ms window) and decodes them as one batch from the first step.
    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    scheduler = Scheduler(engine, max_batch_size=8)
    sizes: list[int] = []
    step = scheduler.decoder.step
    scheduler.decoder.step = lambda: (sizes.append(len(scheduler.decoder)), step())[1]
    finished = threading.Semaphore(0)
    params = SamplingParams(max_new_tokens=2, ignore_eos=True)
    with scheduler.arrival():
        scheduler.start()
        for _ in range(3):
            scheduler.submit(engine.encode("a b c"), params, lambda e: e.finish_reason and finished.release())
            time.sleep(0.05)
    assert all(finished.acquire(timeout=30) for _ in range(3))
    scheduler.stop()
    assert sizes[0] == 3 and scheduler.arriving == 0
