"""Tokenized examples and the batches a training step is made of.

An example is `prompt + output + EOS`, the prompt and the response tokenized separately, exactly as
inference sees them (the prompt alone, then generated tokens), so the first response token can never
be lost at a tokenization boundary (trl #1920) and EOS is always present and trained on.

Targets are shifted once, here: `targets[t]` is the token position `t` must predict, or -100. Only
response tokens and EOS are targets; prompt and padding never are (pad == EOS cannot mask EOS out).

A multi-turn record (`messages`) learns every assistant turn and the token that ends it, each piece
tokenized as it was rendered (pacos.data.turns); a conversation too long keeps its first whole turns.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from pacos.data.records import Record
from pacos.data.templates import render_prompt
from pacos.data.turns import conversation_of, segments

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    targets: list[int]  # already shifted: targets[t] = input_ids[t + 1] on response positions, else -100
    unlike: list[int] | None = None  # 1 where targets[t] is to be unlearned (loop_example)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeReport:
    kept: int = 0
    dropped_too_long: int = 0
    cut: int = 0
    prompt_tokens: int = 0
    response_tokens: int = 0
    conversations: int = 0  # multi-turn records among those kept


def prompt_token_ids(record: Record, tokenizer: Any, template: str) -> list[int]:
    # A chat template writes its own BOS; a plain template gets the tokenizer's (Gemma and Llama want one).
    return tokenizer(
        render_prompt(record, template, tokenizer), add_special_tokens=template != "chat"
    ).input_ids


def tokenize_record(
    record: Record, tokenizer: Any, template: str, max_length: int, truncation: str
) -> tuple[Example | None, str]:
    """One training example, or None with the reason it cannot be one ('too_long')."""
    messages = conversation_of(record)
    if messages is not None:
        return tokenize_conversation(messages, tokenizer, template, max_length, truncation)
    prompt_ids = prompt_token_ids(record, tokenizer, template)
    response_ids = [*tokenizer(record["output"], add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    if len(prompt_ids) + len(response_ids) > max_length:
        if truncation == "drop" or len(prompt_ids) >= max_length - 1:
            return None, "too_long"
        response_ids = response_ids[: max_length - len(prompt_ids)]  # EOS goes: the answer did not end here
        status = "cut"
    else:
        status = "ok"
    input_ids = prompt_ids + response_ids
    targets = [IGNORE] * (len(prompt_ids) - 1) + response_ids + [IGNORE]
    return Example(input_ids, targets), status


def _special_ids(tokenizer: Any) -> set[int]:
    """Token ids that end a turn (EOS, <|im_end|>, <end_of_turn>, ...): every special token."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special)
    return ids


def tokenize_conversation(
    messages: list[dict[str, str]], tokenizer: Any, template: str, max_length: int, truncation: str
) -> tuple[Example | None, str]:
    """A conversation as one example: every answer learned up to and including the first special token
    after it (the end of its turn; what follows, such as a newline, is the next turn's prompt)."""
    while messages and messages[-1]["role"] != "assistant":
        messages = messages[:-1]  # a question without its answer teaches nothing
    if not messages:
        return None, "no_answer"
    specials = _special_ids(tokenizer)
    turns: list[tuple[list[int], list[int]]] = []  # (ids, learn flags) per prompt and its answer
    ids: list[int] = []
    flags: list[int] = []
    for i, (text, learn) in enumerate(segments(messages, template, tokenizer)):
        # A chat template writes its own BOS; a plain template gets the tokenizer's, as single turns do.
        piece = tokenizer(text, add_special_tokens=i == 0 and template != "chat").input_ids
        ids += piece
        if learn:
            end = next((j for j, t in enumerate(piece) if t in specials), len(piece) - 1)
            flags += [1] * (end + 1) + [0] * (len(piece) - end - 1)
            turns.append((ids, flags))
            ids, flags = [], []
        else:
            flags += [0] * len(piece)
    kept = 0
    while kept < len(turns) and sum(len(t[0]) for t in turns[: kept + 1]) <= max_length:
        kept += 1
    status = "ok" if kept == len(turns) else "cut"
    if kept == 0:  # even the first turn is too long: as a single-turn record would be
        first_ids, first_flags = turns[0]
        prompt_len = first_flags.index(1) if 1 in first_flags else len(first_flags)
        if truncation == "drop" or prompt_len >= max_length - 1:
            return None, "too_long"
        turns, kept = [(first_ids[:max_length], first_flags[:max_length])], 1
    input_ids = [t for turn_ids, _ in turns[:kept] for t in turn_ids]
    learn = [f for _, turn_flags in turns[:kept] for f in turn_flags]
    targets = [t if f else IGNORE for t, f in zip(input_ids[1:], learn[1:], strict=True)] + [IGNORE]
    return Example(input_ids, targets), status


