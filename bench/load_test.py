#!/usr/bin/env python3
"""Load test of `gemma3n serve`: many concurrent streaming clients for a fixed time.

Each client loops until the time is up (requests under way then are finished): it sends a streaming completion with a prompt of a
random length and a random `max_tokens`, reads the server-sent events, and in a share of the
requests disconnects after a few tokens (the server must cancel those sequences). Records
the time to first token, the tokens received, and every status other than 200; samples the
server's resident memory (VmRSS of --pid) before, during and a while after the load.

Usage (server already running):
    python bench/load_test.py --url http://127.0.0.1:8080 --pid PID --clients 64 --seconds 60

Prints one JSON object: requests, completed, disconnected, 429s, other errors (with
samples), aggregate completion tokens/s, TTFT p50/p99, and memory idle/peak/after.
Needs httpx (the tests' .cache/openai-venv has it).
"""
import argparse
import asyncio
import json
import random
import statistics
import time

import httpx


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of `pid` in KiB: all of it (VmRSS, which counts the pages of the
    memory-mapped weights) or the anonymous part (RssAnon: KV caches, activations, queues)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def percentile(values, q):
    if not values:
        return None
    v = sorted(values)
    i = min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))
    return v[i]


async def client(i, a, stats, deadline, words):
    rng = random.Random(a.seed * 1000 + i)
    async with httpx.AsyncClient(base_url=a.url, timeout=httpx.Timeout(600.0)) as http:
        while time.monotonic() < deadline:
            n_words = rng.randint(a.min_prompt, a.max_prompt)
            prompt = " ".join(rng.choice(words) for _ in range(n_words))
            body = {
                "model": a.model,
                "prompt": prompt,
                "max_tokens": rng.randint(a.min_tokens, a.max_tokens),
                "temperature": 0.8,
                "stream": True,
            }
            disconnect_after = rng.randint(1, 4) if rng.random() < a.disconnect else None
            stats["requests"] += 1
            t0 = time.monotonic()
            first = None
            tokens = 0
            try:
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        text = (await r.aread()).decode(errors="replace")
                        key = str(r.status_code)
                        stats["status"][key] = stats["status"].get(key, 0) + 1
                        if r.status_code == 429:
                            retry = float(r.headers.get("retry-after", "1"))
                            await asyncio.sleep(min(retry, 2.0))
                        elif len(stats["error_samples"]) < 5:
                            stats["error_samples"].append(f"{r.status_code}: {text[:200]}")
                        continue
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line[6:]
                        if data == "[DONE]":
                            break
                        chunk = json.loads(data)
                        if "error" in chunk:
                            stats["stream_errors"] += 1
                            if len(stats["error_samples"]) < 5:
                                stats["error_samples"].append(str(chunk["error"])[:200])
                            break
                        if chunk["choices"] and chunk["choices"][0].get("text"):
                            tokens += 1
                            if first is None:
                                first = time.monotonic() - t0
                            if disconnect_after is not None and tokens >= disconnect_after:
                                break
                if disconnect_after is not None and tokens >= disconnect_after:
                    stats["disconnected"] += 1
                else:
                    stats["completed"] += 1
            except (httpx.HTTPError, json.JSONDecodeError) as e:
                stats["transport_errors"] += 1
                if len(stats["error_samples"]) < 5:
                    stats["error_samples"].append(f"{type(e).__name__}: {e}"[:200])
            if first is not None:
                stats["ttft"].append(first)
            stats["tokens"] += tokens


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--pid", type=int, required=True, help="the server's process id (memory)")
    ap.add_argument("--model", default="gemma-3n")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--min-prompt", type=int, default=4)
    ap.add_argument("--max-prompt", type=int, default=200, help="words per prompt")
    ap.add_argument("--min-tokens", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--disconnect", type=float, default=0.2, help="share of requests cut off")
    ap.add_argument("--settle", type=float, default=20, help="seconds to wait after the load")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    words = ["the", "model", "runs", "fast", "on", "a", "small", "machine", "with", "two",
             "cores", "and", "streams", "tokens", "to", "every", "client", "while", "new",
             "requests", "join", "between", "steps", "of", "decoding", "text"]
    stats = {"requests": 0, "completed": 0, "disconnected": 0, "status": {}, "stream_errors": 0,
             "transport_errors": 0, "error_samples": [], "ttft": [], "tokens": 0}
    # One request first, so the weights are resident before the idle reading.
    async with httpx.AsyncClient(base_url=a.url, timeout=httpx.Timeout(600.0)) as http:
        r = await http.post("/v1/completions", json={"model": a.model, "prompt": "warm up",
                                                     "max_tokens": 2})
        r.raise_for_status()
    idle = rss_kib(a.pid)
    idle_anon = rss_kib(a.pid, "RssAnon")
    peak = idle
    peak_anon = idle_anon
    t0 = time.monotonic()
    deadline = t0 + a.seconds
    tasks = [asyncio.create_task(client(i, a, stats, deadline, words)) for i in range(a.clients)]

    async def watch():
        nonlocal peak, peak_anon
        while not all(t.done() for t in tasks):
            peak = max(peak, rss_kib(a.pid))
            peak_anon = max(peak_anon, rss_kib(a.pid, "RssAnon"))
            await asyncio.sleep(0.5)

    await asyncio.gather(watch(), *tasks)
    elapsed = time.monotonic() - t0
    await asyncio.sleep(a.settle)
    after = rss_kib(a.pid)
    after_anon = rss_kib(a.pid, "RssAnon")
    async with httpx.AsyncClient(base_url=a.url) as http:
        health = (await http.get("/health")).status_code
        metrics = (await http.get("/metrics")).text
    active = [l for l in metrics.splitlines() if l.startswith(("gemma3n_active", "gemma3n_queue"))]
    ttft = stats.pop("ttft")
    print(json.dumps({
        "clients": a.clients, "seconds": round(elapsed, 1), **stats,
        "completion_tokens_per_s": round(stats["tokens"] / elapsed, 2),
        "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
        "ttft_mean_s": statistics.mean(ttft) if ttft else None,
        "rss_idle_mib": idle // 1024, "rss_peak_mib": peak // 1024,
        "rss_after_mib": after // 1024, "anon_idle_mib": idle_anon // 1024,
        "anon_peak_mib": peak_anon // 1024, "anon_after_mib": after_anon // 1024,
        "health_after": health, "metrics_after": active,
    }, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
