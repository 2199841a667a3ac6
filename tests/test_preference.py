"""Preference training: the pair formats people have, each loss against its definition, DPO against TRL,
and whole runs (LoRA and full) that learn to prefer and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pacos.data.pairs import normalize_pair, read_pairs, to_trl
from pacos.errors import PacosError
from pacos.train.config import PreferenceConfig, TrainConfig
from pacos.train.data import IGNORE, Example
from pacos.train.metrics import read_metrics
from pacos.train.pairs import PairExample, collate_pairs, fill_reference, tokenize_pairs
from pacos.train.preference import PreferenceLoss
from pacos.train.run import train
from tests.conftest import write_jsonl

PAIRS = [
    {"instruction": "Say hello.", "input": "", "chosen": "Hello!", "rejected": "Goodbye, see you later."},
    {"instruction": "Name a colour.", "input": "", "chosen": "Blue.", "rejected": "Seven."},
    {"instruction": "用一个词形容大海。", "input": "", "chosen": "辽阔。", "rejected": "海海海海海海"},
    {"instruction": "Count to three.", "input": "", "chosen": "1, 2, 3.", "rejected": "1, 2, 3, 4, 5, 6."},
]


# --- formats ---------------------------------------------------------------------------------------------


def test_every_supported_format_becomes_the_same_pair():
    want = {"instruction": "Hi?", "input": "", "chosen": "Hello.", "rejected": "No."}
    rows = [
        {"instruction": "Hi?", "chosen": "Hello.", "rejected": "No."},  # pacos / LLaMA-Factory
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "No."},  # TRL standard
        {
            "prompt": [{"role": "user", "content": "Hi?"}],
            "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "No."}],
        },  # TRL conversational
        {
            "prompt": "Hi?",
            "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "No."}],
        },  # UltraFeedback-binarized
        {
            "chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.",
            "rejected": "\n\nHuman: Hi?\n\nAssistant: No.",
        },  # HH
    ]
    for row in rows:
        pair = normalize_pair(row)
        pair.pop("prompt", None)  # UltraFeedback's own prompt string rides along
        assert pair == want, row


def test_earlier_turns_are_kept_in_the_input_not_dropped():
    hh = {
        "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 6.",
        "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 7.",
    }
    pair = normalize_pair(hh)
    assert pair["instruction"] == "And 3+3?" and (pair["chosen"], pair["rejected"]) == ("6.", "7.")
    assert pair["input"] == "User: What is 2+2?\n\nAssistant: 4." and pair["metadata"]["history_turns"] == 2
    system = normalize_pair(
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hi."}],
            "rejected": [{"role": "assistant", "content": "Hello there, how are you?"}],
        }
    )
    assert system["metadata"] == {"system": "Be brief."}
    trl = to_trl(system)
    assert trl["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert normalize_pair(trl) == system  # written as TRL's format, read back the same


def test_unpaired_kto_records():
    row = {"prompt": "Hi?", "completion": "Hello.", "label": True}
    assert normalize_pair(row) == {"instruction": "Hi?", "input": "", "output": "Hello.", "label": True}
    assert normalize_pair(to_trl(normalize_pair(row)))["label"] is True


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"prompt": "Hi?", "chosen": "a"}', "missing field 'rejected'"),
        ('{"prompt": "Hi?", "chosen": 3, "rejected": "b"}', "field 'chosen': expected a string, got number"),
        ('{"prompt": "Hi?", "completion": "a", "label": "yes"}', "field 'label': expected true or false"),
        (
            '{"prompt": [{"role": "user", "content": "Hi"}], '
            '"chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], '
            '"rejected": [{"role": "assistant", "content": "c"}]}',
            "the answer must be one assistant turn",
        ),
        ('{"chosen": "\\n\\nHuman: Hi", "rejected": 4}', "field 'rejected': expected an HH transcript"),
        ('{"instruction": "Hi?", "chosen": " ", "rejected": "b"}', "the preferred answer is empty"),
        ("[1, 2]", "expected an object"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_line_and_field(tmp_path, row, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n" + row + "\n", encoding="utf-8")
    with pytest.raises(PacosError, match=r"pairs\.jsonl") as error:
        read_pairs(path)
    assert message in str(error.value) and ":2" in str(error.value) and "\n" not in str(error.value)


# --- losses against their definitions ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)


def by_hand_logps(model, example: Example) -> tuple[float, int]:
    """An answer's summed log-prob from full logits: the plain definition."""
    with torch.no_grad():
        logits = model(torch.tensor([example.input_ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    rows = [(t, y) for t, y in enumerate(example.targets) if y != IGNORE]
    return sum(float(logp[t, y]) for t, y in rows), len(rows)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("objective", ["dpo", "simpo", "orpo", "kto"])
def test_each_loss_matches_a_hand_computation(tiny, objective):
    model, tok = tiny
    pairs, _ = tokenize_pairs(PAIRS, tok, "alpaca", 512, "drop")
    settings = PreferenceConfig(label_smoothing=0.1 if objective in ("dpo", "simpo") else 0.0, sft_weight=0.3)
    if objective in ("orpo", "kto"):
        settings = PreferenceConfig(desirable_weight=1.5, undesirable_weight=0.7)
    beta = settings.beta_for(objective)
    # A reference that differs from the policy: made-up log-probs, so the rewards are not all zero.
    for i, p in enumerate(pairs):
        p.reference = [
            by_hand_logps(model, s)[0] + 0.3 * (i + 1) * (-1) ** j for j, s in enumerate(p.sequences)
        ]
    loss_module = PreferenceLoss(model, objective, settings).eval()
    batch = collate_pairs(pairs, tok.pad_token_id, True, loss_module.units)
    total, units = loss_module(
        batch.input_ids, batch.position_ids, batch.attention_mask, batch.targets, **batch.extra
    )
    per_pair = []
    rewards = [by_hand_logps(model, s)[0] - ref for p in pairs for s, ref in zip(p.sequences, p.reference)]
    z0 = max(0.0, sum(rewards) / len(rewards))
    for p in pairs:
        (lc, nc), (lr, nr) = (by_hand_logps(model, s) for s in p.sequences)
        rc, rr = p.reference
        eps = settings.label_smoothing
        if objective == "dpo":
            x = beta * ((lc - rc) - (lr - rr))
            per_pair.append(-(1 - eps) * math.log(sig(x)) - eps * math.log(sig(-x)) - 0.3 * lc / nc)
        elif objective == "simpo":
            x = beta * (lc / nc - lr / nr) - settings.simpo_gamma * beta
            per_pair.append(-(1 - eps) * math.log(sig(x)) - eps * math.log(sig(-x)) - 0.3 * lc / nc)
        elif objective == "orpo":
            odds = lambda avg: avg - math.log(1 - math.exp(avg))  # noqa: E731
            per_pair.append(-lc / nc - beta * math.log(sig(odds(lc / nc) - odds(lr / nr))))
        else:
            per_pair.append(1.5 * (1 - sig(beta * ((lc - rc) - z0))))
            per_pair.append(0.7 * (1 - sig(beta * (z0 - (lr - rr)))))
    assert int(units) == len(per_pair)
    assert float(total) == pytest.approx(sum(per_pair), abs=1e-5)


def test_eos_weight_counts_the_chosen_answers_eos_that_many_times_in_the_sft_term(tiny):
    """DPO with sft_weight: the NLL term's EOS target weighs eos_weight, the DPO rewards stay plain sums."""
    model, tok = tiny
    pairs, _ = tokenize_pairs(PAIRS, tok, "alpaca", 512, "drop")
    for p in pairs:
        p.reference = [0.0, 0.0]
    settings = PreferenceConfig(sft_weight=0.5)
    batch = collate_pairs(pairs, tok.pad_token_id, True, "pairs")
    args = (batch.input_ids, batch.position_ids, batch.attention_mask, batch.targets)
    with torch.no_grad():
        plain, _ = PreferenceLoss(model, "dpo", settings, eos_id=tok.eos_token_id)(*args, **batch.extra)
        weighted, _ = PreferenceLoss(model, "dpo", settings, eos_id=tok.eos_token_id, eos_weight=4.0)(
            *args, **batch.extra
        )
        extra = 0.0
        for p in pairs:
            chosen = p.sequences[0]
            logits = model(torch.tensor([chosen.input_ids])).logits[0].double()
            rows = [t for t, y in enumerate(chosen.targets) if y != IGNORE]
            assert chosen.targets[rows[-1]] == tok.eos_token_id  # every answer ends with EOS
            eos_logp = float(torch.log_softmax(logits[rows[-1]], -1)[tok.eos_token_id])
            extra += -0.5 * 3.0 * eos_logp / len(rows)  # 3 more counts of the EOS NLL, averaged per token
    assert extra > 0
    assert float(weighted) == pytest.approx(float(plain) + extra, abs=1e-5)


def test_dpo_gradient_flows_only_through_the_policy(tiny):
    model, tok = tiny
    pairs, _ = tokenize_pairs(PAIRS[:2], tok, "alpaca", 512, "drop")
    for p in pairs:
        p.reference = [0.0, 0.0]
    loss_module = PreferenceLoss(model, "dpo", PreferenceConfig())
    batch = collate_pairs(pairs, tok.pad_token_id, False, "pairs")  # padded rows, not packed
    total, _ = loss_module(
        batch.input_ids, batch.position_ids, batch.attention_mask, batch.targets, **batch.extra
    )
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)


def test_dpo_loss_equals_trl_on_a_fixed_batch(tiny_llama, tmp_path):
    """The same token ids through TRL's DPOTrainer and pacos's DPO: one loss, policy != reference."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama)
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.05 * torch.randn_like(param))
    rows = [
        {"prompt": p["instruction"] + "\n", "chosen": p["chosen"], "rejected": p["rejected"]} for p in PAIRS
    ]
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=len(rows),
        beta=0.1,
        report_to=[],
        use_cpu=True,
        max_length=None,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(policy, batch))

    # TRL's batch: chosen rows then rejected rows, completion_mask marking the answer tokens (EOS included).
    n = len(rows)
    examples = []
    for row in range(2 * n):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        mask = batch["completion_mask"][row][batch["attention_mask"][row].bool()].tolist()
        targets = [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
        examples.append(Example(ids, targets))
    pairs = [PairExample([examples[i], examples[n + i]], [True, False]) for i in range(n)]
    fill_reference(PreferenceLoss(reference, "dpo", PreferenceConfig()), pairs, tmp_path / "ref.jsonl", 2,
                   tok.pad_token_id, _single_runtime())  # fmt: skip
    ours = PreferenceLoss(policy, "dpo", PreferenceConfig(beta=0.1)).eval()
    ours_batch = collate_pairs(pairs, tok.pad_token_id, True, "pairs")
    with torch.no_grad():
        total, units = ours(
            ours_batch.input_ids, ours_batch.position_ids, None, ours_batch.targets, **ours_batch.extra
        )
    assert float(total / units) == pytest.approx(trl_loss, abs=1e-4)
    assert abs(trl_loss - math.log(2)) > 1e-3  # policy and reference really differ


def _single_runtime():
    from pacos.train.distributed import setup

    return setup("cpu", "fp32", "auto")


# --- whole runs ---------------------------------------------------------------------------------------


def pair_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", PAIRS * 2)


def run_config(model: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(
        model=str(model),
        data=str(data),
        output_dir=str(out),
        objective="dpo",
        method="lora",
        max_steps=6,
        batch_size=4,
        micro_batch_size=2,
        lr=5e-3,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        tensorboard=False,
    )
    return TrainConfig(**{**base, **overrides})


def test_lora_dpo_starts_at_ln2_for_every_pair_and_learns_to_prefer(tiny_llama, tmp_path):
    out = tmp_path / "dpo"
    train(run_config(tiny_llama, pair_file(tmp_path), out))
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference at the first step
    assert rows[0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["loss"] < math.log(2) and rows[-1]["reward_margin"] > 0 and rows[-1]["accuracy"] > 0.5
    assert {"logp_chosen", "logp_rejected", "reward_chosen", "reward_rejected"} <= rows[-1].keys()
    cached = (out / "reference-logps.jsonl").read_text().splitlines()
    assert len(cached) == 2 * len(
        {json.dumps(p, sort_keys=True) for p in PAIRS}
    )  # one line per distinct answer


def test_every_pair_loss_is_ln2_under_the_reference(tiny_llama, tmp_path):
    """Not only the mean: each pair's DPO loss at init is ln 2 (the adapter's B is zero)."""
    from pacos.models import load_tokenizer
    from pacos.train.run import build_model

    config = run_config(tiny_llama, pair_file(tmp_path), tmp_path / "o")
    runtime = _single_runtime()
    tok = load_tokenizer(str(tiny_llama))
    model = build_model(config, runtime, tok)
    pairs, _ = tokenize_pairs(PAIRS, tok, "alpaca", 512, "drop")
    module = PreferenceLoss(model, "dpo", PreferenceConfig())
    fill_reference(module, pairs, tmp_path / "ref.jsonl", 2, tok.pad_token_id, runtime)
    for p in pairs:
        b = collate_pairs([p], tok.pad_token_id, True, "pairs")
        loss, _ = module(b.input_ids, b.position_ids, None, b.targets, **b.extra)
        assert float(loss) == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("objective", ["simpo", "orpo", "kto"])
def test_other_objectives_train_end_to_end(tiny_llama, tmp_path, objective):
    out = tmp_path / objective
    result = train(run_config(tiny_llama, pair_file(tmp_path), out, objective=objective, max_steps=3))
    assert result.steps == 3 and math.isfinite(result.final_loss)
    assert (out / "adapter_model.safetensors").exists()
    assert (out / "reference-logps.jsonl").exists() == (objective == "kto")


def test_killed_dpo_run_resumes_with_identical_losses(tiny_llama, tmp_path, monkeypatch):
    from pacos.train import run as run_module

    data = pair_file(tmp_path)
    whole = tmp_path / "whole"
    train(run_config(tiny_llama, data, whole, method="full", save_every=3))
    killed = tmp_path / "killed"
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_module.train(run_config(tiny_llama, data, killed, method="full", save_every=3))
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    run_module.train(run_config(tiny_llama, data, killed, method="full", save_every=3), resume=True)
    losses = lambda out: [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]  # noqa: E731
    assert losses(killed) == pytest.approx(losses(whole), abs=1e-6)


def test_preference_settings_errors(cli, tiny_llama, tmp_path):
    sft_data = write_jsonl(tmp_path / "sft.jsonl", [{"instruction": "a", "output": "b"}])
    result = cli(
        "train", "--model", tiny_llama, "--data", sft_data, "--method", "dpo", "--output-dir", tmp_path
    )
    assert result.code != 0 and "missing field 'chosen'" in result.err and "Traceback" not in result.err
    result = cli(
        "train", "--model", tiny_llama, "--data", sft_data, "--method", "dpo", "--set", "unlikelihood=1"
    )
    assert result.code != 0 and "does not combine" in result.err
    result = cli(
        "train", "--model", tiny_llama, "--data", sft_data, "--method", "dpo", "--set", "eos_weight=3"
    )
    assert result.code != 0 and "preference.sft_weight above 0" in result.err
    kto = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "a", "completion": "b", "label": True}])
    result = cli(
        "train", "--model", tiny_llama, "--data", kto, "--method", "dpo", "--output-dir", tmp_path / "k"
    )
    assert result.code != 0 and "use --method kto" in result.err
    result = cli("train", "--model", tiny_llama, "--data", sft_data, "--method", "ppo")
    assert result.code != 0 and "--method ppo: expected sft, dpo, simpo, orpo or kto" in result.err


def test_reference_cache_resumes_where_a_killed_computation_stopped(tiny, tmp_path):
    model, tok = tiny
    pairs, _ = tokenize_pairs(PAIRS, tok, "alpaca", 512, "drop")
    module = PreferenceLoss(model, "dpo", PreferenceConfig())
    runtime = _single_runtime()
    whole = tmp_path / "whole.jsonl"
    assert fill_reference(module, pairs, whole, 1, tok.pad_token_id, runtime) == 8
    expected = [p.reference for p in pairs]
    lines = whole.read_text().splitlines()
    killed = tmp_path / "killed.jsonl"
    killed.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])  # 3 answers, then a line cut by the kill
    again, _ = tokenize_pairs(PAIRS, tok, "alpaca", 512, "drop")
    assert (
        fill_reference(module, again, killed, 1, tok.pad_token_id, runtime) == 6
    )  # pairs 2-4 whole (the second's chosen was there)
    assert [v for p in again for v in p.reference] == pytest.approx(
        [v for r in expected for v in r], abs=1e-9
    )
    assert fill_reference(module, again, killed, 1, tok.pad_token_id, runtime) == 0


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_frozen_head_log_probs_have_the_gradient_of_the_definition(softcap):
    from pacos.train.preference import token_log_probs

    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64)
    targets = torch.randint(0, 50, (37,))
    coefficient = torch.randn(37, dtype=torch.float64)

    def plain(h):
        logits = h @ weight.t()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)

    want = plain(hidden)
    (want * coefficient).sum().backward()
    want_grad, hidden.grad = hidden.grad.clone(), None
    got = token_log_probs(hidden, weight, None, targets, chunk_size=8, softcap=softcap)
    (got * coefficient).sum().backward()
    assert torch.allclose(got.double(), want, atol=1e-5) and torch.allclose(hidden.grad, want_grad, atol=1e-6)
    # A trained head takes the recomputing path: the same values and gradients, the head's included.
    trained = weight.clone().requires_grad_(True)
    hidden.grad = None
    again = token_log_probs(hidden, trained, None, targets, chunk_size=8, softcap=softcap)
    (again * coefficient).sum().backward()
    assert torch.allclose(hidden.grad, want_grad, atol=1e-6) and trained.grad is not None


def test_dpo_under_torchrun_fsdp_matches_one_process(tiny_gemma, tmp_path):
    """Reference log-probs computed by both processes and gathered; the same losses as one process."""
    import os
    import subprocess
    import sys

    data = pair_file(tmp_path)
    args = ["train", "--model", str(tiny_gemma), "--data", str(data), "--method", "dpo", "--full",
            "--max-steps", "3", "--lr", "1e-3", "--set", "batch_size=4", "--set", "micro_batch_size=1",
            "--set", "tensorboard=false", "--set", "distributed=fsdp"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "pacos", *args, "--output-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pacos", *args, "--output-dir", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    rows = [[r for r in read_metrics(tmp_path / d / "metrics.jsonl") if "loss" in r] for d in ("one", "two")]
    assert [r["loss"] for r in rows[0]] == pytest.approx([r["loss"] for r in rows[1]], abs=1e-4)
    assert [r["reward_margin"] for r in rows[0]] == pytest.approx(
        [r["reward_margin"] for r in rows[1]], abs=1e-4
    )
    cached = (tmp_path / "two" / "reference-logps.jsonl").read_text().splitlines()
    assert len(cached) == 8  # every distinct answer once, gathered from both processes


def test_dpo_on_an_sft_adapter_loads_as_the_chain_of_both(tiny_llama, tmp_path):
    """The usual path: SFT with LoRA, then DPO with a new LoRA on it; loading the result merges both."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pacos.models import merged_model

    sft = tmp_path / "sft"
    train(TrainConfig(model=str(tiny_llama), data="seed-tasks-zh", output_dir=str(sft), method="lora",
                      max_steps=2, batch_size=2, micro_batch_size=2, lr=1e-2, max_length=1024,
                      tensorboard=False))  # fmt: skip
    dpo = tmp_path / "dpo"
    train(run_config(sft, pair_file(tmp_path), dpo, max_steps=2, lr=1e-2))
    assert json.loads((dpo / "adapter_config.json").read_text())["base_model_name_or_path"] == str(sft)
    chained = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama), sft
    ).merge_and_unload()
    chained = PeftModel.from_pretrained(chained, dpo).merge_and_unload()
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        assert torch.allclose(merged_model(dpo)(ids).logits, chained(ids).logits, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(tiny_llama)(ids).logits
        assert not torch.allclose(chained(ids).logits, base, atol=1e-3)
