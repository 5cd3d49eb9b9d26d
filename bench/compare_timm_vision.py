#!/usr/bin/env python3
"""Times the Gemma 3n vision tower (mobilenetv5_300m_enc, one 768x768 image, f32) in timm /
PyTorch and in gemma3n, on the same machine, in one run, alternating repetitions.

Both run random weights of the real architecture (speed does not depend on the values):
timm's own initialisation, and our pseudo-random weights (`gemma3n bench --vision
--synthetic e2b`). Each side gets one untimed warm-up; the medians of --reps are reported.

Usage: tools/reference/.venv/bin/python bench/compare_timm_vision.py [--reps 3] [--threads 2]
(needs torch and timm: tools/reference/requirements.txt)
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
GFLOP = 871.48  # one 768x768 image (spec/multimodal.md §1.9)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gemma3n", default=os.path.join(ROOT, "target", "release", "gemma3n"))
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    import torch
    import timm

    torch.set_num_threads(a.threads)
    model = timm.create_model("mobilenetv5_300m_enc", pretrained=False).eval()
    x = torch.rand(1, 3, 768, 768)

    def timm_once() -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            model(x)
            return time.perf_counter() - t

    def ours_once() -> float:
        cmd = [a.gemma3n, "--threads", str(a.threads), "bench", "--vision", "--synthetic", "e2b",
               "--reps", "1", "--json"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])["tower_s"]

    timm_once()  # warm-up (our side warms up inside each run)
    ts, os_ = [], []
    for r in range(a.reps):
        ts.append(timm_once())
        os_.append(ours_once())
        print(f"rep {r + 1}: timm {ts[-1]:.2f} s, gemma3n {os_[-1]:.2f} s", file=sys.stderr)
    t, o = statistics.median(ts), statistics.median(os_)
    res = {
        "threads": a.threads,
        "reps": a.reps,
        "timm_s": t,
        "gemma3n_s": o,
        "ratio": o / t,
        "timm_gflop_s": GFLOP / t,
        "gemma3n_gflop_s": GFLOP / o,
        "torch": torch.__version__,
        "timm": timm.__version__,
    }
    print("| engine | tower time (768x768, f32) | GFLOP/s |")
    print("|---|---|---|")
    print(f"| timm {timm.__version__} / torch {torch.__version__} | {t:.2f} s | {GFLOP / t:.1f} |")
    print(f"| gemma3n | {o:.2f} s ({o / t:.2f}x timm's time) | {GFLOP / o:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
