"""Multi-turn records: conversion, labels on every assistant turn through the template's own rendering,
whole-turn truncation, and a model tuned on conversations that uses an earlier turn to answer."""

from __future__ import annotations

import io
import json

import pytest
from transformers import AutoTokenizer

from pacos.data.io import read_records
from pacos.data.records import RecordError, normalize
from pacos.data.turns import conversation_of, segments
from pacos.errors import PacosError
from pacos.train.data import IGNORE, tokenize_records
from tests.conftest import write_jsonl

# SmolLM2-135M-Instruct's chat template (its tokenizer_config.json), and Gemma 3's for text (google's
# gemma-3 *-it tokenizer_config.json without the image branches): the templates the embedded models meet.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {{- message['content'] | trim -}}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "A pear."},
    {"role": "user", "content": "Its colour?"},
    {"role": "assistant", "content": "Green."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "Any time."},
]
ANSWERS = ["A pear.", "Green.", "Any time."]


@pytest.fixture(scope="module")
def tokenizers(tiny_llama) -> dict[str, object]:
    """The tiny byte-level tokenizer three ways: plain (Alpaca), with SmolLM2's and with Gemma's template
    (their turn tokens added as special tokens, as in the real vocabularies)."""
    plain = AutoTokenizer.from_pretrained(tiny_llama)
    smollm2 = AutoTokenizer.from_pretrained(tiny_llama)
    smollm2.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    smollm2.chat_template = SMOLLM2_TEMPLATE
    gemma = AutoTokenizer.from_pretrained(tiny_llama)
    gemma.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    gemma.chat_template = GEMMA3_TEMPLATE
    return {"alpaca": plain, "smollm2": smollm2, "gemma": gemma}


def learned_spans(tokenizer, example) -> list[str]:
    """The text of each run of consecutive target tokens."""
    spans, current = [], []
    for target in [*example.targets, IGNORE]:
        if target == IGNORE:
            if current:
                spans.append(tokenizer.decode(current))
            current = []
        else:
            current.append(target)
    return spans


@pytest.mark.parametrize(
    ("name", "template", "end"),
    [("alpaca", "alpaca", "<eos>"), ("smollm2", "chat", "<|im_end|>"), ("gemma", "chat", "<end_of_turn>")],
)
def test_labels_cover_exactly_the_assistant_turns_and_their_end_tokens(tokenizers, name, template, end):
    tokenizer = tokenizers[name]
    record = {"instruction": "Name a fruit.", "input": "", "output": "Any time.", "messages": CONVERSATION}
    [example], report = tokenize_records([record], tokenizer, template, 1024, "drop")
    assert learned_spans(tokenizer, example) == [answer + end for answer in ANSWERS]
    assert report.conversations == 1
    text = tokenizer.decode(example.input_ids)
    if template == "chat":  # the example is the template's own rendering, token for token
        assert text == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    else:
        assert text == (
            "<bos>Be brief.\n\n### Instruction:\nName a fruit.\n\n### Response:A pear.<eos>\n\n"
            "### Instruction:\nIts colour?\n\n### Response:Green.<eos>\n\n"
            "### Instruction:\nThanks!\n\n### Response:Any time.<eos>"
        )


def test_truncation_keeps_whole_turns(tokenizers):
    tokenizer = tokenizers["smollm2"]
    record = {"instruction": "x", "output": "Any time.", "messages": CONVERSATION}
    [full], _ = tokenize_records([record], tokenizer, "chat", 1024, "drop")

    def tokens(messages, generation_prompt=False):
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    [cut], report = tokenize_records([record], tokenizer, "chat", tokens(CONVERSATION[:5]) + 2, "drop")
    assert report.cut == 1 and len(cut) < len(full)
    assert learned_spans(tokenizer, cut) == ["A pear.<|im_end|>", "Green.<|im_end|>"]
    # Not even the first turn fits: dropped, or its answer cut (as a single-turn record would be).
    first_prompt = tokens(CONVERSATION[:2], generation_prompt=True)
    _, dropped = tokenize_records([record], tokenizer, "chat", first_prompt + 3, "drop")
    assert dropped.dropped_too_long == 1
    [first], _ = tokenize_records([record], tokenizer, "chat", first_prompt + 3, "cut")
    assert len(first) == first_prompt + 3 and learned_spans(tokenizer, first) == ["A p"]