def tokenize_records(
    records: list[Record], tokenizer: Any, template: str, max_length: int, truncation: str
) -> tuple[list[Example], TokenizeReport]:
    report = TokenizeReport()
    examples = []
    for record in records:
        example, status = tokenize_record(record, tokenizer, template, max_length, truncation)
        if example is None:
            report.dropped_too_long += 1
            continue
        report.cut += status == "cut"
        report.kept += 1
        report.conversations += conversation_of(record) is not None
        n_response = sum(t != IGNORE for t in example.targets)
        report.response_tokens += n_response
        report.prompt_tokens += len(example) - n_response
        examples.append(example)
    return examples, report


# A line, sentence or clause of an answer, with its closing punctuation (ASCII and CJK).
_UNIT = re.compile(r"[^\n。！？；，.!?;,]+[。！？；，.!?;,]*")


def loop_example(
    record: Record, tokenizer: Any, template: str, max_length: int, rng: random.Random
) -> Example | None:
    """A synthetic loop: the answer cut after one of its lines, sentences or clauses, which then comes
    1-3 more times, as a small model loops under greedy decoding. The repeats' tokens are targets to
    unlearn (Welleck et al. 2019's sequence-level unlikelihood, on made-up loops instead of sampled ones:
    sampling answers is what a CPU cannot afford); nothing else in it is a target. None when the answer
    has no unit of 6+ characters or the result is longer than max_length, or for a conversation."""
    if conversation_of(record) is not None:
        return None
    response = record["output"]
    units = [m for m in _UNIT.finditer(response) if len(m.group().strip()) >= 6]
    if not units:
        return None
    unit = rng.choice(units)
    # What separates the repeats: the newlines before the unit, else a space between ASCII sentences.
    separator = re.search(r"\n*$", response[: unit.start()]).group()
    if not separator and not unit.group()[0].isspace() and unit.group().isascii():
        separator = " "
    prompt_ids = prompt_token_ids(record, tokenizer, template)
    prefix_ids = tokenizer(response[: unit.end()], add_special_tokens=False).input_ids
    separator_ids = tokenizer(separator, add_special_tokens=False).input_ids if separator else []
    unit_ids = tokenizer(unit.group(), add_special_tokens=False).input_ids
    input_ids, flags = prompt_ids + prefix_ids, [0] * (len(prompt_ids) + len(prefix_ids))
    for _ in range(rng.randint(1, 3)):
        input_ids += separator_ids + unit_ids
        flags += [0] * len(separator_ids) + [1] * len(unit_ids)
    if len(input_ids) > max_length:
        return None
    targets = [t if f else IGNORE for t, f in zip(input_ids[1:], flags[1:], strict=True)] + [IGNORE]
    return Example(input_ids, targets, [*flags[1:], 0])


