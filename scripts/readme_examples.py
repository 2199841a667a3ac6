"""Run every command example in README.md, as a new user would, from an empty directory.

Every ```bash block of README.md is split into commands (a line ending in `\\` continues on the next
one; a heredoc runs with its command; comment lines, including `#   ...` lines showing output, are not
commands). The blocks run in README order in ONE fresh temporary directory outside the checkout, so a
later block may use files an earlier one made; `--section NAME` runs only the blocks under headings
containing NAME (with `--keep DIR` it can reuse the directory of an earlier run). Each command runs with
`bash -c`, the venv's bin first on PATH, HF_HUB_OFFLINE=1, a $PACOS_CACHE of its own (sharing only the
user's converted models) and a timeout. A command ending in `&` starts
in the background (a server): the runner waits until the port in its `--port N` (default 8000) answers,
and stops it at the end of its block.

Skip convention: a command that cannot run here (8 GPUs, a vLLM or OpenAI endpoint, the network, a
push to the Hub) carries the comment `# (not run: REASON)`, either at the end of its (last) line or on a
line of its own right above it. `make ...` commands (the README's two set-up commands) run in the
checkout, not in an empty directory: they are skipped too (CI runs `make test`). Every skipped command
is printed with its reason.

    .venv/bin/python scripts/readme_examples.py [--section NAME] [--keep DIR] [--json PATH]

Exits 1 if any command failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = re.compile(r"#\s*\(not run:\s*(?P<reason>[^)]*)\)\s*$")
HEREDOC = re.compile(r"<<-?\s*['\"]?(?P<tag>\w+)['\"]?")
HEADING = re.compile(r"^(#{1,6})\s+(?P<title>.+?)\s*$")


@dataclass
class Command:
    section: str
    block: int
    text: str
    skip: str | None = None  # the reason, when the README marks it as not run here


@dataclass
class Result:
    section: str
    block: int
    command: str
    status: str  # ok, failed, skipped
    seconds: float = 0.0
    reason: str = ""
    tail: list[str] = field(default_factory=list)


def parse_readme(text: str) -> list[Command]:
    """Commands of every ```bash block, with the heading each one is under."""
    commands: list[Command] = []
    section, block, lines, in_block = "", 0, [], False
    for line in text.splitlines():
        if not in_block:
            if line.strip() == "```bash":
                in_block, lines = True, []
                block += 1
            elif heading := HEADING.match(line):
                section = heading["title"]
            continue
        if line.strip() == "```":
            in_block = False
            commands += split_commands(lines, section, block)
        else:
            lines.append(line)
    return commands


def split_commands(lines: list[str], section: str, block: int) -> list[Command]:
    commands: list[Command] = []
    pending_skip: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        i += 1
        if not stripped:
            continue
        if stripped.startswith("#"):
            if marker := SKIP.search(stripped):
                pending_skip = marker["reason"].strip()
            continue
        parts = [line]
        while parts[-1].rstrip().endswith("\\") and i < len(lines):
            parts.append(lines[i])
            i += 1
        if heredoc := HEREDOC.search(" ".join(parts)):  # the body up to its terminator goes along
            while i < len(lines):
                parts.append(lines[i])
                i += 1
                if parts[-1].strip() == heredoc["tag"]:
                    break
        text = "\n".join(parts)
        skip = pending_skip
        if stripped.startswith("make "):
            skip = "a set-up command of the checkout, not of an empty directory (CI runs make test)"
        if marker := SKIP.search(parts[0] if heredoc else parts[-1]):
            skip = marker["reason"].strip()
        commands.append(Command(section, block, text, skip))
        pending_skip = None
    return commands


def environment(workdir: Path) -> dict[str, str]:
    """The venv first on PATH, no hub access, and a fresh $PACOS_CACHE in the work directory whose
    converted models are the user's (so answers and judgments are computed anew, models not reconverted)."""
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("VIRTUAL_ENV", None)
    user_cache = Path(env.get("PACOS_CACHE") or Path.home() / ".cache" / "pacos")
    cache = workdir / ".pacos-cache"
    cache.mkdir(exist_ok=True)
    for name in ("models", "gguf"):
        (user_cache / name).mkdir(parents=True, exist_ok=True)
        if not (cache / name).exists():
            (cache / name).symlink_to(user_cache / name)
    env["PACOS_CACHE"] = str(cache)
    return env


