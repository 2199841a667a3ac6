"""Cheap signals without a judge: lengths, and the output's perplexity and IFD under a reference model
(training's tokenization and chunked LM-head cross-entropy, so `ppl` means what validation loss means)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from pacos.data.records import Record
from pacos.device import auto_device
from pacos.fileio import KeyedCache
from pacos.models import model_identity
from pacos.score.common import PROMPT_VERSION, QuietScoreProgress, ScoreTally, apply_scores
from pacos.text.cjk import count_words


def length_signals(record: Record) -> dict[str, float]:
    return {
        "instruction_words": count_words(record["instruction"]),
        "input_words": count_words(record.get("input") or ""),
        "output_words": count_words(record["output"]),
    }


@dataclass(frozen=True)
class RefSettings:
    model: str
    template: str | None = None
    max_length: int = 2048
    batch_size: int = 8
    device: str = "auto"


def _signal_key(identity: str, settings: RefSettings, template: str, record: Record) -> str:
    payload = [PROMPT_VERSION, identity, template, settings.max_length,
               record["instruction"], record.get("input") or "", record["output"]]  # fmt: skip
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


def _row_losses(loss_model: Any, examples: list[Any], pad_id: int, device: Any) -> list[tuple[float, int]]:
    """(summed response loss, response tokens) per example: one padded forward pass through the decoder
    for the batch, then training's chunked LM-head cross-entropy row by row (no [batch, seq, vocab])."""
    from pacos.train.data import IGNORE, collate
    from pacos.train.loss import linear_cross_entropy

    batch = collate(examples, pad_id, packing=False).to(device)
    model = loss_model.model
    hidden = model.get_decoder()(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        attention_mask=batch.attention_mask,
        use_cache=False,
    ).last_hidden_state
    head = model.get_output_embeddings()
    out = []
    for row in range(len(examples)):
        labelled = batch.targets[row] != IGNORE
        total = linear_cross_entropy(
            hidden[row][labelled], head.weight, head.bias, batch.targets[row][labelled],
            loss_model.chunk_size, loss_model.softcap,
        )  # fmt: skip
        out.append((float(total), int(labelled.sum())))
    return out


def reference_signals(
    records: list[Record],
    settings: RefSettings,
    cache: KeyedCache,
    tally: ScoreTally,
    progress: QuietScoreProgress | None = None,
    ifd: bool = True,
) -> None:
    """`ppl` of every record in place under the reference model; with `ifd`, also `ifd` and `ppl_alone`
    (a second pass over the output alone)."""
    import torch

    from pacos.infer.loading import load_for_inference, pick_template
    from pacos.models import load_tokenizer
    from pacos.train.data import IGNORE, Example, tokenize_record
    from pacos.train.loss import CausalLMLoss

    progress = progress or QuietScoreProgress()
    identity = model_identity(settings.model)
    tokenizer = load_tokenizer(settings.model)
    template = pick_template(settings.model, tokenizer, settings.template)
    keys = [_signal_key(identity, settings, template, r) for r in records]
    todo = []
    for i, key in enumerate(keys):
        cached = cache.get(key)
        if cached is not None and (not ifd or "loss_alone" in cached or cached.get("too_long")):
            tally.signal_hits += 1
            _store_signals(records[i], cached, settings.model, tally)
        else:
            todo.append(i)
    if not todo:
        return
    # Both sequences of a record score the same tokens: the response (cut to fit, as training cuts it)
    # and EOS. Alone, they follow only a start token (BOS, else EOS as GPT-2 uses it), so the first
    # response token is predicted from nothing, as in Cherry LLM's unconditioned pass.
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pairs: dict[int, tuple[Any, Any]] = {}
    for i in todo:
        example, _ = tokenize_record(records[i], tokenizer, template, settings.max_length, "cut")
        if example is None:
            cache.put(keys[i], {"too_long": True})
            _store_signals(records[i], {"too_long": True}, settings.model, tally)
            continue
        response = [t for t in example.targets if t != IGNORE]
        pairs[i] = (example, Example([start, *response], [*response, IGNORE]))
    if not pairs:
        return
    device = auto_device() if settings.device == "auto" else torch.device(settings.device)
    hf_model, _, _ = load_for_inference(settings.model, torch.float32, device, template, False)
    hf_model.eval()
    loss_model = CausalLMLoss(hf_model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Similar lengths together: little padding. Each batch's results go to the cache before the next.
    order = sorted(pairs, key=lambda i: len(pairs[i][0]), reverse=True)
    progress.start("reference model", len(records), len(records) - len(order))
    try:
        for s in range(0, len(order), settings.batch_size):
            chunk = order[s : s + settings.batch_size]
            with torch.no_grad():
                conditioned = _row_losses(loss_model, [pairs[i][0] for i in chunk], int(pad or 0), device)
                if ifd:
                    alone = _row_losses(loss_model, [pairs[i][1] for i in chunk], int(pad or 0), device)
            for row, (i, (c_sum, n)) in enumerate(zip(chunk, conditioned, strict=True)):
                value = {"loss": c_sum / n, "tokens": n}
                if ifd:
                    value["loss_alone"] = alone[row][0] / n
                cache.put(keys[i], value)
                _store_signals(records[i], value, settings.model, tally)
            progress.advance(len(chunk))
    finally:
        progress.stop()


PERPLEXITY_CAP = math.exp(700)  # exp() overflows just above; infinity would be invalid JSON


def _perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))


def _store_signals(record: Record, value: dict[str, Any], model: str, tally: ScoreTally) -> None:
    if value.get("too_long"):
        tally.too_long += 1
        for key in ("ppl", "ppl_alone", "ifd"):
            record.get("scores", {}).pop(key, None)
        apply_scores(record, {}, {"ref_model": model, "ref_skipped": "the prompt fills the model's context"})
        return
    scores = {"ppl": _perplexity(value["loss"])}
    if "loss_alone" in value:
        scores["ppl_alone"] = _perplexity(value["loss_alone"])
        scores["ifd"] = _perplexity(value["loss"] - value["loss_alone"])
    apply_scores(record, scores, {"ref_model": model, "ref_tokens": value["tokens"]})
