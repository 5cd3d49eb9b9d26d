#!/usr/bin/env python3
"""HF transformers on the GPU, for comparison with `gemma3n bench --device cuda` in the same
run: a Gemma 3n text decoder of the E2B or E4B shape with random bf16 weights on cuda:0,
eager attention, batch 1. Times a prefill of --prompt-len tokens and greedy decoding of
--gen tokens (median of --reps), and reports the GPU memory the model holds.

Usage (on the GPU machine): python3 bench/compare_hf_cuda.py --shape e2b --prompt-len 512 --gen 64
Prints one JSON line.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import Gemma3nForCausalLM, Gemma3nTextConfig


def config(shape: str) -> Gemma3nTextConfig:
    c = Gemma3nTextConfig()  # the defaults are the E4B text config
    if shape == "e2b":
        n = 30
        c = Gemma3nTextConfig(
            num_hidden_layers=n,
            intermediate_size=[8192] * n,
            layer_types=c.layer_types[:n],
            activation_sparsity_pattern=c.activation_sparsity_pattern[:n],
            num_kv_shared_layers=10,
        )
    c._attn_implementation = "eager"
    return c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=["e2b", "e4b"], default="e2b")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = config(a.shape)
    t0 = time.time()
    with torch.device("cuda"):
        model = Gemma3nForCausalLM(cfg).to(torch.bfloat16)
    # Random weights everywhere (the default init zeroes some paths).
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.eval()
    torch.cuda.synchronize()
    build_s = time.time() - t0
    mem = torch.cuda.memory_allocated()
    ids = torch.randint(1000, 200000, (1, a.prompt_len), device="cuda")
    # Random models may emit the multimodal ids (>= 262144), which HF's text-only model
    # cannot embed: keep them out.
    suppress = list(range(262144, cfg.vocab_size))
    prefill, decode = [], []
    with torch.no_grad():
        model(ids[:, :16])
        for _ in range(a.reps):
            torch.cuda.synchronize()
            t = time.time()
            model(ids)
            torch.cuda.synchronize()
            prefill.append(time.time() - t)
            t = time.time()
            out = model.generate(ids, max_new_tokens=a.gen, min_new_tokens=a.gen, do_sample=False,
                                 suppress_tokens=suppress)
            torch.cuda.synchronize()
            total = time.time() - t
            assert out.shape[1] == a.prompt_len + a.gen
            # generate = one prefill + gen - 1 decode steps
            decode.append((total - prefill[-1]) / max(1, a.gen - 1))
    p = statistics.median(prefill)
    d = statistics.median(decode)
    print(json.dumps({
        "engine": "hf-transformers", "shape": a.shape, "prompt_len": a.prompt_len, "gen": a.gen,
        "prefill_ms": p * 1e3, "decode_tok_s": 1.0 / d, "gpu_bytes": mem,
        "build_s": build_s, "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
