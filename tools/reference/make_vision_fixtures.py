#!/usr/bin/env python3
"""Reference fixtures for the vision tower (MobileNet-V5) and text+image logits.

Two fixtures, both computed by timm / HF transformers in float32:

* `tests/fixtures/vision/tiny_vision/`: a small variant of the MobileNet-V5 encoder (every
  block type: edge-residual, universal inverted residual with and without depthwise convs,
  multi-query attention with and without down-sampled K/V, the fusion adapter) inside a tiny
  Gemma 3n multimodal checkpoint (HF layout, random weights re-drawn from a seed). Goldens:
  the pixel values of two images, every block's output for image 0, the tower output, the
  soft tokens after the vision embedder, and the logits of a prompt holding both images.
* `tests/fixtures/vision/mnv5_300m_golden.safetensors`: the real `mobilenetv5_300m_enc`
  architecture on deterministic pseudo-random weights and input that the Rust test generates
  itself (the counter-based formula below, `prand`), so no weights are stored: a strided
  subset of the tower output is the golden.

Usage: tools/reference/.venv/bin/python tools/reference/make_vision_fixtures.py [tiny] [real]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import timm
import transformers
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.mobilenetv5 import MobileNetV5Encoder
from timm.layers import RmsNorm2d
from transformers import (
    Gemma3nAudioConfig,
    Gemma3nConfig,
    Gemma3nForConditionalGeneration,
    Gemma3nTextConfig,
    Gemma3nVisionConfig,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_text_fixtures as mtf  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "vision"
EXPECTED_TRANSFORMERS = "5.24.0"
EXPECTED_TIMM = "1.0.31"

torch.set_num_threads(min(2, os.cpu_count() or 1))
torch.use_deterministic_algorithms(True)

# --------------------------------------------------------------------------------------------
# The counter-based pseudo-random values (mirrored in crates/model/src/vision/synthetic.rs)
# --------------------------------------------------------------------------------------------

M64 = (1 << 64) - 1


def fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def prand(name: str, n: int, scale: float, offset: float) -> np.ndarray:
    """n float32 values `(2u - 1) * scale + offset`, u = 24 random bits / 2^24 from a
    splitmix64 finaliser of `fnv1a64(name) ^ (i * golden)`; every step is exact or one f32
    rounding, so the Rust side reproduces the same bits."""
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a64(name)) ^ (i * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) / np.float32(16777216.0)
    v = (u * np.float32(2.0) - np.float32(1.0)) * np.float32(scale) + np.float32(offset)
    return v.astype(np.float32)


def prand_rule(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(scale, offset) of a tower tensor, by name and shape (mirrored in Rust)."""
    if len(shape) == 4:  # conv weight [out, in/groups, kh, kw]: unit-variance outputs
        fan_in = shape[1] * shape[2] * shape[3]
        return math.sqrt(3.0 / fan_in), 0.0
    if name.endswith("gamma"):  # layer scale: branches matter (real init 1e-5 would hide them)
        return 1.0, 0.0
    if name.endswith("bias"):
        return 0.1, 0.0
    return 0.25, 1.0  # RMS norm weights, in [0.75, 1.25]


# --------------------------------------------------------------------------------------------
# Tiny variant
# --------------------------------------------------------------------------------------------

