"""`pacos generate --num N` with the embedded teachers: requests and seconds per accepted example.

Two teachers, as a student without a GPU or network has them:
- `pacos serve --model smollm2-135m-instruct` (the embedded chat model) behind the OpenAI-compatible API,
  asked through the completions API (and, for 16 requests, through the chat API);
- `local:gemma-3-270m` in-process (the embedded *base* model continuing the list, as Self-Instruct's
  base GPT-3 did), with recipes/generate-local.yaml.
Each run starts from an empty directory; its data.json must pass `pacos data validate`. Prints JSON and
writes benchmarks/results-teachers.json.

    .venv/bin/python benchmarks/bench_teachers.py --num 30
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACOS = [sys.executable, "-m", "pacos"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"pacos serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit("pacos serve did not come up")


def run_generate(args: list[str], out: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run([*PACOS, "generate", *args, "--out", str(out)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    valid = subprocess.run(
        [*PACOS, "data", "validate", str(out / "data.json")], capture_output=True, text=True
    )
    accepted = summary["accepted"]
    return {
        "command": "pacos generate " + " ".join(args),
        "exit_code": done.returncode,
        "wall_seconds": round(wall, 1),
        "wall_seconds_per_accepted": round(wall / accepted, 2) if accepted else None,
        "data_json_validates": valid.returncode == 0,
        "validate_output": valid.stdout.strip(),
        **summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=30)
    parser.add_argument("--only", choices=["serve", "local"], default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-teachers.json")
    options = parser.parse_args()
    work = Path(os.environ.get("PACOS_BENCH_DIR") or tempfile.mkdtemp(prefix="pacos-bench-teachers-"))
    results = {"num": options.num, "machine": f"{os.cpu_count()} cores", "teachers": {}}
    try:
        if options.only in (None, "serve"):
            port = free_port()
            url = f"http://127.0.0.1:{port}/v1"
            serve = subprocess.Popen(
                [
                    *PACOS,
                    "serve",
                    "--model",
                    "smollm2-135m-instruct",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_ready(f"http://127.0.0.1:{port}", serve)
                # A 135M chat model does not follow the list format through the chat API; through the
                # completions API it continues the list like a base model. Both are measured.
                recipe = str(ROOT / "recipes" / "generate-local.yaml")
                results["teachers"]["pacos serve smollm2-135m-instruct (completions API)"] = run_generate(
                    ["--config", recipe, "--teacher", url, "--api", "completions", "--num", str(options.num),
                     "--set", "max_requests=400"],
                    work / "serve-completions",
                )  # fmt: skip
                results["teachers"]["pacos serve smollm2-135m-instruct (chat API)"] = run_generate(
                    ["--config", recipe, "--teacher", url, "--api", "chat", "--num", str(options.num),
                     "--set", "max_requests=16"],
                    work / "serve-chat",
                )  # fmt: skip
            finally:
                serve.terminate()
                serve.wait()
        if options.only in (None, "local"):
            results["teachers"]["local:gemma-3-270m"] = run_generate(
                [
                    "--config",
                    str(ROOT / "recipes" / "generate-local.yaml"),
                    "--num",
                    str(options.num),
                    "--set",
                    "max_requests=400",
                ],
                work / "local",
            )
    finally:
        if not os.environ.get("PACOS_BENCH_DIR"):  # set it to keep the runs' files for a look
            shutil.rmtree(work, ignore_errors=True)
    if options.only and options.out.exists():  # one teacher re-measured: keep the other's numbers
        results["teachers"] = {**json.loads(options.out.read_text())["teachers"], **results["teachers"]}
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    options.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
