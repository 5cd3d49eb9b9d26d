"""`gemma3n serve` under concurrent requests (standard library only).

1. On the tiny fixture (tests/fixtures/text/tiny_run style: a checkpoint with a word-level
   tokenizer, given as --tiny), 12 greedy completions sent at once return the same text as the
   same requests sent one at a time.
2. With a model file (--model, e.g. a `gemma3n quantize --synthetic e2b --type q8_0
   --tokenizer DIR` GGUF), the aggregate completion tokens/s of 1, 4, 8 and 16 concurrent
   greedy requests of 64 tokens (--tokens N).

Usage: python3 bench/serve_batch.py --bin target/release/gemma3n --device cuda \
           --tiny DIR [--model FILE --tokenizer DIR] [--tokens N]
"""
import json, subprocess, threading, time, urllib.request

import argparse

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="target/release/gemma3n")
ap.add_argument("--device", default="cpu")
ap.add_argument("--tiny", required=True)
ap.add_argument("--model")
ap.add_argument("--tokenizer")
ap.add_argument("--tokens", type=int, default=64, help="completion tokens per request")
args = ap.parse_args()
BIN, DEVICE = args.bin, args.device

def start(args):
    p = subprocess.Popen([BIN, "serve", "--port", "0", "--device", DEVICE] + args,
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    t0 = time.time()
    for line in p.stderr:
        if "listening on" in line:
            return p, line.strip().split("listening on ")[1]
        if time.time() - t0 > 240:
            break
    p.kill()
    raise SystemExit("server did not start")

def complete(url, prompt, n):
    with urllib.request.urlopen(url + "/v1/models", timeout=60) as r:
        model = json.load(r)["data"][0]["id"]
    body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0}
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        out = json.load(r)
    return out["choices"][0]["text"], out["usage"]["completion_tokens"]

def concurrent(url, prompts, n):
    res = [None] * len(prompts)
    def go(i):
        res[i] = complete(url, prompts[i], n)
    ts = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    t0 = time.time()
    for t in ts: t.start()
    for t in ts: t.join()
    return res, time.time() - t0

# 1. exactness on the tiny fixture
p, url = start(["--model", args.tiny, "--max-batch", "16"])
prompts = [" ".join(f"w{(7 * i + 3 * j) % 300}" for j in range(1 + i % 7)) for i in range(12)]
alone = [complete(url, q, 16) for q in prompts]
together, _ = concurrent(url, prompts, 16)
same = sum(a[0] == b[0] for a, b in zip(alone, together))
print(f"tiny model: {same}/{len(prompts)} batched answers equal the one-at-a-time ones")
for a, b in zip(alone, together):
    if a[0] != b[0]:
        print("  alone:", repr(a[0]), " batched:", repr(b[0]))
p.kill()

# 2. throughput on a synthetic E2B file
if args.model:
    tok = ["--tokenizer", args.tokenizer] if args.tokenizer else []
    p, url = start(["--model", args.model, "--max-batch", "16"] + tok)
    complete(url, "warm up", 8)
    for streams in (1, 4, 8, 16):
        res, dt = concurrent(url, [f"hello number {i} tell me a story" for i in range(streams)], args.tokens)
        toks = sum(r[1] for r in res)
        print(f"{streams:2d} streams: {toks} tokens in {dt:.2f} s = {toks / dt:.1f} tok/s")
    p.kill()