# Every block kind of the real network, narrow and few (timm arch strings, as in
# timm/models/mobilenetv5.py). Stage 2 has MQA with down-sampled K/V (v2), stage 3 without.
TINY_ARCH = [
    ["er_r1_k3_s2_e4_c16", "er_r1_k3_s1_e4_c16"],
    ["uir_r1_a3_k5_s2_e6_c24", "uir_r1_a5_k0_s1_e4_c24", "uir_r1_a3_k0_s1_e4_c24"],
    [
        "uir_r1_a5_k5_s2_e6_c32",
        "uir_r1_a5_k0_s1_e4_c32",
        "uir_r1_a0_k0_s1_e1_c32",
        "mqa_r1_k3_h4_v2_s1_d8_c32",
        "uir_r1_a0_k0_s1_e2_c32",
    ],
    [
        "uir_r1_a5_k5_s2_e6_c48",
        "mqa_r1_k3_h4_s1_d12_c48",
        "uir_r1_a0_k0_s1_e2_c48",
        "mqa_r1_k3_h4_s1_d12_c48",
        "uir_r1_a0_k0_s1_e2_c48",
    ],
]
TINY_STEM = 8
TINY_IMAGE = 128  # stem 64, stages 32 / 16 / 8 (K/V 4) / 4; fusion at 8x8 -> 4x4 = 16 tokens
TINY_RES = 4
# Image files (from make_image_fixtures.py) for the end-to-end golden through the processor.
CLI_IMAGES = ["coffee_97x61.bmp", "camera_grey_512x512.png"]

# Token ids of the tiny checkpoint: base vocabulary 256, then 8 vision ids, then 8 audio ids.
TINY_IDS = dict(
    boi_token_id=250,
    eoi_token_id=256,
    image_token_id=257,
    boa_token_id=251,
    eoa_token_id=264,
    audio_token_id=265,
)

TINY_TEXT = dict(
    vocab_size=272,
    vocab_size_per_layer_input=256,
    hidden_size=48,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=12,
    hidden_size_per_layer_input=8,
    laurel_rank=4,
    altup_num_inputs=4,
    intermediate_size=[64, 96, 64, 64, 96, 64],
    activation_sparsity_pattern=[0.95, 0.95, 0.0, 0.0, 0.0, 0.0],
    sliding_window=16,
    layer_types=["sliding_attention", "full_attention"] * 3,
    num_kv_shared_layers=2,
    max_position_embeddings=256,
    final_logit_softcapping=30.0,
    rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
)


def tiny_encoder() -> MobileNetV5Encoder:
    # The keyword arguments _gen_mobilenet_v5 gives mobilenetv5_300m_enc, with our blocks.
    from timm.models.mobilenetv5 import _GELU

    return MobileNetV5Encoder(
        block_args=decode_arch_def(TINY_ARCH),
        stem_size=TINY_STEM,
        pad_type="same",
        msfa_output_resolution=TINY_RES,
        norm_layer=RmsNorm2d,
        act_layer=_GELU,
        layer_scale_init_value=1e-5,
    ).eval()


