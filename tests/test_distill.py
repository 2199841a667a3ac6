"""Token-level distillation: the divergences against hand computations, the cached top-k teacher against
the live one, the vocabulary check, and `pacos distill` end to end on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pacos.distill.losses import divergence_sum, top_k
from pacos.distill.teacher import DistillLoss, TeacherCache, cache_teacher, check_same_vocabulary
from pacos.models import load_model, load_tokenizer
from pacos.train.data import collate, tokenize_records

STUDENT = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]
TEACHER = [[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]]


def softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(x / t) for x in row]
    return [x / sum(e) for x in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_each_divergence_equals_a_hand_computation(divergence, temperature):
    beta = 0.3
    want = 0.0
    for s_row, t_row in zip(STUDENT, TEACHER):
        s, t = softmax(s_row, temperature), softmax(t_row, temperature)
        if divergence == "forward_kl":
            want += kl(t, s)
        elif divergence == "reverse_kl":
            want += kl(s, t)
        else:
            m = [beta * a + (1 - beta) * b for a, b in zip(t, s)]
            want += beta * kl(t, m) + (1 - beta) * kl(s, m)
    got = divergence_sum(torch.tensor(STUDENT), torch.tensor(TEACHER), divergence, beta, temperature)
    assert got.item() == pytest.approx(want, rel=1e-5)
    same = divergence_sum(torch.tensor(TEACHER), torch.tensor(TEACHER), divergence, beta, temperature)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_gradients_reach_the_student_only_and_top_k_of_the_whole_vocabulary_is_exact(divergence):
    torch.manual_seed(0)
    student = torch.randn(5, 11, requires_grad=True)
    teacher = torch.randn(5, 11, requires_grad=True)
    dense = divergence_sum(student, teacher, divergence, 0.5, 1.5)
    dense.backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0
    cached = divergence_sum(student, top_k(teacher.detach(), 11), divergence, 0.5, 1.5)
    assert cached.item() == pytest.approx(dense.item(), rel=1e-5)


def test_unknown_divergence_and_bad_beta_are_refused():
    with pytest.raises(ValueError, match="unknown divergence"):
        divergence_sum(torch.zeros(1, 3), torch.zeros(1, 3), "wasserstein")
    with pytest.raises(ValueError, match="0 < beta < 1"):
        divergence_sum(torch.zeros(1, 3), torch.zeros(1, 3), "jsd", beta=1.0)


def padded_copy(src: Path, out: Path, extra_rows: int, seed: int) -> Path:
    """The tiny model with other weights and `extra_rows` more (random) embedding rows, same tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    if extra_rows:
        model.resize_token_embeddings(model.config.vocab_size + extra_rows, mean_resizing=False)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


RECORDS = [
    {"instruction": "Say hello.", "input": "", "output": "Hello there, friend."},
    {"instruction": "Count to three.", "input": "", "output": "one two three"},
    {"instruction": "Name a colour.", "input": "sky", "output": "blue, like the sky"},
]


@pytest.fixture(scope="module")
def teacher_dir(tiny_llama, tmp_path_factory) -> Path:
    return padded_copy(tiny_llama, tmp_path_factory.mktemp("teacher"), 0, 3)


def batch_and_models(tiny_llama, teacher: Path, packing: bool):
    tok = load_tokenizer(str(tiny_llama))
    examples, _ = tokenize_records(RECORDS, tok, "alpaca", 512, "drop")
    assert len(examples) == len(RECORDS)
    return (
        examples,
        collate(examples, tok.pad_token_id, packing),
        load_model(str(tiny_llama)),
        load_model(str(teacher)),
    )


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_cached_teacher_gives_the_live_teachers_loss(tiny_llama, teacher_dir, tmp_path, packing, divergence):
    examples, batch, student, teacher = batch_and_models(tiny_llama, teacher_dir, packing)
    vocab = student.config.vocab_size
    live = DistillLoss(student, teacher, None, vocab, divergence, 0.5, 2.0, alpha=0.25, chunk_size=7)
    cache = TeacherCache(tmp_path / "cache", k=vocab)
    assert cache_teacher(teacher, examples, cache, 0, batch_size=2, shared_vocab=vocab) == len(examples)
    cached = DistillLoss(
        student, None, TeacherCache(tmp_path / "cache", k=vocab), vocab, divergence, 0.5, 2.0, 0.25, 7
    )
    args = (batch.input_ids, batch.position_ids, batch.attention_mask, batch.targets)
    (live_sum, n), (cached_sum, m) = live(*args), cached(*args)
    assert n == m == batch.labelled and live_sum.item() > 0
    assert cached_sum.item() == pytest.approx(live_sum.item(), rel=1e-4)
    live_sum.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    # Validation (eval mode) is the plain cross-entropy, as in pacos train.
    live.eval()
    with torch.no_grad():
        ce, _ = live(*args)
    logits = student(
        input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask
    ).logits
    labelled = batch.targets != -100
    want = torch.nn.functional.cross_entropy(logits[labelled], batch.targets[labelled], reduction="sum")
    assert ce.item() == pytest.approx(want.item(), rel=1e-4)