def is_background(text: str) -> bool:
    return re.sub(r"\s+#.*$", "", text.rstrip()).endswith("&")


def port_of(text: str) -> int:
    match = re.search(r"--port[ =](\d+)", text)
    return int(match[1]) if match else 8000


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(1)
    return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a background command and everything it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tail_of(path: Path, n: int = 15) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-n:]


def run_block(commands: list[Command], cwd: Path, logs: Path, timeout: float) -> list[Result]:
    results: list[Result] = []
    servers: list[subprocess.Popen[bytes]] = []
    env = environment(cwd)
    try:
        for command in commands:
            first = command.text.splitlines()[0]
            result = Result(command.section, command.block, command.text, "skipped")
            if command.skip is not None:
                result.reason = command.skip
                report(result, first)
                results.append(result)
                continue
            log = logs / f"{len(list(logs.iterdir())):03d}.log"
            start = time.monotonic()
            with log.open("wb") as out:
                if is_background(command.text):
                    text = re.sub(r"&\s*(#.*)?$", "", command.text.rstrip())
                    proc = subprocess.Popen(
                        ["bash", "-c", f"exec {text}"],
                        cwd=cwd,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                    servers.append(proc)
                    ready = wait_for_port(port_of(text), proc, timeout)
                    result.status = "ok" if ready else "failed"
                    result.reason = "" if ready else "its port never answered"
                else:
                    proc = subprocess.Popen(
                        ["bash", "-c", command.text],
                        cwd=cwd,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                    try:
                        code = proc.wait(timeout=timeout)
                        result.status = "ok" if code == 0 else "failed"
                        result.reason = "" if code == 0 else f"exit {code}"
                    except subprocess.TimeoutExpired:
                        stop(proc)
                        result.status, result.reason = "failed", f"timed out after {timeout:.0f} s"
            result.seconds = time.monotonic() - start
            if result.status == "failed":
                result.tail = tail_of(log)
            report(result, first)
            results.append(result)
    finally:
        for proc in servers:
            stop(proc)
    return results


def report(result: Result, first_line: str) -> None:
    shown = first_line if len(first_line) <= 110 else first_line[:107] + "..."
    if result.status == "skipped":
        print(f"  skipped        {shown}\n                 reason: {result.reason}", flush=True)
        return
    label = "ok" if result.status == "ok" else "FAILED"
    print(f"  {label:<6} {result.seconds:6.1f}s {shown}", flush=True)
    if result.status == "failed":
        print(f"                 {result.reason}", flush=True)
        for line in result.tail:
            print(f"                 | {line}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--section", help="run only the blocks under headings containing this (any case)")
    parser.add_argument("--keep", type=Path, help="run in this directory (created if missing) and keep it")
    parser.add_argument("--json", type=Path, help="write every command's result here")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per command (default 900)")
    args = parser.parse_args()

    commands = parse_readme(args.readme.read_text(encoding="utf-8"))
    if args.section:
        commands = [c for c in commands if args.section.lower() in c.section.lower()]
        if not commands:
            print(f"no ```bash block under a heading containing {args.section!r}", file=sys.stderr)
            return 2
    if args.keep:
        workdir = args.keep.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="pacos-readme-"))
    if workdir.is_relative_to(ROOT):
        print(f"{workdir} is inside the checkout: run the examples elsewhere", file=sys.stderr)
        return 2
    logs = Path(tempfile.mkdtemp(prefix="pacos-readme-logs-"))
    print(f"running {len(commands)} README commands in {workdir} (logs: {logs})", flush=True)

    started = time.monotonic()
    results: list[Result] = []
    blocks = sorted({c.block for c in commands})
    for block in blocks:
        in_block = [c for c in commands if c.block == block]
        print(f"[{in_block[0].section}] block {block}", flush=True)
        results += run_block(in_block, workdir, logs, args.timeout)
    total = time.monotonic() - started

    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")}
    print(
        f"\n{len(results)} commands: {counts['ok']} ok, {counts['failed']} failed, "
        f"{counts['skipped']} skipped, {total / 60:.1f} min, in {workdir}"
    )
    for r in results:
        if r.status == "failed":
            print(f"  FAILED [{r.section}] {r.command.splitlines()[0]}")
    if args.json:
        summary = {"workdir": str(workdir), "seconds": round(total, 1), **counts}
        payload = {"summary": summary, "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
