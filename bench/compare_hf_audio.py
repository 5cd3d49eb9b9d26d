#!/usr/bin/env python3
"""Times the Gemma 3n audio tower (12 conformer layers, 1536 wide, one 30 s clip = 2997 mel
frames, f32) in HF transformers / PyTorch and in gemma3n, on the same machine, in one run,
alternating repetitions.

Both run random weights of the real size (speed does not depend on the values): HF's own
initialisation, and our pseudo-random weights (`gemma3n bench --audio --synthetic e2b`). Each
side gets one untimed warm-up; the medians of --reps are reported.

Usage: tools/reference/.venv/bin/python bench/compare_hf_audio.py [--reps 3] [--threads 2]
(needs torch and transformers: tools/reference/requirements.txt)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GFLOP = 983.7  # one 30 s clip (spec/multimodal.md §4.6)
FRAMES = 2997  # mel frames of 480000 samples


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gemma3n", default=os.path.join(ROOT, "target", "release", "gemma3n"))
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import Gemma3nAudioConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder

    torch.set_num_threads(a.threads)
    enc = Gemma3nAudioEncoder._from_config(Gemma3nAudioConfig(), dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(1, FRAMES, 128, generator=g) * 3.0 - 2.0
    padding = torch.zeros(1, FRAMES, dtype=torch.bool)  # True = padding: none

    def hf_once() -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            enc(mel, padding)
            return time.perf_counter() - t

    def ours_once() -> float:
        cmd = [a.gemma3n, "--threads", str(a.threads), "bench", "--audio", "--synthetic", "e2b",
               "--reps", "1", "--json"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])["tower_s"]

    hf_once()  # warm-up (our side warms up inside each run)
    hs, os_ = [], []
    for r in range(a.reps):
        hs.append(hf_once())
        os_.append(ours_once())
        print(f"rep {r + 1}: HF {hs[-1]:.2f} s, gemma3n {os_[-1]:.2f} s", file=sys.stderr)
    h, o = statistics.median(hs), statistics.median(os_)
    res = {
        "threads": a.threads,
        "reps": a.reps,
        "hf_s": h,
        "gemma3n_s": o,
        "ratio": o / h,
        "hf_gflop_s": GFLOP / h,
        "gemma3n_gflop_s": GFLOP / o,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    print("| engine | audio tower time (30 s clip, f32) | GFLOP/s |")
    print("|---|---|---|")
    print(f"| HF transformers {transformers.__version__} / torch {torch.__version__} | {h:.2f} s | {GFLOP / h:.1f} |")
    print(f"| gemma3n | {o:.2f} s ({o / h:.2f}x HF's time) | {GFLOP / o:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