def test_cache_fill_resumes_after_a_kill(tiny_llama, teacher_dir, tmp_path):
    examples, _, _, teacher = batch_and_models(tiny_llama, teacher_dir, True)
    cache = TeacherCache(tmp_path / "cache", k=8)
    assert cache_teacher(teacher, examples[:2], cache, 0) == 2  # the run that was killed after one shard
    again = TeacherCache(tmp_path / "cache", k=8)
    assert len(again.entries) == 2
    assert cache_teacher(teacher, examples, again, 0) == 1  # only the missing example runs
    assert len(TeacherCache(tmp_path / "cache", k=8).entries) == 3
    with pytest.raises(Exception, match="k=8"):
        TeacherCache(tmp_path / "cache", k=4)


def test_padded_embeddings_are_compared_over_the_shared_ids(tiny_llama, teacher_dir, tmp_path):
    padded = padded_copy(teacher_dir, tmp_path / "padded", 64, 4)
    _, batch, student, teacher = batch_and_models(tiny_llama, padded, True)
    tok = load_tokenizer(str(tiny_llama))
    shared = check_same_vocabulary(
        tok, load_tokenizer(str(padded)), student.config.vocab_size, teacher.config.vocab_size
    )
    assert shared == student.config.vocab_size < teacher.config.vocab_size
    args = (batch.input_ids, batch.position_ids, batch.attention_mask, batch.targets)
    got, _ = DistillLoss(student, teacher, None, shared)(*args)
    # The same teacher without its padding rows gives the same loss.
    from transformers import AutoModelForCausalLM

    trimmed = AutoModelForCausalLM.from_pretrained(padded)
    trimmed.resize_token_embeddings(shared)
    want, _ = DistillLoss(student, trimmed, None, shared)(*args)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_a_teacher_with_another_vocabulary_is_refused_in_one_line(
    cli, tiny_llama, tiny_tokenizer_dir, tmp_path
):
    from transformers import AutoModelForCausalLM, LlamaConfig

    other = tmp_path / "other"
    AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    ).save_pretrained(other)
    load_tokenizer(str(tiny_tokenizer_dir)).save_pretrained(other)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    result = cli(
        "distill",
        "--teacher",
        other,
        "--student",
        tiny_llama,
        "--data",
        data,
        "--output-dir",
        tmp_path / "out",
    )
    assert result.code == 1 and result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "tokenizer differs" in result.err and "sequence level" in result.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("top", [None, 16])
def test_pacos_distill_brings_the_student_closer_to_the_teacher(cli, tiny_llama, teacher_dir, tmp_path, top):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS * 4))
    out = tmp_path / "student"
    args = ["distill", "--teacher", teacher_dir, "--student", tiny_llama, "--data", data, "--output-dir", out]
    args += [
        "--set",
        "max_steps=40",
        "--set",
        "batch_size=4",
        "--set",
        "lr=1e-2",
        "--set",
        "tensorboard=false",
    ]
    if top:
        args += ["--top-k", str(top)]
    result = cli(*args)
    assert result.code == 0, result.err
    assert "distilled" in result.out
    if top:
        assert len(list((out / "teacher-cache").glob("shard-*.npz"))) >= 1

    _, batch, before, teacher = batch_and_models(tiny_llama, teacher_dir, True)
    after = load_model(str(out))
    args = (batch.input_ids, batch.position_ids, batch.attention_mask, batch.targets)
    with torch.no_grad():
        kl_before = DistillLoss(before, teacher, None, before.config.vocab_size)(*args)[0].item()
        kl_after = DistillLoss(after, teacher, None, after.config.vocab_size)(*args)[0].item()
    assert kl_after < 0.7 * kl_before, (kl_before, kl_after)
