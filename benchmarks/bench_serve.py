"""`pacos serve` on an embedded model, driven by the official `openai` client: does every OpenAI call
work, do bad requests get OpenAI-style 4xx errors, and what do N concurrent streams cost?

Starts `pacos serve` as a subprocess on a free loopback port (as a user would), then:
1. a completion, a chat completion and a streamed chat completion through `openai.OpenAI`;
2. bad requests (invalid JSON, a wrong type, an unknown model, a missing key) answered with 4xx bodies;
3. `--concurrency` streamed chat completions at once (`openai.AsyncOpenAI`): how many complete, status
   codes, tokens, wall time, latency percentiles, and whether /health still answers afterwards;
4. the same requests one after another through the same server, for the batching speed-up;
5. latency under load (`--latency 8,32`): one stream alone (its inter-token time is the yardstick),
   then N streams of seed-task instructions (41 to 184 prompt tokens) arriving `--arrival` seconds
   apart, so that requests are admitted while others stream: time to first token and inter-token time
   (gaps between a stream's consecutive chunks), p50 and p95, and the total tokens/s.
Prints one JSON document. PYTHONPATH=another checkout runs that version's server (the client is the same).

    .venv/bin/python benchmarks/bench_serve.py [--model smollm2-135m-instruct] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

API_KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw(port: int, method: str, path: str, body: bytes | None, key: str | None = API_KEY) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    status, data = response.status, response.read()
    connection.close()
    return status, json.loads(data or b"{}")


def start_server(model: str, port: int, extra: list[str]) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "pacos",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra,
    ]
    env = {**os.environ, "PACOS_API_KEY": API_KEY}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"pacos serve exited: {server.stdout.read()}")
        try:
            if raw(port, "GET", "/health", None)[0] == 200:
                return server
        except OSError:
            time.sleep(0.5)
    raise SystemExit("pacos serve did not start within 10 minutes")


def openai_calls(port: int, model: str) -> dict:
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    completion = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=16, temperature=0
    )
    chat = client.chat.completions.create(model=model, messages=question, max_tokens=32, temperature=0)
    pieces, finish = [], None
    for chunk in client.chat.completions.create(
        model=model, messages=question, max_tokens=32, temperature=0, stream=True
    ):
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return {
        "completion": {"text": completion.choices[0].text, "usage": completion.usage.model_dump()},
        "chat": {"text": chat.choices[0].message.content, "finish_reason": chat.choices[0].finish_reason},
        "stream": {
            "text": "".join(pieces),
            "finish_reason": finish,
            "same_as_chat": "".join(pieces) == chat.choices[0].message.content,
        },
        "models": [m.id for m in client.models.list().data],
    }


def bad_requests(port: int, model: str) -> dict:
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    cases = {
        "invalid JSON": raw(port, "POST", "/v1/chat/completions", b"{not json"),
        "max_tokens is a string": raw(
            port, "POST", "/v1/chat/completions", json.dumps({**chat, "max_tokens": "ten"}).encode()
        ),
        "negative max_tokens": raw(
            port,
            "POST",
            "/v1/completions",
            json.dumps({"model": model, "prompt": "x", "max_tokens": -1}).encode(),
        ),
        "unknown model": raw(
            port, "POST", "/v1/chat/completions", json.dumps({**chat, "model": "gpt-9"}).encode()
        ),
        "no API key": raw(port, "POST", "/v1/chat/completions", json.dumps(chat).encode(), key=None),
    }
    return {
        name: {
            "status": status,
            "error": body.get("error"),
            "ok": 400 <= status < 500 and "message" in body.get("error", {}),
        }
        for name, (status, body) in cases.items()
    }


async def one_stream(client, model: str, i: int, max_tokens: int) -> dict:
    start = time.perf_counter()
    tokens, finish, first = 0, None, None
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Write one sentence about the number {i}."}],
            max_tokens=max_tokens,
            temperature=0.7,
            seed=i,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},  # every request costs max_tokens: runs compare like for like
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter() - start
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return {
            "ok": finish is not None,
            "tokens": tokens,
            "seconds": time.perf_counter() - start,
            "first": first,
        }
    except Exception as e:  # any failure is a result to count, not a crash of the benchmark
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - start}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed_stream(client, model: str, messages: list[dict], max_tokens: int, delay: float) -> dict:
    """A streamed chat completion started after `delay` seconds: when each content chunk arrived."""
    await asyncio.sleep(delay)
    start = time.perf_counter()
    arrivals, tokens = [], 0
    stream = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return {"ttft": arrivals[0] - start if arrivals else None, "gaps": gaps, "tokens": tokens}


async def latency(port: int, model: str, streams: int, max_tokens: int, arrival: float) -> dict:
    import openai

    from pacos.data.io import read_records

    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0, timeout=1800
    )
    records = read_records("seed-tasks")
    messages = [
        [{"role": "user", "content": r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")}]
        for r in records[::3]
    ]
    alone = await timed_stream(client, model, messages[0], max_tokens, 0.0)
    start = time.perf_counter()
    results = await asyncio.gather(
        *(timed_stream(client, model, messages[i % len(messages)], max_tokens, i * arrival)
          for i in range(streams))
    )  # fmt: skip
    wall = time.perf_counter() - start
    gaps = [g for r in results for g in r["gaps"]]
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    single = statistics.median(alone["gaps"])
    p95 = _percentile(gaps, 0.95)

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1000, 1)

    return {
        "streams": streams,
        "arrival_interval_s": arrival,
        "single_stream_inter_token_ms": ms(single),
        "inter_token_p50_ms": ms(_percentile(gaps, 0.5)),
        "inter_token_p95_ms": ms(p95),
        "inter_token_p95_vs_single": round(p95 / single, 2) if p95 else None,
        "time_to_first_token_p50_ms": ms(_percentile(ttfts, 0.5)),
        "time_to_first_token_p95_ms": ms(_percentile(ttfts, 0.95)),
        "completion_tokens": sum(r["tokens"] for r in results),
        "tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 1),
        "wall_seconds": round(wall, 1),
    }


async def load(port: int, model: str, n: int, max_tokens: int, concurrent: bool) -> dict:
    import openai

    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0, timeout=900
    )
    start = time.perf_counter()
    if concurrent:
        results = await asyncio.gather(*(one_stream(client, model, i, max_tokens) for i in range(n)))
    else:
        results = [await one_stream(client, model, i, max_tokens) for i in range(n)]
    wall = time.perf_counter() - start
    latencies = sorted(r["seconds"] for r in results)
    tokens = sum(r.get("tokens", 0) for r in results)
    return {
        "requests": n,
        "completed": sum(r["ok"] for r in results),
        "errors": sorted({r["error"] for r in results if "error" in r}),
        "wall_seconds": round(wall, 1),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "latency_p50_s": round(statistics.median(latencies), 1),
        "latency_max_s": round(latencies[-1], 1),
        "first_token_p50_s": round(statistics.median(r["first"] for r in results if r.get("first")), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--latency", default="8,32", help="stream counts for the latency runs ('' for none)")
    parser.add_argument("--arrival", type=float, default=0.25, help="seconds between arrivals (latency runs)")
    parser.add_argument("--skip-checks", action="store_true", help="only the load and latency runs")
    parser.add_argument("--sequential", type=int, default=8, help="requests for the one-at-a-time baseline")
    parser.add_argument("--serve-args", default="", help="extra `pacos serve` flags, e.g. '--quantize int8'")
    args = parser.parse_args()

    port = free_port()
    server = start_server(args.model, port, args.serve_args.split())
    try:
        report = {"model": args.model, "cpus": len(os.sched_getaffinity(0)), "serve_args": args.serve_args}
        if not args.skip_checks:
            report["openai_calls"] = openai_calls(port, args.model)
            report["bad_requests"] = bad_requests(port, args.model)
        report["concurrent"] = asyncio.run(load(port, args.model, args.concurrency, args.max_tokens, True))
        report["health_after"] = raw(port, "GET", "/health", None)
        report["sequential"] = asyncio.run(load(port, args.model, args.sequential, args.max_tokens, False))
        report["server_alive"] = server.poll() is None
        report["batching_speedup_tokens_per_s"] = round(
            report["concurrent"]["tokens_per_s"] / max(report["sequential"]["tokens_per_s"], 1e-9), 2
        )
        report["latency"] = [
            asyncio.run(latency(port, args.model, int(n), args.max_tokens, args.arrival))
            for n in args.latency.split(",")
            if n
        ]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
