"""Layer pruning (ShortGPT, Men et al. 2024): drop the decoder layers that change the hidden state least.

A layer's block influence on calibration text is 1 - cos(its input, its output), averaged over tokens;
a layer that nearly passes its input through is the cheapest to remove. The N lowest are dropped, the
remaining layers renumbered (and, for Gemma 3, their sliding/full attention pattern kept), and the result
saved as a plain Hugging Face model. The report gives perplexity and next-token agreement with the
unpruned model on held-out text, before any healing: heal with `pacos distill --teacher ORIGINAL
--student PRUNED` (recipes/heal-pruned.yaml).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pacos.errors import PacosError
from pacos.fileio import atomic_dir


@dataclass
class PruneReport:
    model: str
    layers_before: int
    dropped: list[int]
    block_influence: list[float]  # per original layer, on the calibration text
    calibration_tokens: int
    parameters_before: int
    parameters_after: int
    evaluation: dict[str, Any] = field(default_factory=dict)


def _layers(model: Any) -> torch.nn.ModuleList:
    decoder = model.get_decoder()
    if not isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList):
        raise PacosError(f"{type(model).__name__}: no decoder layer list to prune")
    return decoder.layers


def text_ids(
    tokenizer: Any, records: list[dict], template: str, max_tokens: int, seq_len: int
) -> list[list[int]]:
    """Whole rendered examples, packed into sequences of at most `seq_len` ids, `max_tokens` in all."""
    from pacos.data.templates import render_prompt

    sequences: list[list[int]] = []
    total = 0
    for record in records:
        ids = tokenizer(render_prompt(record, template) + record["output"]).input_ids[:seq_len]
        sequences.append(ids)
        total += len(ids)
        if total >= max_tokens:
            break
    return sequences


def _say(message: str) -> None:
    print(f"[compress] {message}", file=sys.stderr, flush=True)


@torch.no_grad()
def block_influence(model: Any, sequences: list[list[int]]) -> list[float]:
    """1 - mean cosine(input, output) of every decoder layer over all tokens of the sequences."""
    layers = _layers(model)
    sums = [0.0] * len(layers)
    count = 0
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def record(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            captured[index] = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).sum()

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        model.eval()
        for ids in sequences:
            model(input_ids=torch.tensor([ids]), use_cache=False)
            for i in range(len(layers)):
                sums[i] += float(captured[i])
            count += len(ids)
    finally:
        for handle in handles:
            handle.remove()
    return [1.0 - s / count for s in sums]


def drop_layers(model: Any, dropped: list[int]) -> Any:
    """The model without the given layers (in place), its config and layer indices made consistent."""
    layers = _layers(model)
    keep = [i for i in range(len(layers)) if i not in set(dropped)]
    decoder = model.get_decoder()
    decoder.layers = torch.nn.ModuleList(layers[i] for i in keep)
    for new, layer in enumerate(decoder.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new  # the KV cache is indexed by it
    text = getattr(model.config, "get_text_config", lambda: model.config)()
    for config in [model.config] if text is model.config else [model.config, text]:
        config.num_hidden_layers = len(keep)
        if getattr(config, "layer_types", None):
            config.layer_types = [config.layer_types[i] for i in keep]
    return model


@torch.no_grad()
def compare(
    reference: Any, models: dict[str, Any], sequences: list[list[int]]
) -> dict[str, dict[str, float]]:
    """Per model: perplexity on the sequences, next-token argmax agreement with `reference` and the mean
    KL(reference || model) per token. The reference runs once per sequence (it may be one of the models)."""
    from pacos.train.divergences import divergence_sum

    sums = {name: [0.0, 0.0, 0.0] for name in models}  # nll, agreement, kl
    n = 0
    for ids in sequences:
        x = torch.tensor([ids])
        want = reference(input_ids=x, use_cache=False).logits[0, :-1].float()
        for name, model in models.items():
            logits = want if model is reference else model(input_ids=x, use_cache=False).logits[0, :-1]
            logits = logits.float()
            total = sums[name]
            total[0] += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
            total[1] += float((logits.argmax(-1) == want.argmax(-1)).sum())
            total[2] += float(divergence_sum(logits, want, "forward_kl"))
        n += len(ids) - 1
    return {
        name: {
            "perplexity": math.exp(nll / n),
            "next_token_agreement": agree / n,
            "kl_from_reference": kl / n,
            "tokens": int(n),
        }
        for name, (nll, agree, kl) in sums.items()
    }


def prune(
    model_spec: str,
    out: str | Path,
    drop: int,
    data: str = "seed-tasks",
    template: str = "alpaca",
    calibration_tokens: int = 8192,
    eval_tokens: int = 4096,
    seq_len: int = 512,
) -> PruneReport:
    """Drop `drop` layers of `model_spec` by block influence; save to `out` with prune_report.json."""
    from pacos.data.io import read_records
    from pacos.models import load_model, load_tokenizer, merged_model

    path = Path(model_spec)
    load = (
        (lambda: merged_model(path))
        if (path / "adapter_config.json").exists()
        else (lambda: load_model(model_spec, dtype=torch.float32))
    )
    model = load()
    tokenizer = load_tokenizer(model_spec)
    n_layers = len(_layers(model))
    if not 0 < drop < n_layers:
        raise PacosError(f"--drop {drop}: the model has {n_layers} layers; drop between 1 and {n_layers - 1}")
    records = read_records(data)
    half = len(records) // 2  # calibrate on the first half, evaluate on the second: no overlap
    calibration = text_ids(tokenizer, records[:half], template, calibration_tokens, seq_len)
    held_out = text_ids(tokenizer, records[half:], template, eval_tokens, seq_len)
    _say(f"block influence of {n_layers} layers on {sum(map(len, calibration))} calibration tokens")
    influence = block_influence(model, calibration)
    dropped = sorted(sorted(range(n_layers), key=lambda i: influence[i])[:drop])
    _say(f"dropping layers {dropped}; comparing with the unpruned model on {sum(map(len, held_out))} tokens")
    before = sum(p.numel() for p in model.parameters())
    reference = load()
    pruned = drop_layers(model, dropped)
    report = PruneReport(
        model=model_spec,
        layers_before=n_layers,
        dropped=dropped,
        block_influence=[round(b, 6) for b in influence],
        calibration_tokens=sum(len(s) for s in calibration),
        parameters_before=before,
        parameters_after=sum(p.numel() for p in pruned.parameters()),
    )
    report.evaluation = compare(reference, {"unpruned": reference, "pruned": pruned}, held_out)
    _say(f"saving to {out}")
    with atomic_dir(Path(out)) as tmp:
        pruned.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "prune_report.json").write_text(json.dumps(asdict(report), indent=2))
    return report
