"""A real HTTP server on loopback that speaks the OpenAI API with scripted answers, for generation tests.

Each request takes the next action of the script (then `default` forever): a list of new tasks in the
block format or as chat markdown, raw text, an HTTP status (429 with Retry-After, 500), a connection
reset, an answer slower than the client's timeout, or a malformed body. New tasks are made of random
pseudo-words (or random Chinese characters), so they are novel to each other and to the seed tasks.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
_HANZI = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理府研质"  # noqa: E501


_HANZI = "".join(
    c for c in dict.fromkeys(_HANZI) if c not in "图件画视音频片照像地乐文"
)  # no blacklisted words


def pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


def new_task(rng: random.Random, language: str = "en") -> dict[str, str]:
    if language == "zh":
        words = "".join(rng.choice(_HANZI) for _ in range(10))
        return {"instruction": f"请解释{words}的含义。", "input": "", "output": f"{words}是一个例子。"}
    words = " ".join(pseudo_word(rng) for _ in range(6))
    task_input = " ".join(pseudo_word(rng) for _ in range(5)) if rng.random() < 0.5 else ""
    return {"instruction": f"Explain why {words} matter.", "input": task_input, "output": f"Because {words}."}


def block_list(tasks: list[dict[str, str]], first: int, continuation: bool, language: str = "en") -> str:
    """Tasks in the block format; a continuation starts right after the prompt's 'N. Instruction:'."""
    labels = ("指令", "输入", "输出") if language == "zh" else ("Instruction", "Input", "Output")
    colon = "：" if language == "zh" else ":"
    items = []
    for i, task in enumerate(tasks, start=first):
        head = f" {task['instruction']}" if continuation and i == first else (
            f"{i}. {labels[0]}{colon} {task['instruction']}"
        )  # fmt: skip
        items.append(
            f"{head}\n{i}. {labels[1]}{colon}\n{task['input'] or '<noinput>'}\n{i}. {labels[2]}{colon}\n"
            f"{task['output']}"
        )
    return "\n###\n".join(items) + "\n###\n"


def markdown_list(tasks: list[dict[str, str]], first: int) -> str:
    items = [
        f"**Task {i}**\n\n- **Instruction:** {t['instruction']}\n- **Input:** {t['input'] or 'None'}\n"
        f"- **Output:** {t['output']}"
        for i, t in enumerate(tasks, start=first)
    ]
    return "Here are the new tasks:\n\n" + "\n\n".join(items)


@dataclass
class Action:
    kind: str  # list, markdown, text, custom, status, reset, slow, malformed
    tasks: int = 3
    text: str = ""
    status: int = 200
    retry_after: str | None = None
    seconds: float = 0.0
    finish_reason: str = "stop"
    language: str = "en"
    items: list[dict[str, str]] | None = None  # exact tasks instead of random ones
    respond: Any = None  # kind "custom": a function (prompt, rng) -> text


@dataclass
class ScriptedTeacher:
    script: list[Action] = field(default_factory=list)
    default: Action = field(default_factory=lambda: Action("list"))
    delay: float = 0.0  # before every answer
    seed: int = 0
    model: str = "scripted-teacher"
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.rng = random.Random(self.seed)
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": teacher.model}]}).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                chat = self.path.endswith("/chat/completions")
                with teacher.lock:
                    teacher.requests.append(
                        {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
                    )
                    n = len(teacher.requests)
                    action = teacher.script[n - 1] if n <= len(teacher.script) else teacher.default
                    items = action.items or [
                        new_task(teacher.rng, action.language) for _ in range(action.tasks)
                    ]
                if teacher.delay:
                    time.sleep(teacher.delay)
                if action.kind == "reset":
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    self.connection.close()
                    self.close_connection = True
                    return
                if action.kind == "status":
                    headers = {"Retry-After": action.retry_after} if action.retry_after is not None else {}
                    self._send(action.status, b'{"error": {"message": "scripted failure"}}', headers)
                    return
                if action.kind == "malformed":
                    self._send(200, b"<html>this is not JSON</html>")
                    return
                if action.kind == "slow":
                    time.sleep(action.seconds)
                prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
                numbers = re.findall(r"(\d+)\. (?:Instruction|指令)[:：]", prompt)
                first = int(numbers[-1]) + (1 if chat else 0) if numbers else 1
                if action.kind in ("list", "slow"):
                    text = block_list(items, first, continuation=not chat, language=action.language)
                elif action.kind == "markdown":
                    text = markdown_list(items, first)
                elif action.kind == "custom":
                    with teacher.lock:
                        text = action.respond(prompt, teacher.rng)
                else:
                    text = action.text
                choice: dict[str, Any] = {"index": 0, "finish_reason": action.finish_reason}
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4}
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                payload = {"id": f"cmpl-{n}", "object": "chat.completion" if chat else "text_completion",
                           "model": body.get("model"), "choices": [choice], "usage": usage}  # fmt: skip
                self._send(200, json.dumps(payload, ensure_ascii=False).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client that timed out and left
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedTeacher:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


CLI_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}  # `python -m pacos` from this tree


def kill_when_accepted(command: list[str], accepted: Path, lines: int, torn_id: str = "gen-9999") -> str:
    """Start a `pacos generate` CLI run, SIGKILL it once `accepted` holds `lines` lines, then append a torn
    half-line as if the kill came mid-write. Returns the file's text before the torn line."""
    process = subprocess.Popen(command, env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if accepted.exists() and accepted.read_text().count("\n") >= lines:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = accepted.read_text()
    with open(accepted, "a") as f:
        f.write(json.dumps({"id": torn_id, "instruction": "half a line"})[:-8])  # cut mid-string
    return before