def test_a_template_that_rewrites_earlier_turns_is_refused(tokenizers):
    tokenizer = tokenizers["smollm2"]
    rewriting = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    # Marks only the last user message: rendering a longer prefix changes an earlier turn.
    rewriting.chat_template = (
        "{% for m in messages %}{{ m['role'] }}{% if loop.last and m['role'] == 'user' %}*{% endif %}: "
        "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(PacosError, match="cannot be split into turns"):
        segments(CONVERSATION, "chat", rewriting)


def test_conversations_convert_from_openai_and_sharegpt_and_keep_their_turns(tmp_path):
    sharegpt = {
        "conversations": [
            {"from": "human", "value": "你好"},
            {"from": "gpt", "value": "你好！"},
            {"from": "human", "value": "再说一次"},
            {"from": "gpt", "value": "你好！！"},
        ]
    }
    [record] = normalize(sharegpt)
    assert record["instruction"] == "你好" and record["output"] == "你好！！"
    assert [m["role"] for m in conversation_of(record)] == ["user", "assistant", "user", "assistant"]
    # A round trip through a file keeps the turns (the record is written with its messages).
    path = write_jsonl(tmp_path / "chats.jsonl", [record, {"messages": CONVERSATION}])
    loaded = read_records(path)
    assert conversation_of(loaded[0]) == conversation_of(record)
    assert conversation_of(loaded[1]) == CONVERSATION
    # Single-turn chats stay plain records, as before.
    [single] = normalize({"messages": CONVERSATION[:3]})
    assert conversation_of(single) is None and single["metadata"] == {"system": "Be brief."}
    with pytest.raises(RecordError, match=r"messages\[1\]': expected an assistant turn"):
        normalize({"messages": [CONVERSATION[1], CONVERSATION[3], CONVERSATION[2]]})


# -- a model tuned on conversations uses the earlier turn --------------------------------------------------

WORDS = ["apple", "grape", "peach", "mango", "olive", "berry"]


def recall_conversation(word: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "S"},
        {"role": "user", "content": f"remember {word}"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "word?"},
        {"role": "assistant", "content": word},
    ]


def test_a_model_tuned_on_conversations_answers_a_follow_up_from_the_earlier_turn(tiny_llama, tmp_path):
    """The follow-up ("word?") is the same in every conversation: only the first turn tells the answer."""
    from pacos.infer import SamplingParams, TorchEngine
    from pacos.infer.chat import ChatSession
    from pacos.train.config import TrainConfig
    from pacos.train.run import train

    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": recall_conversation(w)} for w in WORDS])
    out = tmp_path / "tuned"
    train(
        TrainConfig(
            model=str(tiny_llama),
            data=str(data),
            output_dir=str(out),
            max_steps=80,
            batch_size=6,
            micro_batch_size=6,
            lr=1e-2,
            warmup_ratio=0.0,
            lr_scheduler="constant",
            tensorboard=False,
        )
    )
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["tokenization"]["conversations"] == len(WORDS)
    engine = TorchEngine.load(str(out), dtype="float32")
    session = ChatSession(engine, SamplingParams(max_new_tokens=12, temperature=0.0), system="S")
    assert session.keep_history  # tuned on conversations: `pacos chat` remembers by default

    def recalled(session: ChatSession) -> int:
        hits = 0
        for word in WORDS:
            session.reset()
            first, _, _ = session.answer(f"remember {word}", io.StringIO().write)
            answer, _, _ = session.answer("word?", io.StringIO().write)
            hits += first.strip() == "ok" and answer.strip() == word
        return hits

    # Without the earlier turn the follow-up is one and the same question: at most one answer is right.
    assert recalled(session) >= len(WORDS) - 1
    session.keep_history = False
    assert recalled(session) <= 1
    # `pacos eval` on conversations asks for the last answer in its context, too.
    from pacos.llm.answers import Decoding, answer_records

    records = [{"instruction": "x", "output": w, "messages": recall_conversation(w)} for w in WORDS]
    answers, _ = answer_records(str(out), records, Decoding(max_new_tokens=12))
    assert sum(a["text"].strip() == w for a, w in zip(answers, WORDS)) >= len(WORDS) - 1


def test_single_turn_models_still_answer_each_message_alone(tiny_llama):
    from pacos.infer import SamplingParams, TorchEngine
    from pacos.infer.chat import ChatSession

    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    assert not ChatSession(engine, SamplingParams()).keep_history
