"""Training building blocks on tiny random models: labels, loss, packing, accumulation."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from pacos.models import load_model, load_tokenizer
from pacos.train import attention as packed_attention
from pacos.train.config import TrainConfig
from pacos.train.data import (
    IGNORE,
    StepPlan,
    collate,
    loop_example,
    loop_examples,
    micro_batches,
    tokenize_record,
    tokenize_records,
)
from pacos.train.distributed import setup
from pacos.train.loss import CausalLMLoss, linear_cross_entropy
from pacos.train.run import accumulate_gradients, build_model, lr_factor

RECORD = {"instruction": "Say hi.", "input": "", "output": "Hi there."}


def test_label_mask_prompt_ignored_first_response_token_and_eos_labelled(tiny_llama):
    tok = load_tokenizer(str(tiny_llama))
    example, status = tokenize_record(RECORD, tok, "alpaca", 512, "drop")
    assert status == "ok"
    prompt_ids = tok(
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nSay hi.\n\n### Response:"
    ).input_ids
    response_ids = tok("Hi there.", add_special_tokens=False).input_ids
    assert prompt_ids[0] == tok.bos_token_id
    assert example.input_ids == [*prompt_ids, *response_ids, tok.eos_token_id]
    p = len(prompt_ids)
    assert example.targets[: p - 1] == [IGNORE] * (p - 1)  # no prompt token is a target
    assert example.targets[p - 1] == response_ids[0]  # the first response token is predicted from the prompt
    assert example.targets[-2] == tok.eos_token_id  # EOS is a target
    assert example.targets[-1] == IGNORE  # nothing follows the last token
    labelled = [t for t in example.targets if t != IGNORE]
    assert labelled == [*response_ids, tok.eos_token_id]


def test_padding_is_never_labelled_even_when_pad_is_eos(tiny_llama):
    tok = load_tokenizer(str(tiny_llama))
    long_record = {**RECORD, "output": "A much longer answer than the first one."}
    examples = [tokenize_record(r, tok, "alpaca", 512, "drop")[0] for r in (RECORD, long_record)]
    batch = collate(examples, pad_id=tok.eos_token_id, packing=False)  # the classic pad == EOS setup
    short = len(examples[0])
    assert batch.attention_mask[0, short:].sum() == 0
    assert (batch.targets[0, short:] == IGNORE).all()
    assert (batch.targets[0] == tok.eos_token_id).sum() == 1  # EOS is still labelled once
    assert batch.labelled == sum(t != IGNORE for e in examples for t in e.targets)


def test_truncation_drop_and_cut(tiny_llama):
    tok = load_tokenizer(str(tiny_llama))
    record = {**RECORD, "output": "x" * 400}
    assert tokenize_record(record, tok, "alpaca", 200, "drop") == (None, "too_long")
    cut, status = tokenize_record(record, tok, "alpaca", 200, "cut")
    assert status == "cut" and len(cut) == 200
    assert tok.eos_token_id not in cut.input_ids  # a cut answer must not teach the model to stop there
    examples, report = tokenize_records([RECORD, record], tok, "alpaca", 200, "drop")
    assert len(examples) == 1 and report.dropped_too_long == 1


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_fused_loss_matches_full_logits(softcap):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(101, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(101, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 101, (37,))
    fused = linear_cross_entropy(hidden, weight, bias, targets, chunk_size=8, softcap=softcap)
    fused.backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    logits = hidden @ weight.T + bias
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    reference = F.cross_entropy(logits, targets, reduction="sum")
    reference.backward()
    assert torch.allclose(fused, reference, rtol=1e-10)
    for got, t in zip(grads, (hidden, weight, bias)):
        assert torch.allclose(got, t.grad, rtol=1e-9, atol=1e-12)
    with torch.no_grad():  # validation's path: the loss alone
        alone = linear_cross_entropy(hidden, weight, bias, targets, chunk_size=8, softcap=softcap)
    assert torch.allclose(alone, reference, rtol=1e-10)


@pytest.fixture
def compiled_loss(monkeypatch):
    """The fused loss as real runs use it: compiled with inductor (tests/conftest.py turns that off)."""
    from pacos.train import loss

    monkeypatch.setattr(loss, "_COMPILE", True)
    monkeypatch.setattr(loss, "_compiled", {})


@pytest.mark.parametrize(("softcap", "alpha"), [(None, 0.7), (30.0, 0.7), (None, 0.0)])
def test_unlikelihood_and_weights_match_the_definition(softcap, alpha, compiled_loss):
    """Welleck et al.'s token-level loss, written the slow way: at position t of an example, the set of
    earlier targets of that example minus the target at t, each token once; -log(1 - p) over the set.
    Plus per-position weights on the cross-entropy (how EOS gets its weight)."""
    torch.manual_seed(1)
    vocab = 13  # few tokens, so responses repeat them
    hidden = torch.randn(41, 8, dtype=torch.float64, requires_grad=True)
    weight = (torch.randn(vocab, 8, dtype=torch.float64) * 2).requires_grad_(True)
    targets = torch.randint(0, vocab, (41,))
    example_ids = torch.tensor([0] * 9 + [1] * 20 + [2] * 12)
    weights = torch.rand(41, dtype=torch.float64) + 0.5
    unlike = torch.zeros(41, dtype=torch.float64)
    unlike[[3, 17, 18, 40]] = 1.5  # targets to unlearn: 1.5 * -log(1 - p_target) instead of their CE
    fused = linear_cross_entropy(
        hidden, weight, None, targets, 8, softcap, alpha, example_ids, weights, unlike
    )
    fused.backward()
    grads = [hidden.grad.clone(), weight.grad.clone()]
    hidden.grad = weight.grad = None

    logits = hidden @ weight.T
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logp = logits.log_softmax(-1)
    ce = F.cross_entropy(logits, targets, reduction="none")
    p_target = logp.gather(1, targets[:, None]).squeeze(1).exp()
    reference = torch.where(unlike > 0, -unlike * torch.log1p(-p_target), ce * weights).sum()
    n_candidates = 0
    for t in range(len(targets)):
        same = [s for s in range(t) if example_ids[s] == example_ids[t]]
        candidates = {int(targets[s]) for s in same} - {int(targets[t])}
        n_candidates += len(candidates)
        for c in candidates:
            reference = reference - alpha * torch.log1p(-logp[t, c].exp())
    reference.backward()
    assert n_candidates > 100 or alpha == 0  # the example exercises the candidate sets
    assert torch.allclose(fused, reference, rtol=1e-9)
    assert torch.allclose(grads[0], hidden.grad, rtol=1e-7, atol=1e-10)
    assert torch.allclose(grads[1], weight.grad, rtol=1e-7, atol=1e-10)


def test_fused_loss_bf16_head_under_autocast_matches_fp64():
    """The LoRA path: a frozen bf16 head, bf16 matmuls, the softmax and the sum in fp32."""
    torch.manual_seed(0)
    hidden64 = torch.randn(45, 32, dtype=torch.float64)
    weight = (torch.randn(1000, 32) * 0.3).to(torch.bfloat16)
    targets = torch.randint(0, 1000, (45,))
    hidden = hidden64.float().requires_grad_(True)
    with torch.autocast("cpu", torch.bfloat16):
        fused = linear_cross_entropy(hidden, weight, None, targets, chunk_size=16)
    fused.backward()
    h = hidden64.to(torch.bfloat16).double().requires_grad_(True)
    reference = F.cross_entropy(h @ weight.double().T, targets, reduction="sum")
    reference.backward()
    assert fused.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    assert torch.allclose(fused.double(), reference, rtol=2e-3)
    assert torch.allclose(hidden.grad.double(), h.grad, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma"])
def test_per_example_attention_equals_the_masked_padded_batch(arch, request):
    """pacos's packed attention (one causal SDPA call per example, train/attention.py) gives the loss and
    gradients of transformers' padded batch; Gemma's 16-token sliding window is shorter than the examples."""
    path = request.getfixturevalue(arch)
    tok = load_tokenizer(str(path))
    records = [
        {"instruction": f"Task {i}.", "input": "x" * (5 * i), "output": "y" * (7 + 3 * i)} for i in range(4)
    ]
    examples = [tokenize_record(r, tok, "alpaca", 512, "drop")[0] for r in records]
    assert max(len(e) for e in examples) > 16
    results = []
    for packing in (True, False):
        model = load_model(str(path))
        if packing:
            model.set_attn_implementation(packed_attention.register())
        b = collate(examples, tok.pad_token_id, packing)
        loss, _ = CausalLMLoss(model, chunk_size=16)(b.input_ids, b.position_ids, b.attention_mask, b.targets)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (packed, packed_grads), (padded, padded_grads) = results
    assert torch.allclose(packed, padded, rtol=1e-5), (packed, padded)
    for got, want in zip(packed_grads, padded_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)


def test_packing_trains_with_per_example_attention(tiny_llama):
    runtime = setup("cpu", "fp32")
    packed = build_model(TrainConfig(model=str(tiny_llama)), runtime, load_tokenizer(str(tiny_llama)))
    assert packed.config._attn_implementation == packed_attention.NAME
    config = TrainConfig(model=str(tiny_llama), packing=False)
    padded = build_model(config, runtime, load_tokenizer(str(tiny_llama)))
    assert padded.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma"])
def test_packed_rows_equal_padded_rows(arch, request):
    """Packing must not let examples see each other (Gemma's sliding-window layers included)."""
    path = request.getfixturevalue(arch)
    tok, model = load_tokenizer(str(path)), load_model(str(path))
    records = [
        {"instruction": f"Task {i}.", "input": "x" * (5 * i), "output": "y" * (7 + 3 * i)} for i in range(4)
    ]
    examples = [tokenize_record(r, tok, "alpaca", 512, "drop")[0] for r in records]
    loss_model = CausalLMLoss(model, chunk_size=16)
    results = []
    for packing in (True, False):
        b = collate(examples, tok.pad_token_id, packing)
        results.append(loss_model(b.input_ids, b.position_ids, b.attention_mask, b.targets))
    (packed, n_packed), (padded, n_padded) = results
    assert n_packed == n_padded
    assert torch.allclose(packed, padded, rtol=1e-5), (packed, padded)
    # and the loss equals the plain transformers loss computed example by example
    total = 0.0
    for e in examples:
        ids = torch.tensor([e.input_ids])
        logits = model(ids).logits[0].float()
        targets = torch.tensor(e.targets)
        total += F.cross_entropy(logits[targets != IGNORE], targets[targets != IGNORE], reduction="sum")
    assert torch.allclose(packed, total, rtol=1e-5)


def test_unlikelihood_per_example_in_training_only(tiny_llama):
    """Candidates never cross examples (packed equals padded), and validation loss stays plain CE."""
    tok, model = load_tokenizer(str(tiny_llama)), load_model(str(tiny_llama))
    records = [
        {"instruction": f"Task {i}.", "input": "", "output": "abc de fgh ab cd " * (i + 1)} for i in range(3)
    ]
    examples = [tokenize_record(r, tok, "alpaca", 512, "drop")[0] for r in records]
    plain, with_ul = CausalLMLoss(model, chunk_size=16), CausalLMLoss(model, 16, unlikelihood=1.0)
    losses = {}
    for packing in (True, False):
        b = collate(examples, tok.pad_token_id, packing)
        args = (b.input_ids, b.position_ids, b.attention_mask, b.targets)
        losses[packing] = with_ul(*args)[0]
        ce = plain(*args)[0]
        with_ul.eval()
        assert torch.allclose(with_ul(*args)[0], ce)
        with_ul.train()
    assert torch.allclose(losses[True], losses[False], rtol=1e-5)
    assert losses[True] - ce > 1.0  # the unlikelihood term is there


def test_neftune_noise_is_bounded_per_example_and_only_in_training(tiny_gemma):
    """Uniform noise within alpha / sqrt(L d), L each example's own length (packed or padded alike), on the
    (Gemma: scaled) input embeddings; validation sees the clean model."""
    from pacos.train.loss import example_lengths, neftune_embeddings

    tok, model = load_tokenizer(str(tiny_gemma)), load_model(str(tiny_gemma))
    records = [
        {"instruction": f"Task {i}.", "input": "x" * (9 * i), "output": "y" * (5 + i)} for i in range(3)
    ]
    examples = [tokenize_record(r, tok, "alpaca", 512, "drop")[0] for r in records]
    packed, padded = collate(examples, tok.pad_token_id, True), collate(examples, tok.pad_token_id, False)
    lengths = [len(e) for e in examples]
    assert example_lengths(packed.position_ids, None)[0].tolist() == [n for n in lengths for _ in range(n)]
    assert example_lengths(padded.position_ids, padded.attention_mask)[:, 0].tolist() == lengths
    torch.manual_seed(0)
    alpha, width = 5.0, model.config.hidden_size
    clean = model.get_input_embeddings()(packed.input_ids)
    noisy = neftune_embeddings(model, packed.input_ids, packed.position_ids, None, alpha)
    bound = alpha / torch.sqrt(example_lengths(packed.position_ids, None) * width).unsqueeze(-1)
    delta = (noisy - clean).abs()
    assert (delta <= bound + 1e-6).all() and (delta > 0.5 * bound).float().mean() > 0.4  # fills the range
    loss_model = CausalLMLoss(model, chunk_size=16, neftune_alpha=alpha)
    args = (packed.input_ids, packed.position_ids, None, packed.targets)
    clean_loss = CausalLMLoss(model, chunk_size=16)(*args)[0]
    assert not torch.allclose(loss_model(*args)[0], clean_loss)
    loss_model.eval()
    assert torch.allclose(loss_model(*args)[0], clean_loss)
    with pytest.raises(ValueError, match="NEFTune noises supervised fine-tuning only"):
        TrainConfig(model="x", objective="dpo", neftune_alpha=5)


@pytest.mark.parametrize(
    ("output", "unit", "separator"),
    [
        ("Ok.\nThe only long line.", "The only long line.", "\n"),
        ("Only one sentence here.", "Only one sentence here.", " "),  # ASCII sentences: a space
        ("好。冬天空气很干燥", "冬天空气很干燥", ""),  # CJK: nothing between repeats
    ],
)
def test_loop_example_unlearns_only_the_repeats(tiny_llama, output, unit, separator):
    """The one unit of 6+ characters comes back 1-3 times; only its repeats are targets, all unlearned."""
    tok = load_tokenizer(str(tiny_llama))
    unit_ids = tok(unit, add_special_tokens=False).input_ids
    separator_ids = tok(separator, add_special_tokens=False).input_ids if separator else []
    record = {"instruction": "Do it.", "input": "", "output": output}
    counts = set()
    for seed in range(10):
        example = loop_example(record, tok, "alpaca", 512, random.Random(seed))
        repeats = sum(example.unlike) // len(unit_ids)
        counts.add(repeats)
        assert (
            example.input_ids[-repeats * len(separator_ids + unit_ids) :]
            == (separator_ids + unit_ids) * repeats
        )
        assert [t for t in example.targets if t != IGNORE] == unit_ids * repeats
        assert [t for t, u in zip(example.targets, example.unlike, strict=True) if u] == unit_ids * repeats
    assert counts == {1, 2, 3}


def test_loop_examples_need_a_unit_and_fit_max_length(tiny_llama):
    tok = load_tokenizer(str(tiny_llama))
    records = [
        {"instruction": "A.", "input": "", "output": "ok"},  # no unit of 6+ characters
        {"instruction": "B.", "input": "", "output": "A sentence that is long enough. " * 3},
    ]
    assert loop_example(records[0], tok, "alpaca", 512, random.Random(0)) is None
    assert len(loop_examples(records, 5, tok, "alpaca", 512, seed=0)) == 1
    assert loop_examples(records, 5, tok, "alpaca", 20, seed=0) == []


@pytest.mark.parametrize("packing", [True, False])
def test_unlearned_targets_reach_the_loss_in_training_only(tiny_llama, packing):
    tok, model = load_tokenizer(str(tiny_llama)), load_model(str(tiny_llama))
    record = {"instruction": "Do it.", "input": "", "output": "One line of text.\nAnother line of text."}
    loop = loop_example(record, tok, "alpaca", 512, random.Random(0))
    plain = tokenize_record(record, tok, "alpaca", 512, "drop")[0]
    batch = collate([plain, loop], tok.pad_token_id, packing)
    assert batch.unlike is not None and int(batch.unlike.sum()) == sum(loop.unlike)
    loss_model = CausalLMLoss(model, chunk_size=16, loop_weight=2.0)
    args = (batch.input_ids, batch.position_ids, batch.attention_mask, batch.targets)
    as_ce = loss_model(*args)[0]
    unlearned = loss_model(*args, batch.unlike)[0]
    labelled = batch.targets != IGNORE
    hidden_p = model(batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask)
    logp = hidden_p.logits.float().log_softmax(-1)[labelled]
    y, u = batch.targets[labelled], batch.unlike[labelled].bool()
    lp = logp.gather(1, y[:, None]).squeeze(1)
    expected = (-lp[~u]).sum() + (-2.0 * torch.log1p(-lp[u].exp())).sum()
    assert torch.allclose(unlearned, expected, rtol=1e-4)
    assert not torch.allclose(unlearned, as_ce)
    loss_model.eval()
    assert torch.allclose(loss_model(*args, batch.unlike)[0], as_ce)


@pytest.mark.parametrize("packing", [True, False])
def test_accumulation_4x2_equals_1x8(tiny_llama, packing):
    tok = load_tokenizer(str(tiny_llama))
    records = [{"instruction": f"Task {i}.", "input": "", "output": "z" * (3 + 5 * i)} for i in range(8)]
    examples, _ = tokenize_records(records, tok, "alpaca", 512, "drop")
    runtime = setup("cpu", "fp32")
    grads = []
    for micro in (2, 8):
        model = load_model(str(tiny_llama))
        loss_model = CausalLMLoss(model, chunk_size=7)
        batches = micro_batches(examples, list(range(8)), micro, tok.pad_token_id, packing)
        assert len(batches) == 8 // micro
        accumulate_gradients(loss_model, batches, sum(b.labelled for b in batches), runtime)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-7), name


