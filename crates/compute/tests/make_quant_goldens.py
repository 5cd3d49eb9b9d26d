"""Golden data for the GGUF block formats, made with the `gguf` Python package.

Run from the repository root with the reference venv (`pip install gguf`, pinned in
tools/reference/requirements.txt):

    tools/reference/.venv/bin/python crates/compute/tests/make_quant_goldens.py

Writes into crates/compute/tests/data/:
- `<type>.input.f32`   f32 values (Q8_0, Q4_0: quantized by gguf; the Rust quantizer must
                       reproduce `<type>.blocks` bit for bit)
- `<type>.blocks`      raw GGUF blocks (Q8_0/Q4_0: gguf's quantization of the input;
                       K-quants: random bytes with random finite f16 scales, since gguf has no
                       K-quant quantizer)
- `<type>.f32`         gguf's dequantization of `<type>.blocks`
All little-endian.
"""

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

OUT = Path(__file__).parent / "data"
rng = np.random.default_rng(20250611)


def f16_bytes(v):
    return np.asarray(v, dtype=np.float16).view(np.uint8).reshape(-1, 2)


def main():
    OUT.mkdir(exist_ok=True)
    # Q8_0 / Q4_0: quantize gaussian data with some exact zeros, ties and a zero block.
    for name, qt in [("q8_0", T.Q8_0), ("q4_0", T.Q4_0)]:
        x = rng.standard_normal((4, 256)).astype(np.float32)
        x[0, :32] = 0.0
        x[1, 32:64] = np.round(x[1, 32:64] * 4) / 4
        x[2, 64:96] *= 1e-3
        blocks = quants.quantize(x, qt)
        deq = quants.dequantize(blocks, qt)
        (OUT / f"{name}.input.f32").write_bytes(x.astype("<f4").tobytes())
        (OUT / f"{name}.blocks").write_bytes(blocks.tobytes())
        (OUT / f"{name}.f32").write_bytes(deq.astype("<f4").tobytes())

    # K-quants: random blocks (every bit pattern of scales and quants), finite f16 scales.
    nblocks = 8
    for name, qt, size, scale_at in [
        ("q4_k", T.Q4_K, 144, [0, 2]),
        ("q5_k", T.Q5_K, 176, [0, 2]),
        ("q6_k", T.Q6_K, 210, [208]),
    ]:
        b = rng.integers(0, 256, size=(nblocks, size), dtype=np.uint8)
        for at in scale_at:
            b[:, at : at + 2] = f16_bytes(rng.uniform(-0.5, 0.5, nblocks))
        deq = quants.dequantize(b, qt)
        (OUT / f"{name}.blocks").write_bytes(b.tobytes())
        (OUT / f"{name}.f32").write_bytes(deq.astype("<f4").tobytes())


if __name__ == "__main__":
    main()