def randomize_tower(enc: torch.nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in enc.named_parameters():
            shape = tuple(p.shape)
            if p.ndim == 4:
                v = torch.randn(shape, generator=g) / math.sqrt(shape[1] * shape[2] * shape[3])
            elif name.endswith("gamma"):
                v = torch.rand(shape, generator=g) * 2.0 - 1.0
            elif name.endswith("bias"):
                v = torch.randn(shape, generator=g) * 0.1
            else:
                v = torch.rand(shape, generator=g) + 0.5
            p.copy_(v)
        names = {n for n, _ in enc.named_parameters()}
        assert names == set(enc.state_dict()), "buffers in the tower state dict"


def randomize_embedder(emb: torch.nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in emb.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name == "embedding.weight":
                p.copy_(torch.randn(p.shape, generator=g))
            elif name == "embedding_projection.weight":
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            else:
                raise RuntimeError(f"no init rule for embedder parameter {name}")


@torch.no_grad()
def make_tiny(root: Path) -> None:
    out = root / "tiny_vision"
    out.mkdir(parents=True, exist_ok=True)
    seed = 3003
    # Text part: the text fixtures' builder and initialisation.
    text = mtf.build_model(TINY_TEXT)
    mtf.randomize(text, seed)

    vision_cfg = Gemma3nVisionConfig(vocab_size=8, vocab_offset=256)
    audio_cfg = Gemma3nAudioConfig(
        vocab_size=8,
        vocab_offset=264,
        hidden_size=32,
        conf_num_attention_heads=4,
        conf_num_hidden_layers=1,
        sscp_conv_channel_size=[8, 4],
    )
    cfg = Gemma3nConfig(
        text_config=Gemma3nTextConfig(**TINY_TEXT),
        vision_config=vision_cfg,
        audio_config=audio_cfg,
        vision_soft_tokens_per_image=TINY_RES * TINY_RES,
        **TINY_IDS,
    )
    model = Gemma3nForConditionalGeneration._from_config(
        cfg, attn_implementation="eager", dtype=torch.float32
    ).eval()
    enc = tiny_encoder()
    g = torch.Generator().manual_seed(seed + 1)
    randomize_tower(enc, g)
    model.model.vision_tower.timm_model = enc
    randomize_embedder(model.model.embed_vision, g)
    randomize_embedder(model.model.embed_audio, g)
    missing, unexpected = model.model.language_model.load_state_dict(
        {k[len("model."):]: v for k, v in text.state_dict().items() if k.startswith("model.")},
        strict=True,
    )
    assert not missing and not unexpected
    # Stored in bf16 like the real checkpoints; the goldens use exactly the stored values.
    for p in model.parameters():
        p.copy_(p.to(torch.bfloat16).to(torch.float32))

    # Two images: smooth-ish content plus noise, in [0, 1] like the processor's output.
    gi = torch.Generator().manual_seed(seed + 2)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, TINY_IMAGE), torch.linspace(0, 1, TINY_IMAGE), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2])
    pix = torch.stack([
        (0.6 * base + 0.4 * torch.rand(3, TINY_IMAGE, TINY_IMAGE, generator=gi)).clamp(0, 1),
        torch.rand(3, TINY_IMAGE, TINY_IMAGE, generator=gi),
    ]).float()

    # Every block's output for image 0 (channels-first, as timm computes it).
    block_out: dict[str, torch.Tensor] = {}
    hooks = []
    for si, stage in enumerate(enc.blocks):
        for bi, blk in enumerate(stage):
            def hook(mod, args, output, key=f"block.{si}.{bi}"):
                block_out[key] = output[0].detach().clone()
            hooks.append(blk.register_forward_hook(hook))
    hooks.append(enc.conv_stem.register_forward_hook(
        lambda m, a, o: block_out.__setitem__("stem", o[0].detach().clone())))
    tower = model.model.vision_tower(pixel_values=pix, do_pooling=False, return_dict=True).last_hidden_state
    for h in hooks:
        h.remove()
    feats = model.model.get_image_features(pix, return_dict=True).pooler_output

    # A prompt with both images (ids as the processor would expand them).
    n_img = TINY_RES * TINY_RES
    gt = torch.Generator().manual_seed(seed + 3)
    words = lambda n: torch.randint(3, 250, (n,), generator=gt).tolist()
    img = [TINY_IDS["boi_token_id"]] + [TINY_IDS["image_token_id"]] * n_img + [TINY_IDS["eoi_token_id"]]
    ids = [2] + words(5) + [108] + img + [108] + words(4) + img + words(6)
    ids_t = torch.tensor([ids])
    logits = model(input_ids=ids_t, pixel_values=pix, use_cache=False).logits[0]

    # End to end through the HF image processor, as `gemma3n logits --image` runs it: two
    # committed image files (tests/fixtures/vision/images) at the processor's 768x768.
    from PIL import Image
    from transformers import SiglipImageProcessorFast

    proc = SiglipImageProcessorFast(
        size={"height": 768, "width": 768},
        resample=Image.BILINEAR,
        do_normalize=False,
        image_mean=(0.5,) * 3,
        image_std=(0.5,) * 3,
    )
    files = [root / "images" / f for f in CLI_IMAGES]
    cli_pix = proc([Image.open(f) for f in files], return_tensors="pt")["pixel_values"].float()
    cli_ids = [2] + words(3) + img + words(2) + img + words(3)
    cli_ids_t = torch.tensor([cli_ids])
    cli_logits = model(input_ids=cli_ids_t, pixel_values=cli_pix, use_cache=False).logits[0]

    # Write the checkpoint: config as Gemma3nConfig writes it; tower and embedders; text.
    cfg.architectures = ["Gemma3nForConditionalGeneration"]
    cfg.dtype = torch.bfloat16
    cfg.save_pretrained(out)
    conf = json.loads((out / "config.json").read_text())
    # The tower is not the default architecture: record its blocks (our extension of the
    # vision config; the real checkpoints name `mobilenetv5_300m_enc`).
    conf["vision_config"]["architecture"] = "custom"
    conf["vision_config"]["arch_def"] = TINY_ARCH
    conf["vision_config"]["stem_size"] = TINY_STEM
    conf["vision_config"]["msfa_output_resolution"] = TINY_RES
    (out / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    tensors = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" or k.startswith("model.audio_tower."):
            continue
        tensors[k] = v.to(torch.bfloat16).contiguous()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})

    gold = {
        "pixel_values": pix,
        "tower_output": tower.contiguous(),
        "image_features": feats.contiguous(),
        "input_ids": ids_t[0].to(torch.int64),
        "logits": logits.contiguous(),
        "cli_input_ids": cli_ids_t[0].to(torch.int64),
        "cli_logits": cli_logits.contiguous(),
    }
    for k, v in block_out.items():
        gold[k] = v.contiguous()
    save_file(gold, out / "golden.safetensors", metadata={
        "transformers": transformers.__version__, "timm": timm.__version__, "torch": torch.__version__})
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"tiny_vision: {len(tensors)} tensors, tower {tuple(tower.shape)}, logits {tuple(logits.shape)}, "
          f"{size / 1e6:.2f} MB written to {out}")