def loop_examples(
    records: list[Record], n: int, tokenizer: Any, template: str, max_length: int, seed: int
) -> list[Example]:
    """Up to n loop_example()s from records drawn at random (seeded)."""
    rng = random.Random(seed)
    out: list[Example] = []
    for record in rng.sample(records, len(records)):
        if len(out) == n:
            break
        example = loop_example(record, tokenizer, template, max_length, rng)
        if example is not None:
            out.append(example)
    return out


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, length]
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None  # None when packed: position ids mark where each example starts
    targets: torch.Tensor
    real_tokens: int
    unlike: torch.Tensor | None = None  # 1 where the target is to be unlearned; None: nowhere
    # What the loss is averaged over when not tokens (preference pairs: pairs), and the objective's own
    # tensors, passed to it as keyword arguments (train/pairs.py).
    units: int | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()

    @property
    def labelled(self) -> int:
        return self.units if self.units is not None else int((self.targets != IGNORE).sum())

    def to(self, device: torch.device) -> Batch:
        move = {"device": device, "non_blocking": True}
        mask = None if self.attention_mask is None else self.attention_mask.to(**move)
        return Batch(
            input_ids=self.input_ids.to(**move),
            position_ids=self.position_ids.to(**move),
            attention_mask=mask,
            targets=self.targets.to(**move),
            real_tokens=self.real_tokens,
            unlike=None if self.unlike is None else self.unlike.to(**move),
            units=self.units,
            extra={k: v.to(**move) for k, v in self.extra.items()},
        )


def collate(examples: list[Example], pad_id: int, packing: bool) -> Batch:
    """Packed: one row, no padding, positions restart per example (transformers then keeps examples from
    attending to each other). Not packed: right-padded rows with an attention mask."""
    real = sum(len(e) for e in examples)
    any_unlike = any(e.unlike is not None for e in examples)
    if packing:
        ids = [t for e in examples for t in e.input_ids]
        pos = [p for e in examples for p in range(len(e))]
        tgt = [t for e in examples for t in e.targets]
        unlike = [u for e in examples for u in (e.unlike or [0] * len(e))] if any_unlike else None
        return Batch(
            input_ids=torch.tensor([ids]),
            position_ids=torch.tensor([pos]),
            attention_mask=None,
            targets=torch.tensor([tgt]),
            real_tokens=real,
            unlike=None if unlike is None else torch.tensor([unlike]),
        )
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    tgt = torch.full((len(examples), width), IGNORE)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    unlike = torch.zeros((len(examples), width), dtype=torch.long) if any_unlike else None
    for row, e in enumerate(examples):
        ids[row, : len(e)] = torch.tensor(e.input_ids)
        tgt[row, : len(e)] = torch.tensor(e.targets)
        mask[row, : len(e)] = 1
        if unlike is not None and e.unlike is not None:
            unlike[row, : len(e)] = torch.tensor(e.unlike)
    pos = torch.arange(width).expand(len(examples), width).clone()
    return Batch(
        input_ids=ids, position_ids=pos, attention_mask=mask, targets=tgt, real_tokens=real, unlike=unlike
    )


class StepPlan:
    """Which examples every optimizer step uses: a fresh permutation per epoch (seed + epoch), cut into
    global batches, each shared out across processes and cut into micro-batches.

    Everything is a pure function of (seed, epoch, step), so a resumed run sees exactly the batches the
    uninterrupted run would have seen.
    """

    def __init__(
        self, n_examples: int, batch_size: int, micro_batch_size: int, seed: int, world_size: int = 1
    ):
        if n_examples < world_size:
            raise ValueError(f"{n_examples} training examples cannot feed {world_size} processes")
        self.n = n_examples
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.world_size = world_size
        self.steps_per_epoch = math.ceil(self.n / batch_size)
        if self.n % batch_size and self.n % batch_size < world_size:
            self.steps_per_epoch -= 1  # a last batch too small to give every process an example is skipped

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        return max_steps or max(1, math.ceil(epochs * self.steps_per_epoch))

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def step_indices(self, step: int, rank: int = 0) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        batch = self.order(epoch)[within * self.batch_size : (within + 1) * self.batch_size]
        return batch[rank :: self.world_size]

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch


def micro_batches(
    examples: list[Example], indices: list[int], micro_batch_size: int, pad_id: int, packing: bool
) -> list[Batch]:
    chosen = [examples[i] for i in indices]
    if not packing:  # group similar lengths so rows carry little padding
        chosen.sort(key=len, reverse=True)
    return [
        collate(chosen[i : i + micro_batch_size], pad_id, packing)
        for i in range(0, len(chosen), micro_batch_size)
    ]
