#!/usr/bin/env python3
"""Checks a checkpoint written by `gemma3n slice` with HF transformers.

Loads OUR export with `Gemma3nForCausalLM.from_pretrained` (float32, eager attention; any
missing/unexpected/mismatched key is an error, only the tied `lm_head.weight` may be missing),
runs one forward over the reference slice's golden `prefill_ids` and compares the logits with
the golden `prefill_logits` that HF computed on the reference (MatFormer Lab, Python) slice.
It also reports whether the tensors (names, dtypes, shapes, bytes) of the two model.safetensors
files are identical.

Usage:
  gemma3n slice --model tests/fixtures/matformer/base \
      --slice tests/fixtures/matformer/slices/e2b_like/slice.json --out /tmp/e2b_like
  tools/reference/.venv/bin/python tools/reference/check_slice_export.py \
      /tmp/e2b_like tests/fixtures/matformer/slices/e2b_like [--tol 1e-5]

Exit status 0 when HF loads the export cleanly and max |logits - golden| <= tol.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from transformers import Gemma3nForCausalLM

torch.set_num_threads(min(2, os.cpu_count() or 1))
torch.use_deterministic_algorithms(True)


def load_ours(path: Path) -> Gemma3nForCausalLM:
    m, info = Gemma3nForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    missing = set(info.get("missing_keys") or [])
    if missing - {"lm_head.weight"}:
        raise SystemExit(f"{path}: HF reports missing keys {sorted(missing)}")
    for k in ("unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(k):
            raise SystemExit(f"{path}: HF reports {k}: {info[k]}")
    if m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr():
        raise SystemExit(f"{path}: lm_head is not tied to embed_tokens")
    return m.eval()


def raw_tensors(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """name -> (dtype, shape, bytes), read from the file without conversion."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, en = e["data_offsets"]
        out[name] = (e["dtype"], e["shape"], body[b:en])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours", type=Path, help="directory written by `gemma3n slice`")
    ap.add_argument("reference", type=Path, help="tests/fixtures/matformer/slices/<name>")
    ap.add_argument("--tol", type=float, default=1e-5, help="max abs logit difference allowed")
    a = ap.parse_args()

    gold = load_file(a.reference / "golden.safetensors")
    ids = gold["prefill_ids"].to(torch.int64)
    want = gold["prefill_logits"]

    ours_t = raw_tensors(a.ours / "model.safetensors")
    ref_t = raw_tensors(a.reference / "model.safetensors")
    same_names = set(ours_t) == set(ref_t)
    diff_tensors = sorted(k for k in set(ours_t) & set(ref_t) if ours_t[k] != ref_t[k])
    identical = same_names and not diff_tensors

    model = load_ours(a.ours)
    cfg = model.config
    with torch.no_grad():
        got = model(ids[None], use_cache=False).logits[0].float()
    if got.shape != want.shape:
        print(f"FAIL {a.ours}: logits shape {tuple(got.shape)} != golden {tuple(want.shape)}")
        return 1
    d = (got - want).abs().max().item()
    rel = d / want.abs().max().item()
    print(
        f"{a.reference.name}: HF loaded {a.ours} ({cfg.num_hidden_layers} layers, "
        f"intermediate_size {cfg.intermediate_size}, num_kv_shared_layers {cfg.num_kv_shared_layers}); "
        f"prefill logits max|diff| {d:.3e} (relative {rel:.1e}, bit-identical: {torch.equal(got, want)}); "
        f"tensors identical to the reference slice: {identical}"
        + ("" if same_names else f" (names differ: ours-only {sorted(set(ours_t) - set(ref_t))}, "
           f"reference-only {sorted(set(ref_t) - set(ours_t))})")
        + (f" (differing: {diff_tensors})" if diff_tensors else "")
    )
    if not torch.isfinite(got).all() or d > a.tol:
        print(f"FAIL: max|diff| {d:.3e} > tol {a.tol:g}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
