#!/usr/bin/env python3
"""Reference fixtures for the audio tower (USM conformer) and text+audio logits.

Two fixtures, both computed by HF transformers in float32 on the CPU:

* `tests/fixtures/audio/tiny_audio/`: a tiny Gemma 3n multimodal checkpoint (HF layout, bf16):
  the tiny text decoder of `make_vision_fixtures.py` (with room for 1024 positions), its tiny
  MobileNet vision tower, and a 2-block, 48-wide audio conformer (4 heads of 12, SSCP channels
  8 and 4, every other audio setting at its default). Every audio tower parameter and both
  embedders are re-drawn from a seed (HF's own init leaves paths at zero). The goldens are
  computed in f32 from the bf16-rounded weights: per clip (committed WAVs, alone) the
  log-mel features and mask, the SSCP output, each conformer block's output, the tower output
  and mask, the soft tokens after `embed_audio`; a padded batch of two clips; and the logits
  of three prompts (two clips; an image and a clip; a 31 s clip cut into two 30 s windows).
  Every mask in golden.safetensors is int64 with 1 = valid, 0 = padding (HF's
  `input_features_mask` has the same sense; the tower's own `audio_mel_mask` is the inverse,
  True = padding, and is stored inverted).

* `tests/fixtures/audio/audio_real_golden.safetensors`: the real audio tower
  (`Gemma3nAudioConfig()` defaults: SSCP 128/32 channels, 12 conformer blocks, width 1536,
  8 heads) as a bare `Gemma3nAudioEncoder` in float32, whose weights and input come from the
  counter-based generator `prand` of make_vision_fixtures.py, so the Rust test can rebuild
  them without a stored checkpoint. The rule, exactly (mirrored in
  crates/model/src/audio/synthetic.rs):

    - `prand(name, n, scale, offset)` is make_vision_fixtures.prand: element i of tensor
      `name` is `(2u - 1) * scale + offset` in float32 with u = (splitmix64 finaliser of
      `fnv1a64(name) ^ (i * 0x9E3779B97F4A7C15)`) >> 40, divided by 2^24; `scale` and
      `offset` are rounded to float32 before use (so `scale` below is computed in f64, then
      rounded once); the elements fill the tensor in row-major (C) order.
    - `name` is the encoder's own state_dict key, without any `model.audio_tower.` prefix,
      e.g. `subsample_conv_projection.conv_0.conv.weight`,
      `conformer.3.attention.attn.q_proj.weight`, `conformer.11.norm.weight`.
    - A tensor with ndim >= 2 (Linear weight [out, in], Conv2d weight [out, in, kh, kw],
      depthwise Conv1d weight [C, 1, k]): scale = sqrt(3 / fan_in) with fan_in =
      prod(shape[1:]) (1024 for input_proj_linear, 9 for conv_0, 1152 for conv_1, 5 for
      depthwise_conv1d, 1536 or 6144 for the linears), offset 0.
    - A tensor whose name ends with `per_dim_scale` ([192]): scale 1.0, offset 0.0.
    - Every other tensor (all 1-D: RMS norm and cumulative group-norm weights): scale 0.25,
      offset 1.0 (values in [0.75, 1.25]).
    - There are exactly 269 tensors, 681,348,640 values, and no buffers in the state dict.
    - Input: F = 497 mel frames (5 s of audio), `prand("audio_features", 497 * 128, 3.0, -2.0)`
      viewed as [1, 497, 128] (values in [-5, 1]); no padding (every frame valid).
    - Goldens: `tower` [32, 1536] (full), `tower_mask` [32] int64 (1 = valid: all ones),
      `sscp_strided` = the SSCP output [1, 125, 1536] flattened row-major, elements 0, 7, 14, ...
      (27429 values), `sscp_stride` = [7], `features_mean_abs` = mean |input| (checks the input
      generator), `tower_mean_abs` = mean |tower|; plus the tower's constant buffers as HF holds
      them in f32: `const.q_scale` [1], `const.inv_timescales` [768].

Usage: tools/reference/.venv/bin/python tools/reference/make_audio_tower_fixtures.py [tiny] [real]
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
import scipy.io.wavfile as wavfile
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import transformers
from transformers import (
    Gemma3nAudioConfig,
    Gemma3nAudioFeatureExtractor,
    Gemma3nConfig,
    Gemma3nForConditionalGeneration,
    Gemma3nTextConfig,
    Gemma3nVisionConfig,
)
from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_text_fixtures as mtf  # noqa: E402
import make_vision_fixtures as mvf  # noqa: E402
from make_vision_fixtures import prand  # noqa: E402
from make_audio_fixtures import f32, long_clip  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "audio"
CLIPS = OUT  # committed input WAVs and front-end goldens (make_audio_fixtures.py)
VISION_IMAGES = REPO / "tests" / "fixtures" / "vision" / "images"
EXPECTED_TRANSFORMERS = "5.24.0"
SR = 16000

torch.set_num_threads(min(2, os.cpu_count() or 1))
torch.use_deterministic_algorithms(True)

MASK_NOTE = "every mask: int64, 1 = valid, 0 = padding (the tower's audio_mel_mask, True = padding, is stored inverted)"


# --------------------------------------------------------------------------------------------
# Clips (as make_audio_fixtures.py reads and builds them)
# --------------------------------------------------------------------------------------------


def read_clip(root: Path, name: str) -> np.ndarray:
    rate, x = wavfile.read(root / f"{name}.wav")
    assert rate == SR and x.dtype == np.int16 and x.ndim == 1, (name, rate, x.dtype, x.shape)
    return x


def extract(fe, clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [B, F, 128] f32, mask [B, F] bool, True = valid), padded to the longest."""
    out = fe([f32(x) for x in clips], return_tensors="pt")
    feats, mask = out["input_features"], out["input_features_mask"]
    assert feats.dtype == torch.float32 and mask.dtype == torch.bool
    return feats, mask


