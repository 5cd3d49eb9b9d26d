#!/usr/bin/env python3
"""gemma3n against llama.cpp on the same GGUF files, same machine, same run.

For each shape (synthetic E2B / E4B: random weights, real shapes) and each preset, our
`gemma3n quantize --synthetic` writes one GGUF file (with the real Gemma tokenizer's
vocabulary, so llama.cpp can load it); then llama.cpp (built from the `llama-cpp-python`
package, see bench/README.md) and `gemma3n bench` each time prefill of a random prompt and
greedy decode after it: one untimed warm-up each, then --reps repetitions alternating
between the two engines (drift of a shared machine hits both alike), medians.

Usage (from the repository root, after `cargo build --release`):
  python bench/compare_llama_cpp.py [--shapes e2b,e4b] [--types q4_k_m,q8_0]
      [--prompt 128] [--gen 64] [--threads 2] [--reps 3] [--dir /tmp/gemma3n-bench]
      [--json results.json]
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def sh(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


def make_file(args, shape, kind):
    path = os.path.join(args.dir, f"{shape}_{kind}.gguf")
    if not os.path.exists(path):
        tmp = path + ".part"
        sh([args.gemma3n, "quantize", "--synthetic", shape, "--type", kind,
            "--tokenizer", args.tokenizer, "--out", tmp])
        os.rename(tmp, path)
    return path


class LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level API, one model loaded."""

    def __init__(self, args, path):
        import llama_cpp
        from llama_cpp import Llama

        self.args = args
        self.m = Llama(model_path=path, n_ctx=args.prompt + args.gen + 16, n_batch=args.prompt,
                       n_ubatch=args.prompt, n_threads=args.threads,
                       n_threads_batch=args.threads, verbose=False)
        rng = random.Random(0)
        self.prompt = [2] + [rng.randrange(1000, 262144) for _ in range(args.prompt - 1)]
        self.info = {"system": llama_cpp.llama_print_system_info().decode().strip(),
                     "version": llama_cpp.__version__}
        # Warm-up (page faults of the mmap, caches), untimed.
        self.m.reset()
        self.m.eval(self.prompt[:8])
        self.m.eval([self.prompt[1]])

    def argmax(self):
        import numpy as np

        # Only the last position has logits (logits_all is off, as in generation).
        row = np.ctypeslib.as_array(self.m._ctx.get_logits(), shape=(self.m.n_vocab(),))
        return int(row[:262144].argmax())

    def rep(self):
        """One prefill and decode: (prefill s, decode s)."""
        m = self.m
        m.reset()
        t0 = time.perf_counter()
        m.eval(self.prompt)
        pre = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(self.args.gen):
            m.eval([self.argmax()])
        return pre, time.perf_counter() - t1


def check_tokenizer(path):
    """llama.cpp's tokenizer on our file's vocabulary against the HF tokenizer goldens."""
    from llama_cpp import Llama

    g = json.load(open(os.path.join(ROOT, "tests", "fixtures", "tokenizer", "goldens.json")))
    m = Llama(model_path=path, vocab_only=True, verbose=False)
    same = sum(m.tokenize(t["text"].encode(), add_bos=False, special=True) == t["ids"]
               for t in g["texts"])
    del m
    return same, len(g["texts"])


def ours(args, path):
    """One `gemma3n bench` process (its own warm-up, one timed repetition)."""
    out = sh([args.gemma3n, "bench", "--model", path, "--prompt-len", str(args.prompt),
              "--gen", str(args.gen), "--reps", "1", "--threads", str(args.threads),
              "--json"] + (["--no-mmap"] if args.no_mmap else []),
             stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="e2b,e4b")
    ap.add_argument("--types", default="q4_k_m,q8_0")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/gemma3n-bench")
    ap.add_argument("--gemma3n", default=os.path.join(ROOT, "target", "release", "gemma3n"))
    ap.add_argument("--tokenizer",
                    default=os.path.join(ROOT, ".cache", "tokenizer-gemma3", "gemma3n"))
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--no-mmap", action="store_true",
                    help="run gemma3n with --no-mmap (weights read into huge pages)")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    rows = []
    for shape in args.shapes.split(","):
        for kind in args.types.split(","):
            path = make_file(args, shape, kind)
            same, total = check_tokenizer(path)
            print(f"{shape} {kind}: llama.cpp tokenizes {same}/{total} golden texts like HF",
                  flush=True)
            # Repetitions alternate between the engines, so that drift of a shared machine
            # hits both alike.
            lc = LlamaCpp(args, path)
            lpre, ldec, reps = [], [], []
            for _ in range(args.reps):
                p, d = lc.rep()
                lpre.append(p)
                ldec.append(d)
                reps.append(ours(args, path))
            info = lc.info
            del lc
            lp = args.prompt / statistics.median(lpre)
            ld = args.gen / statistics.median(ldec)
            op = statistics.median(r["prefill_tok_s"] for r in reps)
            od = statistics.median(r["decode_tok_s"] for r in reps)
            rep = reps[0]
            rep["bandwidth_gb_s"] = statistics.median(r["bandwidth_gb_s"] for r in reps)
            rep["decode_gb_s"] = od * rep["bytes_per_token"] / 1e9
            # Each process sets its decode against a probe taken right after it; the median
            # of those shares (the bandwidth drifts between processes).
            rep["bandwidth_pct"] = statistics.median(r["bandwidth_pct"] for r in reps)
            rows.append({"shape": shape, "type": kind, "file_gb": os.path.getsize(path) / 1e9,
                         "llama_cpp": {"prefill_tok_s": lp, "decode_tok_s": ld},
                         "gemma3n": {"prefill_tok_s": op, "decode_tok_s": od,
                                     "decode_gb_s": rep["decode_gb_s"],
                                     "bandwidth_gb_s": rep["bandwidth_gb_s"],
                                     "bandwidth_pct": rep["bandwidth_pct"]},
                         "llama_cpp_info": info})
            print(f"{shape} {kind}: llama.cpp pp{args.prompt} {lp:.1f} tg{args.gen} {ld:.2f} | "
                  f"gemma3n pp {op:.1f} tg {od:.2f} ({rep['bandwidth_pct']:.0f}% of "
                  f"{rep['bandwidth_gb_s']:.1f} GB/s) | x{op / lp:.2f} / x{od / ld:.2f}",
                  flush=True)
    print()
    print(f"| shape | type | llama.cpp pp{args.prompt} | gemma3n pp{args.prompt} | ratio "
          f"| llama.cpp tg{args.gen} | gemma3n tg{args.gen} | ratio | gemma3n % of bandwidth |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        l, o = r["llama_cpp"], r["gemma3n"]
        print(f"| {r['shape']} | {r['type']} | {l['prefill_tok_s']:.1f} | {o['prefill_tok_s']:.1f} "
              f"| {o['prefill_tok_s'] / l['prefill_tok_s']:.2f}x | {l['decode_tok_s']:.2f} "
              f"| {o['decode_tok_s']:.2f} | {o['decode_tok_s'] / l['decode_tok_s']:.2f}x "
              f"| {o['bandwidth_pct']:.0f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
