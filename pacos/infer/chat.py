"""`pacos chat`: talk to a model in the terminal, the answer streaming as it is written.

Chat models and models pacos tuned on conversations keep the conversation (the oldest turns go when it
no longer fits the context); models tuned on single Alpaca instructions answer each one on its own, as
they were trained to, unless asked to remember with --history. Input: a line ending in a backslash
continues on the next line, and a block between two lines of triple quotes is sent as one message.
Ctrl-C stops an answer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TextIO

from pacos.errors import PacosError
from pacos.infer.loading import trained_on_conversations
from pacos.infer.sampling import SamplingParams

HELP = """commands:
  /reset   forget the conversation
  /exit    leave (also /quit or Ctrl-D)
  /help    this text
  a line ending in \\ continues on the next line; \"\"\" starts and ends a multi-line block"""


def read_message(read_line: Callable[[str], str]) -> str:
    """One message from the user; raises EOFError at the end of input."""
    first = read_line(">>> ")
    if first.strip() == '"""':
        lines = []
        while (line := read_line("... ")).strip() != '"""':
            lines.append(line)
        return "\n".join(lines)
    lines = [first]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(read_line("... "))
    return "\n".join(lines)


class ChatSession:
    def __init__(
        self, engine: Any, params: SamplingParams, system: str | None = None, history: bool | None = None
    ):
        self.engine = engine
        self.params = params
        self.system = system
        if history is None:  # chat models and models tuned on conversations remember; Alpaca's did not
            history = engine.template == "chat" or trained_on_conversations(engine.name)
        self.keep_history = history
        self.messages: list[dict[str, str]] = []

    def reset(self) -> None:
        self.messages = []

    def prompt_ids(self, user: str) -> list[int]:
        """The conversation so far plus `user`, dropping the oldest turns when it would not fit."""
        turns = (
            [*self.messages, {"role": "user", "content": user}]
            if self.keep_history
            else [{"role": "user", "content": user}]
        )
        system = [{"role": "system", "content": self.system}] if self.system else []
        budget = self.engine.context_length - self.params.max_new_tokens
        while True:
            ids = self.engine.encode_chat(system + turns)
            if len(ids) <= budget or len(turns) <= 1:
                return ids
            turns = turns[2:]  # one user turn and its answer

    def answer(self, user: str, write: Callable[[str], None]) -> tuple[str, int, float]:
        """Stream the answer to `user` through `write`; returns (text, tokens, seconds)."""
        params = replace(self.params, stop=[*self.params.stop, *self.engine.chat_stops()])
        ids = self.prompt_ids(user)
        if len(ids) >= self.engine.context_length:
            raise PacosError(
                f"the message is too long: {len(ids)} tokens, the context holds {self.engine.context_length}"
            )
        parts: list[str] = []
        tokens = 0
        start = time.perf_counter()
        events = self.engine.stream(ids, params)
        try:
            for event in events:
                if event.text:
                    write(event.text)
                    parts.append(event.text)
                tokens = event.completion_tokens
        except KeyboardInterrupt:
            events.close()
            write(" [stopped]")
        text = "".join(parts)
        if self.keep_history:
            self.messages += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": text.strip()},
            ]
        return text, tokens, time.perf_counter() - start


def run_chat(session: ChatSession, stdout: TextIO, read_line: Callable[[str], str] = input) -> None:
    with contextlib.suppress(ImportError):  # line editing and recall where the platform has it
        import readline  # noqa: F401

    def write(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    engine = session.engine
    memory = "keeps the conversation" if session.keep_history else "answers each message on its own"
    write(f"pacos chat: {engine.name} (template {engine.template}; {memory}). /help for commands.\n")
    while True:
        try:
            message = read_message(read_line)
        except EOFError:
            write("\n")
            return
        except KeyboardInterrupt:
            write("\n")
            continue
        command = message.strip()
        if command in ("/exit", "/quit", "/bye"):
            return
        if command == "/reset":
            session.reset()
            write("(conversation cleared)\n")
            continue
        if command in ("/help", "/?"):
            write(HELP + "\n")
            continue
        if not command:
            continue
        if command.startswith("/"):
            write(f"unknown command {command.split()[0]}; /help lists them\n")
            continue
        try:
            _, tokens, seconds = session.answer(message, write)
        except PacosError as e:
            write(f"error: {e}\n")
            continue
        rate = tokens / seconds if seconds > 0 else 0.0
        write(
            f"\n\033[2m[{tokens} tokens, {rate:.1f} tokens/s]\033[0m\n"
            if stdout.isatty()
            else f"\n[{tokens} tokens, {rate:.1f} tokens/s]\n"
        )