# --------------------------------------------------------------------------------------------
# Real architecture, pseudo-random weights
# --------------------------------------------------------------------------------------------

REAL_SIZE = 768
REAL_STRIDE = 7  # every 7th value of the flattened [2048, 16, 16] output is stored


@torch.no_grad()
def make_real(root: Path) -> None:
    t0 = time.time()
    enc = timm.create_model("mobilenetv5_300m_enc", pretrained=False).eval()
    n = 0
    for name, p in enc.state_dict().items():
        scale, offset = prand_rule(name, tuple(p.shape))
        p.copy_(torch.from_numpy(prand(name, p.numel(), scale, offset)).view(p.shape))
        n += p.numel()
    assert n == 294_126_912, n
    x = torch.from_numpy(prand("pixel_values", 3 * REAL_SIZE * REAL_SIZE, 0.5, 0.5)).view(
        1, 3, REAL_SIZE, REAL_SIZE)
    t1 = time.time()
    y = enc(x)
    t2 = time.time()
    assert tuple(y.shape) == (1, 2048, 16, 16), y.shape
    flat = y.flatten()
    gold = {
        "output_strided": flat[::REAL_STRIDE].contiguous(),
        "stride": torch.tensor([REAL_STRIDE], dtype=torch.int64),
        "output_mean_abs": flat.abs().mean().reshape(1),
    }
    root.mkdir(parents=True, exist_ok=True)
    save_file(gold, root / "mnv5_300m_golden.safetensors", metadata={
        "transformers": transformers.__version__, "timm": timm.__version__, "torch": torch.__version__})
    print(f"real: {n} params set in {t1 - t0:.1f} s, tower forward {t2 - t1:.1f} s, "
          f"output mean |y| {gold['output_mean_abs'].item():.4f}, std {flat.std().item():.4f}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=["tiny", "real"])
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    if transformers.__version__ != EXPECTED_TRANSFORMERS or timm.__version__ != EXPECTED_TIMM:
        print(f"warning: expected transformers {EXPECTED_TRANSFORMERS} and timm {EXPECTED_TIMM}, "
              f"have {transformers.__version__} / {timm.__version__}", file=sys.stderr)
    root = Path(a.out)
    if "tiny" in a.names:
        make_tiny(root)
    if "real" in a.names:
        make_real(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
