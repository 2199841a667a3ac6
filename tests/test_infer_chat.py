from __future__ import annotations

import io
import shutil
import sys
from types import SimpleNamespace

import pytest

from pacos.data.templates import ALPACA
from pacos.errors import PacosError
from pacos.infer import SamplingParams, TorchEngine
from pacos.infer.chat import ChatSession, read_message, run_chat
from pacos.infer.prompting import chat_prompt

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_chat_model(tiny_llama, tmp_path_factory):
    """The tiny Llama with a chat template, so it counts as a chat model."""
    import json

    path = tmp_path_factory.mktemp("tiny-chat") / "model"
    shutil.copytree(tiny_llama, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_alpaca_conversation_is_the_training_prompt_then_continues():
    tokenizer = SimpleNamespace(eos_token="</s>")
    single = chat_prompt([{"role": "user", "content": "Name a color."}], "alpaca", tokenizer)
    assert single == ALPACA.prompt({"instruction": "Name a color."})
    turns = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Another?"},
    ]
    # Each earlier answer is closed by EOS, as multi-turn training data is.
    assert chat_prompt(turns, "alpaca", tokenizer) == (
        "You are terse.\n\n### Instruction:\nName a color.\n\n### Response:Red.</s>\n\n"
        "### Instruction:\nAnother?\n\n### Response:"
    )


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([], "at least one message"),
        ([{"role": "robot", "content": "x"}], r"messages\[0\].role"),
        ([{"role": "user", "content": 5}], r"messages\[0\].content"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "only text content parts"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "last message"),
    ],
)
def test_bad_messages_are_named(messages, error):
    with pytest.raises(PacosError, match=error):
        chat_prompt(messages, "alpaca", None)


def test_template_follows_the_model(tiny_llama, tiny_chat_model):
    assert TorchEngine.load(str(tiny_llama), dtype="float32").template == "alpaca"
    chat = TorchEngine.load(str(tiny_chat_model), dtype="float32")
    assert chat.template == "chat"
    ids = chat.encode_chat(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "ok"},
        ]
    )
    assert chat.tokenizer.decode(ids) == "<|user|>hi<eos><|assistant|>yo<eos><|user|>ok<eos><|assistant|>"


def test_read_message_joins_continued_lines_and_blocks():
    lines = iter(["first \\", "second", '"""', "a", "", "b", '"""'])
    read = lambda prompt: next(lines)  # noqa: E731
    assert read_message(read) == "first \nsecond"
    assert read_message(read) == "a\n\nb"


def test_chat_models_keep_history_and_drop_the_oldest_turns(tiny_chat_model):
    engine = TorchEngine.load(str(tiny_chat_model), dtype="float32")
    session = ChatSession(engine, SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert session.keep_history
    first, tokens, _ = session.answer("hello", lambda text: None)
    assert tokens == 4 and session.messages == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": first.strip()},
    ]
    with_history = engine.tokenizer.decode(session.prompt_ids("again"))
    assert with_history.startswith("<|user|>hello<eos><|assistant|>") and with_history.endswith(
        "<|user|>again<eos><|assistant|>"
    )
    engine.context_length = len(engine.encode_chat([{"role": "user", "content": "again"}])) + 4
    assert engine.tokenizer.decode(session.prompt_ids("again")) == "<|user|>again<eos><|assistant|>"
    session.reset()
    assert session.messages == []


def test_run_chat_commands_without_a_terminal(tiny_llama):
    engine = TorchEngine.load(str(tiny_llama), dtype="float32")
    session = ChatSession(engine, SamplingParams(max_new_tokens=3, ignore_eos=True))
    lines = iter(["hello", "/what", "/reset", "/help", "/exit", "never read"])
    out = io.StringIO()
    run_chat(session, out, lambda prompt: next(lines))
    text = out.getvalue()
    assert "template alpaca; answers each message on its own" in text
    assert "[3 tokens, " in text and "unknown command /what" in text
    assert "(conversation cleared)" in text and "/reset   forget the conversation" in text


def test_pacos_chat_in_a_real_terminal(tiny_llama):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "pacos", "chat", "--model", str(tiny_llama), "--temperature", "0", "--max-new-tokens", "6"],
        encoding="utf-8",
        timeout=120,
        dimensions=(40, 200),
    )
    child.expect("pacos chat: ")
    child.expect(">>> ")
    child.sendline("Give three tips for staying healthy.")
    child.expect(r"\[6 tokens, [\d.]+ tokens/s\]")
    child.expect(">>> ")
    child.sendline("first line \\")
    child.expect(r"\.\.\. ")
    child.sendline("second line")
    child.expect(r"\[6 tokens, ")
    child.sendline("/reset")
    child.expect(r"\(conversation cleared\)")
    child.sendline('"""')
    child.sendline("a block")
    child.sendline('"""')
    child.expect(r"\[6 tokens, ")
    child.expect(">>> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_pacos_chat_errors_are_one_line(cli, tmp_path):
    result = cli("chat", "--model", str(tmp_path / "missing.gguf"))
    assert result.code == 1 and "no such GGUF file" in result.err
    result = cli("chat", "--model", "gemma-3-270m", "--backend", "vllm")
    assert result.code == 1 and "backend 'vllm'" in result.err