# --------------------------------------------------------------------------------------------
# Tiny checkpoint
# --------------------------------------------------------------------------------------------

TINY_TEXT = dict(mvf.TINY_TEXT, max_position_embeddings=1024)
TINY_AUDIO = dict(
    vocab_size=8,
    vocab_offset=264,
    hidden_size=48,
    conf_num_attention_heads=4,
    conf_num_hidden_layers=2,
    sscp_conv_channel_size=[8, 4],
)
N_AUDIO = 188  # audio_soft_tokens_per_image (default)


def randomize_audio_tower(tower: torch.nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in tower.named_parameters():
            shape = tuple(p.shape)
            if p.ndim >= 2:  # linear [out, in], conv [out, in/groups, k...]
                v = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
            elif name.endswith("per_dim_scale"):
                v = torch.rand(shape, generator=g) * 2.0 - 1.0
            elif name.endswith("weight"):  # RMS norm / cumulative group norm scales
                v = torch.rand(shape, generator=g) + 0.5
            else:
                raise RuntimeError(f"no init rule for audio parameter {name}")
            p.copy_(v)
        names = {n for n, _ in tower.named_parameters()}
        assert names == set(tower.state_dict()), "buffers in the audio tower state dict"


class Capture:
    """Forward hooks on the SSCP and each conformer block of an audio tower."""

    def __init__(self, tower: torch.nn.Module):
        self.out: dict[str, torch.Tensor] = {}
        self.hooks = [tower.subsample_conv_projection.register_forward_hook(self._hook("sscp"))]
        for i, blk in enumerate(tower.conformer):
            self.hooks.append(blk.register_forward_hook(self._hook(f"block{i}")))

    def _hook(self, key):
        def hook(mod, args, output):
            self.out[key] = output.detach().clone()
        return hook

    def remove(self):
        for h in self.hooks:
            h.remove()


def run_tower(model, feats: torch.Tensor, mask: torch.Tensor, capture: bool = False):
    """Tower output [B, N, D], valid mask [B, N] (True = valid), soft tokens, captured."""
    tower = model.model.audio_tower
    cap = Capture(tower) if capture else None
    out = tower(feats, ~mask, return_dict=True)
    if cap:
        cap.remove()
    enc, pad = out.last_hidden_state, out.audio_mel_mask
    assert pad.dtype == torch.bool and pad.shape == enc.shape[:2]
    # Padded positions are zeroed by the tower.
    assert torch.all(enc[pad] == 0)
    soft = model.model.embed_audio(inputs_embeds=enc)
    via_model = model.model.get_audio_features(feats, ~mask, return_dict=True).pooler_output
    assert torch.equal(soft, via_model)
    return enc, ~pad, soft, (cap.out if cap else {})


def i64(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int64).contiguous()


@torch.no_grad()
def make_tiny(root: Path) -> None:
    out = root / "tiny_audio"
    out.mkdir(parents=True, exist_ok=True)
    seed = 4004
    text = mtf.build_model(TINY_TEXT)
    mtf.randomize(text, seed)

    cfg = Gemma3nConfig(
        text_config=Gemma3nTextConfig(**TINY_TEXT),
        vision_config=Gemma3nVisionConfig(vocab_size=8, vocab_offset=256),
        audio_config=Gemma3nAudioConfig(**TINY_AUDIO),
        vision_soft_tokens_per_image=mvf.TINY_RES * mvf.TINY_RES,
        audio_soft_tokens_per_image=N_AUDIO,
        **mvf.TINY_IDS,
    )
    model = Gemma3nForConditionalGeneration._from_config(
        cfg, attn_implementation="eager", dtype=torch.float32
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    enc = mvf.tiny_encoder()
    mvf.randomize_tower(enc, g)
    model.model.vision_tower.timm_model = enc
    mvf.randomize_embedder(model.model.embed_vision, g)
    mvf.randomize_embedder(model.model.embed_audio, g)
    randomize_audio_tower(model.model.audio_tower, g)
    missing, unexpected = model.model.language_model.load_state_dict(
        {k[len("model."):]: v for k, v in text.state_dict().items() if k.startswith("model.")},
        strict=True,
    )
    assert not missing and not unexpected
    for p in model.parameters():
        p.copy_(p.to(torch.bfloat16).to(torch.float32))

    fe = Gemma3nAudioFeatureExtractor()
    clips = {c: read_clip(CLIPS, c) for c in ("speech_b", "speech_a")}
    gold: dict[str, torch.Tensor] = {}

    # a. Each clip alone.
    for c, x in clips.items():
        feats, mask = extract(fe, [x])
        # Same features as the committed front-end golden.
        mel = np.fromfile(CLIPS / f"{c}.mel.bin", dtype="<f4").reshape(-1, 128)
        assert np.array_equal(mel, feats[0].numpy()), c
        enc_out, valid, soft, cap = run_tower(model, feats, mask, capture=True)
        gold[f"{c}.features"] = feats[0].contiguous()
        gold[f"{c}.features_mask"] = i64(mask[0])
        gold[f"{c}.sscp"] = cap["sscp"][0].contiguous()
        for i in range(TINY_AUDIO["conf_num_hidden_layers"]):
            gold[f"{c}.block{i}"] = cap[f"block{i}"][0].contiguous()
        gold[f"{c}.tower"] = enc_out[0].contiguous()
        gold[f"{c}.tower_mask"] = i64(valid[0])
        gold[f"{c}.soft"] = soft[0].contiguous()
        f = feats.shape[1]
        t2 = math.ceil(math.ceil(f / 2) / 2)
        assert cap["sscp"].shape == (1, t2, 48) and enc_out.shape == (1, math.ceil(t2 / 4), 48)
        print(f"{c}: {len(x)} samples, F={f} ({int(mask.sum())} valid), T2={t2}, "
              f"N={enc_out.shape[1]} ({int(valid.sum())} valid)")

    # b. The two clips in one padded batch.
    bfeats, bmask = extract(fe, [clips["speech_b"], clips["speech_a"]])
    benc, bvalid, _, _ = run_tower(model, bfeats, bmask)
    gold["batch.features"] = bfeats.contiguous()
    gold["batch.features_mask"] = i64(bmask)
    gold["batch.tower"] = benc.contiguous()
    gold["batch.tower_mask"] = i64(bvalid)
    # speech_a is the longest: its row equals the clip alone.
    assert torch.equal(bfeats[1], gold["speech_a.features"])
    assert not bvalid[1].logical_not().any() and bvalid[0].logical_not().any()
    print(f"batch: features {tuple(bfeats.shape)}, tower {tuple(benc.shape)}, "
          f"valid {bvalid.sum(1).tolist()}")

    # c. End-to-end logits.
    ids = mvf.TINY_IDS
    gt = torch.Generator().manual_seed(seed + 3)
    words = lambda n: torch.randint(3, 250, (n,), generator=gt).tolist()  # noqa: E731
    aud = [ids["boa_token_id"]] + [ids["audio_token_id"]] * N_AUDIO + [ids["eoa_token_id"]]
    n_img = mvf.TINY_RES * mvf.TINY_RES
    img = [ids["boi_token_id"]] + [ids["image_token_id"]] * n_img + [ids["eoi_token_id"]]

    def logits(name, prompt, feats, mask, pixel_values=None):
        ids_t = torch.tensor([prompt])
        assert ids_t.shape[1] <= TINY_TEXT["max_position_embeddings"]
        y = model(input_ids=ids_t, input_features=feats, input_features_mask=mask,
                  pixel_values=pixel_values, use_cache=False).logits[0]
        assert torch.isfinite(y).all(), name
        gold[f"{name}.input_ids"] = i64(ids_t[0])
        gold[f"{name}.logits"] = y.contiguous()
        print(f"{name}: L={ids_t.shape[1]}, logits {tuple(y.shape)}, max |logit| {y.abs().max().item():.3f}")

    two = [2] + words(5) + [108] + aud + [108] + words(4) + [108] + aud + [108] + words(3)
    logits("two_clips", two, bfeats, bmask)

    from PIL import Image

    # The image resized by PIL (antialiased bilinear to 768, then /255): the resampling the
    # spec describes and our preprocessing reproduces bit for bit. HF's fast processor resizes
    # with torchvision, which differs by one 8-bit level in a few pixels (spec §1.1); that
    # difference alone moves these logits by ~1e-3, and the vision fixtures' CLI test already
    # covers the processor path, so this golden isolates the model math.
    im = Image.open(VISION_IMAGES / "coffee_97x61.bmp").convert("RGB").resize((768, 768), Image.BILINEAR)
    pix = (torch.from_numpy(np.asarray(im, dtype=np.float32)) / 255.0).permute(2, 0, 1)[None].contiguous()
    feats_b, mask_b = extract(fe, [clips["speech_b"]])
    ia = [2] + words(3) + img + words(2) + aud + words(3)
    logits("image_audio", ia, feats_b, mask_b, pixel_values=pix)

    long = long_clip(clips["speech_a"])
    assert len(long) == 496000
    w0, w1 = long[:480000], long[480000:]
    lfeats, lmask = extract(fe, [w0, w1])
    lenc, lvalid, _, _ = run_tower(model, lfeats, lmask)
    assert lenc.shape == (2, N_AUDIO, 48), lenc.shape  # a full 30 s window gives exactly 188
    assert bool(lvalid[0].all()) and not bool(lvalid[1].all())
    lp = [2] + words(2) + [108] + aud + [108] + [108] + aud + [108] + words(2)
    logits("long", lp, lfeats, lmask)
    gold["long.features_mask"] = i64(lmask)
    gold["long.tower"] = lenc.contiguous()
    gold["long.tower_mask"] = i64(lvalid)
    print(f"long: features {tuple(lfeats.shape)}, valid frames {lmask.sum(1).tolist()}, "
          f"tower valid {lvalid.sum(1).tolist()}")

    # Checkpoint: config as Gemma3nConfig writes it, plus the tiny vision tower's extension.
    cfg.architectures = ["Gemma3nForConditionalGeneration"]
    cfg.dtype = torch.bfloat16
    cfg.save_pretrained(out)
    conf = json.loads((out / "config.json").read_text())
    conf["vision_config"]["architecture"] = "custom"
    conf["vision_config"]["arch_def"] = mvf.TINY_ARCH
    conf["vision_config"]["stem_size"] = mvf.TINY_STEM
    conf["vision_config"]["msfa_output_resolution"] = mvf.TINY_RES
    (out / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    tensors = {k: v.to(torch.bfloat16).contiguous()
               for k, v in model.state_dict().items() if k != "lm_head.weight"}
    n_audio = sum(1 for k in tensors if k.startswith("model.audio_tower."))
    assert n_audio == len(model.model.audio_tower.state_dict())
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    save_file(gold, out / "golden.safetensors", metadata=info())
    check_file(out / "model.safetensors", tensors, quiet=True)
    check_file(out / "golden.safetensors", gold)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"tiny_audio: {len(tensors)} tensors ({n_audio} audio tower), "
          + ", ".join(f"{f.name} {f.stat().st_size / 1e6:.2f} MB" for f in sorted(out.iterdir()))
          + f"; {size / 1e6:.2f} MB in all")


def info(extra: str = "") -> dict[str, str]:
    # One metadata entry: safetensors writes several in a random order (not byte-reproducible).
    parts = [f"transformers {transformers.__version__}, torch {torch.__version__}", MASK_NOTE]
    return {"info": "; ".join(parts + ([extra] if extra else []))}


def check_file(path: Path, expect: dict[str, torch.Tensor], quiet: bool = False) -> None:
    with safe_open(path, "pt") as f:
        assert set(f.keys()) == set(expect), path
        for k in sorted(f.keys()):
            t = f.get_tensor(k)
            assert t.dtype == expect[k].dtype and torch.equal(t, expect[k]), (path, k)
            if not quiet:
                print(f"  {k}: {str(t.dtype).removeprefix('torch.')} {list(t.shape)}")


# --------------------------------------------------------------------------------------------
# Real architecture, pseudo-random weights
# --------------------------------------------------------------------------------------------

REAL_FRAMES = 497
REAL_STRIDE = 7


def prand_rule(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(scale, offset) of an audio tower tensor (the rule in the docstring; mirrored in Rust)."""
    if len(shape) >= 2:
        return math.sqrt(3.0 / math.prod(shape[1:])), 0.0
    if name.endswith("per_dim_scale"):
        return 1.0, 0.0
    return 0.25, 1.0


@torch.no_grad()
def make_real(root: Path) -> None:
    t0 = time.time()
    cfg = Gemma3nAudioConfig()
    enc = Gemma3nAudioEncoder._from_config(cfg, dtype=torch.float32).eval()
    sd = enc.state_dict()
    params = dict(enc.named_parameters())
    assert set(sd) == set(params), "non-parameter entries in the state dict"
    assert len(sd) == 269, len(sd)

    # The constant buffers, as the module holds them (f32), against exact values.
    head_dim = cfg.hidden_size // cfg.conf_num_attention_heads
    q_exact = np.float32(head_dim ** -0.5 / math.log(2.0))
    inv_exact = np.array([math.exp(-i * math.log(1.0e4) / (cfg.hidden_size // 2 - 1))
                          for i in range(cfg.hidden_size // 2)], dtype=np.float32)
    blk = enc.conformer[0]
    attn = blk.attention.attn
    q_hf = attn.q_scale.numpy()
    inv_hf = attn.relative_position_embedding.inv_timescales.numpy().reshape(-1)
    assert attn.q_scale.dtype == torch.float32 and inv_hf.dtype == np.float32
    def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))

    # HF rounds the exponent i * -ln(1e4)/767 to f32 before a f32 exp: not the correctly rounded
    # exp of the exact value (up to ~8 ulp, 5e-7 relative), but within 1 ulp of exp(f32 argument).
    arg32 = np.arange(cfg.hidden_size // 2).astype(np.float32) * np.float32(-math.log(1.0e4) / 767)
    inv_arg32 = np.exp(arg32.astype(np.float64)).astype(np.float32)
    inv_ulps, arg_ulps = ulps(inv_hf, inv_exact), ulps(inv_hf, inv_arg32)
    print(f"q_scale: HF {q_hf.item()!r} (0x{q_hf.reshape(1).view(np.uint32)[0]:08x}), correctly rounded "
          f"{q_exact.item()!r} (0x{np.array([q_exact]).view(np.uint32)[0]:08x}), {int(ulps(q_hf.reshape(1), np.array([q_exact]))[0])} ulp apart; "
          f"inv_timescales: {int((inv_ulps > 0).sum())} of {len(inv_hf)} differ from the correctly rounded "
          f"exact value (max {int(inv_ulps.max())} ulp), {int((arg_ulps > 0).sum())} differ from "
          f"exp(f32 argument) (max {int(arg_ulps.max())} ulp)")
    assert ulps(q_hf.reshape(1), np.array([q_exact]))[0] <= 1
    assert inv_ulps.max() <= 8 and arg_ulps.max() <= 1
    assert attn.softcap.item() == 50.0 and attn.softcap.dtype == torch.float32
    for m in enc.modules():
        if hasattr(m, "gradient_clipping"):
            assert m.gradient_clipping.dtype == torch.float32 and m.gradient_clipping.item() == 1e10
    lcv = attn.local_causal_valid_mask
    w = torch.arange(12).view(12, 1)
    c = torch.arange(24).view(1, 24)
    assert torch.equal(lcv, (c >= w) & (c <= w + 12)), "local causal mask"

    n = 0
    for name, p in sd.items():
        scale, offset = prand_rule(name, tuple(p.shape))
        p.copy_(torch.from_numpy(prand(name, p.numel(), scale, offset)).view(p.shape))
        n += p.numel()
    assert n == 681_348_640, n

    x = torch.from_numpy(prand("audio_features", REAL_FRAMES * 128, 3.0, -2.0)).view(1, REAL_FRAMES, 128)
    pad = torch.zeros(1, REAL_FRAMES, dtype=torch.bool)  # HF sense: True = padding
    captured = {}
    hook = enc.subsample_conv_projection.register_forward_hook(
        lambda m, a, o: captured.__setitem__("sscp", o.detach().clone()))
    t1 = time.time()
    out = enc(x, pad, return_dict=True)
    t2 = time.time()
    hook.remove()
    y, ypad = out.last_hidden_state, out.audio_mel_mask
    t2_len = math.ceil(math.ceil(REAL_FRAMES / 2) / 2)
    assert captured["sscp"].shape == (1, t2_len, 1536), captured["sscp"].shape
    assert y.shape == (1, 32, 1536) and not ypad.any(), (y.shape, ypad)
    assert torch.isfinite(y).all()
    flat = captured["sscp"].flatten()
    gold = {
        "tower": y[0].contiguous(),
        "tower_mask": i64(~ypad[0]),
        "sscp_strided": flat[::REAL_STRIDE].contiguous(),
        "sscp_stride": torch.tensor([REAL_STRIDE], dtype=torch.int64),
        "features_mean_abs": x.abs().mean().reshape(1),
        "tower_mean_abs": y.abs().mean().reshape(1),
        "const.q_scale": attn.q_scale.detach().clone().reshape(1),
        "const.inv_timescales": torch.from_numpy(inv_hf.copy()),
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "audio_real_golden.safetensors"
    save_file(gold, path, metadata=info(f"input {REAL_FRAMES} frames"))
    check_file(path, gold)
    print(f"real: {n} params set in {t1 - t0:.1f} s, tower forward {t2 - t1:.1f} s "
          f"({torch.get_num_threads()} threads), mean |x| {gold['features_mean_abs'].item():.4f}, "
          f"sscp mean |y| {flat.abs().mean().item():.4f}, tower mean |y| {gold['tower_mean_abs'].item():.4f} "
          f"std {y.std().item():.4f}; {path.stat().st_size / 1e6:.2f} MB")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=["tiny", "real"])
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    if transformers.__version__ != EXPECTED_TRANSFORMERS:
        print(f"warning: expected transformers {EXPECTED_TRANSFORMERS}, have {transformers.__version__}",
              file=sys.stderr)
    root = Path(a.out)
    if "tiny" in a.names:
        make_tiny(root)
    if "real" in a.names:
        make_real(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