def test_step_plan_is_deterministic_and_covers_each_epoch():
    plan = StepPlan(n_examples=10, batch_size=4, micro_batch_size=2, seed=3)
    assert plan.steps_per_epoch == 3
    first_epoch = [i for step in range(3) for i in plan.step_indices(step)]
    assert sorted(first_epoch) == list(range(10))
    assert plan.step_indices(3) != plan.step_indices(0) or plan.order(1) != plan.order(0)
    assert StepPlan(10, 4, 2, seed=3).step_indices(4) == plan.step_indices(4)
    two = StepPlan(n_examples=10, batch_size=4, micro_batch_size=2, seed=3, world_size=2)
    assert sorted(two.step_indices(0, 0) + two.step_indices(0, 1)) == sorted(plan.step_indices(0))
    assert two.steps_per_epoch == 3 and StepPlan(9, 4, 2, 3, world_size=2).steps_per_epoch == 2


def test_lr_schedule_warmup_then_cosine_to_zero():
    config = TrainConfig(warmup_ratio=0.1, lr_scheduler="cosine")
    factors = [lr_factor(s, 100, config) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.5, abs=0.01)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:])) and factors[-1] < 0.001


def test_bf16_on_a_cpu_without_native_bf16_trains_in_fp32_and_says_so(monkeypatch):
    from pacos.train import distributed

    monkeypatch.setattr(distributed, "cpu_has_fast_bf16", lambda: False)
    runtime = distributed.setup("cpu", "bf16-mixed")
    assert runtime.autocast_dtype is None and runtime.param_dtype == torch.float32
    assert "no native bf16" in runtime.precision_note and "bf16-mixed -> fp32" in runtime.precision_note
    monkeypatch.setattr(distributed, "cpu_has_fast_bf16", lambda: True)
    runtime = distributed.setup("cpu", "bf16-mixed")
    assert runtime.autocast_dtype == torch.bfloat16 and not runtime.precision_note
