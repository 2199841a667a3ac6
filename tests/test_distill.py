"""Token-level distillation: the divergences against hand computations, the cached top-k teacher against
the live one, the vocabulary check, and `pacos distill` end to end on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pacos.models import load_model, load_tokenizer
from pacos.train.data import collate, tokenize_records
from pacos.train.distill import DistillLoss, TeacherCache, cache_teacher, check_same_vocabulary
from pacos.train.divergences import divergence_sum, top_k

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
    live = DistillLoss(
        student=student,
        teacher=teacher,
        cache=None,
        shared_vocab=vocab,
        divergence=divergence,
        beta=0.5,
        temperature=2.0,
        alpha=0.25,
        chunk_size=7,
    )
    cache = TeacherCache(tmp_path / "cache", k=vocab)
    assert cache_teacher(teacher, examples, cache, 0, batch_size=2, shared_vocab=vocab) == len(examples)
    cached = DistillLoss(
        student=student,
        teacher=None,
        cache=TeacherCache(tmp_path / "cache", k=vocab),
        shared_vocab=vocab,
        divergence=divergence,
        beta=0.5,
        temperature=2.0,
        alpha=0.25,
        chunk_size=7,
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


def test_a_complete_teacher_cache_needs_no_teacher(cli, tiny_llama, teacher_dir, tmp_path):
    import shutil

    teacher = shutil.copytree(teacher_dir, tmp_path / "teacher")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    cache = tmp_path / "cache"
    args = ["distill", "--teacher", teacher, "--student", tiny_llama, "--data", data, "--top-k", "8"]
    args += ["--set", "max_steps=2", "--set", "tensorboard=false", "--set", f'distill.cache_dir="{cache}"']
    assert cli(*args, "--output-dir", tmp_path / "a").code == 0
    for weights in teacher.glob("*.safetensors"):
        weights.unlink()  # the teacher's weights are gone: only its cached logits and tokenizer are left
    result = cli(*args, "--output-dir", tmp_path / "b")
    assert result.code == 0, result.err
    assert "3 examples (0 new)" in result.err


# -- on-policy (GKD) ------------------------------------------------------------------------------------


def test_student_examples_are_the_students_own_greedy_answers(tiny_llama):
    from pacos.train.on_policy import prompt_length, student_examples

    tok = load_tokenizer(str(tiny_llama))
    examples, _ = tokenize_records(RECORDS, tok, "alpaca", 512, "drop")
    model = load_model(str(tiny_llama))
    eos = tok.eos_token_id
    answers = student_examples(model, examples, eos, tok.pad_token_id, 6, 512, 0.0, seed=0)
    for example, answer in zip(examples, answers):
        p = prompt_length(example)
        assert answer.input_ids[:p] == example.input_ids[:p]  # the same prompt, left padding stripped
        # Each answer is what the model generates for its prompt alone (the batch's padding changes nothing).
        alone = model.generate(
            torch.tensor([example.input_ids[:p]]), max_new_tokens=6, do_sample=False, pad_token_id=eos
        )[0, p:].tolist()
        if eos in alone:
            alone = alone[: alone.index(eos) + 1]
        assert answer.input_ids[p:] == alone
        # Targets follow the data's convention: response tokens (and EOS) shifted by one, nothing else.
        assert answer.targets == [-100] * (p - 1) + alone + [-100]
        assert len(answer.targets) == len(answer.input_ids)


def test_on_policy_answers_leave_the_random_state_and_train_mode_alone(tiny_llama):
    from pacos.train.on_policy import student_examples

    tok = load_tokenizer(str(tiny_llama))
    examples, _ = tokenize_records(RECORDS, tok, "alpaca", 512, "drop")
    model = load_model(str(tiny_llama)).train()
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    first = student_examples(model, examples, tok.eos_token_id, tok.pad_token_id, 8, 512, 1.0, seed=7)
    assert torch.equal(torch.rand(3), want) and model.training
    again = student_examples(model, examples, tok.eos_token_id, tok.pad_token_id, 8, 512, 1.0, seed=7)
    other = student_examples(model, examples, tok.eos_token_id, tok.pad_token_id, 8, 512, 1.0, seed=8)
    assert [e.input_ids for e in again] == [e.input_ids for e in first]  # the seed decides the sample
    assert [e.input_ids for e in other] != [e.input_ids for e in first]


def test_on_policy_distillation_trains_on_the_students_answers_and_resumes_exactly(
    tiny_llama, teacher_dir, tmp_path, monkeypatch
):
    from pacos.train import run as run_module
    from pacos.train.config import TrainConfig
    from pacos.train.metrics import read_metrics

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS * 4))

    def settings(out: Path) -> TrainConfig:
        return TrainConfig(
            model=str(tiny_llama),
            data=str(data),
            output_dir=str(out),
            max_steps=6,
            batch_size=2,
            lr=3e-3,
            save_every=3,
            tensorboard=False,
            distill={"teacher": str(teacher_dir), "on_policy": 0.5, "on_policy_max_tokens": 8},
        )

    seen: list[list[list[int]]] = []
    real_batches = run_module.micro_batches

    def recording(examples, indices, *args):
        seen.append([examples[i].input_ids for i in indices])
        return real_batches(examples, indices, *args)

    monkeypatch.setattr(run_module, "micro_batches", recording)
    run_module.train(settings(tmp_path / "straight"))
    rows = [r for r in read_metrics(tmp_path / "straight" / "metrics.jsonl") if "loss" in r]
    flags = [r["on_policy"] for r in rows]
    assert set(flags) == {0, 1}  # lambda 0.5: both kinds of step in 6
    tok = load_tokenizer(str(tiny_llama))
    dataset = {tuple(e.input_ids) for e in tokenize_records(RECORDS, tok, "alpaca", 512, "drop")[0]}
    for flag, step in zip(flags, seen):
        # Off-policy steps learn on the data's answers; on-policy steps (almost surely) on others.
        assert all(tuple(ids) in dataset for ids in step) == (flag == 0)

    real_log = run_module.MetricsLog.log

    def die_at_step_5(self, record):
        if record["step"] == 5:
            raise KeyboardInterrupt  # killed after the step-3 checkpoint
        real_log(self, record)

    monkeypatch.setattr(run_module.MetricsLog, "log", die_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_module.train(settings(tmp_path / "crashed"))
    monkeypatch.setattr(run_module.MetricsLog, "log", real_log)
    run_module.train(settings(tmp_path / "crashed"), resume=True)
    again = [r for r in read_metrics(tmp_path / "crashed" / "metrics.jsonl") if "loss" in r]
    assert [r["on_policy"] for r in again] == flags
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in rows], abs=1e-5)


def test_on_policy_with_a_cached_teacher_is_refused_in_one_line(cli, tiny_llama, teacher_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    result = cli(
        "distill", "--teacher", teacher_dir, "--student", tiny_llama, "--data", data,
        "--output-dir", tmp_path / "out", "--top-k", "8", "--on-policy", "0.5",
    )  # fmt: skip
    assert result.code == 1 and result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "on_policy" in result.err and "top_k" in result.err


def test_on_policy_under_fsdp_is_refused_before_any_model_loads(
    tiny_llama, teacher_dir, tmp_path, monkeypatch
):
    from pacos.errors import PacosError
    from pacos.train import run as run_module
    from pacos.train.config import TrainConfig
    from pacos.train.distributed import Runtime

    fsdp = Runtime(world_size=2, strategy="fsdp")
    monkeypatch.setattr(run_module.dist_utils, "setup", lambda *args: fsdp)
    monkeypatch.setattr(run_module, "build_model", lambda *args: pytest.fail("a model was loaded"))
    settings = TrainConfig(
        model=str(tiny_llama),
        output_dir=str(tmp_path / "out"),
        distill={"teacher": str(teacher_dir), "on_policy": 1},
    )
    with pytest.raises(PacosError, match="FSDP"):
        run_module.train(settings)


def test_each_on_policy_answer_gets_its_own_room_under_max_length(tiny_llama):
    from pacos.train.on_policy import prompt_length, student_examples

    tok = load_tokenizer(str(tiny_llama))
    examples, _ = tokenize_records(RECORDS, tok, "alpaca", 512, "drop")
    lengths = [prompt_length(e) for e in examples]
    max_length = max(lengths) + 1  # the longest prompt has room for one token, the others for more
    model = load_model(str(tiny_llama))
    eos = tok.eos_token_id
    answers = student_examples(model, examples, eos, tok.pad_token_id, 6, max_length, 0.0, 0, batch_size=2)
    for example, answer, p in zip(examples, answers, lengths):
        alone = model.generate(
            torch.tensor([example.input_ids[:p]]), max_new_tokens=6, do_sample=False, pad_token_id=eos
        )[0, p:].tolist()
        alone = alone[: alone.index(eos) + 1] if eos in alone else alone
        assert answer.input_ids[p:] == alone[: max_length - p] and len(answer.input_ids) <= max_length
    assert max_length - min(lengths) >= 6  # the shortest prompt's row really had room for all 6 tokens


def test_on_policy_steps_drop_the_cross_entropy_on_the_students_own_samples(tiny_llama, teacher_dir):
    _, batch, student, teacher = batch_and_models(tiny_llama, teacher_dir, True)
    vocab = student.config.vocab_size
    args = (batch.input_ids, batch.position_ids, batch.attention_mask, batch.targets)
    mixed = DistillLoss(student, teacher, None, vocab, alpha=0.5)
    pure = DistillLoss(student, teacher, None, vocab, alpha=0.0)
    with torch.no_grad():
        off_policy, want = mixed(*args)[0].item(), pure(*args)[0].item()
        mixed.own_answers = True
        on_policy = mixed(*args)[0].item()
    assert on_policy == pytest.approx(want) and off_policy != pytest.approx(want)


def test_a_cache_built_for_wider_models_is_refused_for_a_narrower_student(
    cli, tiny_llama, teacher_dir, tmp_path
):
    wide_teacher = padded_copy(teacher_dir, tmp_path / "wide-teacher", 64, 5)
    wide_student = padded_copy(tiny_llama, tmp_path / "wide-student", 64, 6)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    cache = tmp_path / "cache"
    args = ["distill", "--teacher", wide_teacher, "--data", data, "--top-k", "8", "--set", "max_steps=1"]
    args += ["--set", "tensorboard=false", "--set", f'distill.cache_dir="{cache}"']
    assert cli(*args, "--student", wide_student, "--output-dir", tmp_path / "a").code == 0
    result = cli(*args, "--student", tiny_llama, "--output-dir", tmp_path / "b")
    last = result.err.strip().splitlines()[-1]  # after the progress lines, one error line
    assert result.code == 1 and "Traceback" not in result.err
    assert "built for 324 ids, the student has 260 output rows; use another distill.cache_dir" in last
