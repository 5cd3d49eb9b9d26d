#!/usr/bin/env python3
"""Image preprocessing fixtures (spec/multimodal.md §1.1) -> tests/fixtures/vision/images/.

Inputs are crops of real photographs shipped inside the scikit-image wheel (no download).
For each case `<name>.<ext>` the script writes two goldens, both 768x768 8-bit PNGs (RGB, or
greyscale when the three channels are equal):

  <name>.pil.png     golden 2: PIL.Image.resize((768, 768), BILINEAR) of the decoded RGB
                     image (the Rust resampler must equal it exactly)
  <name>.hf-pil.png  golden 1 minus golden 2 plus 128, where golden 1 = the pixel_values of
                     transformers' SiglipImageProcessor(Fast) as Gemma 3n configures it, times
                     255 (asserted to be exact u8 values, channels R, G, B)

`resize/` holds a small photo crop `src_160x120.png` and `to_<w>x<h>.png`, its
`PIL.Image.resize((w, h), BILINEAR)` for sizes that exercise both pass orders, strong
downscales in both directions, single-pass and degenerate (1-pixel) cases.

`manifest.json` records per case the Pillow mode and the golden 1 vs golden 2 statistics.

`edge/` holds tiny synthetic files for the decode step (alpha compositing, 16-bit, colour-key
transparency, low bit depths, palettes, BMP/GIF/WebP variants) with `<file>.rgb.png`, the RGB
image `transformers.image_transforms.convert_to_rgb(PIL.Image.open(file))` produces.

Usage: tools/reference/.venv/bin/python tools/reference/make_image_fixtures.py [--out DIR]
"""

import argparse
import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import skimage  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import SiglipImageProcessor  # noqa: E402
from transformers.image_transforms import convert_to_rgb  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SIZE = 768
# Targets for the 160x120 resize source: both down (horizontal first / vertical first), one
# down one up, single-pass, identity-adjacent, 1-pixel.
RESIZE_SIZES = [(61, 47), (37, 45), (7, 5), (150, 20), (23, 119), (300, 13), (90, 200),
                (240, 60), (161, 119), (160, 61), (1, 1), (1, 80), (200, 1)]


def processor():
    # What the Gemma 3n conversion script builds (spec §1.1); `SiglipImageProcessorFast` is a
    # deprecated alias of this class in transformers 5.24.
    return SiglipImageProcessor(
        size={"height": SIZE, "width": SIZE},
        resample=Image.BILINEAR,
        do_normalize=False,
        image_mean=(0.5,) * 3,
        image_std=(0.5,) * 3,
    )


def to_rgb(im):
    return convert_to_rgb(im, return_numpy=True)


def save_png(arr, path):
    """8-bit PNG; an RGB image whose channels are all equal is stored as greyscale (smaller;
    readers expand it back to RGB)."""
    if arr.ndim == 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
        arr = arr[..., 0]
    Image.fromarray(np.ascontiguousarray(arr)).save(path, "PNG", optimize=True)


# ----------------------------------------------------------------------------------------------
# The cases: (file name, PIL image to save, save kwargs)


def radial_alpha(h, w):
    y, x = np.mgrid[0:h, 0:w]
    r = np.hypot((x - w * 0.45) / (w * 0.5), (y - h * 0.55) / (h * 0.5))
    a = np.clip((1.15 - r) * 300, 0, 255)  # opaque centre, a ramp, transparent corners
    a[: h // 8, :] = np.linspace(0, 255, w)[None, :]  # every alpha value along the top band
    return np.round(a).astype(np.uint8)


def make_cases():
    d = skimage.data
    cases = []
    # Wide JPEG crop, both dimensions downscaled (1400x900 -> 768x768).
    cases.append(
        (
            "retina_wide_1400x900.jpg",
            Image.fromarray(d.retina()[300:1200, 0:1400]),
            {"quality": 90},
        )
    )
    # Tall lossless WebP crop: width upscaled (280 -> 768), height downscaled (1300 -> 768).
    cases.append(
        (
            "retina_tall_280x1300.webp",
            Image.fromarray(d.retina()[50:1350, 560:840]),
            {"lossless": True, "quality": 100, "method": 6},
        )
    )
    # Tiny BMP, strong upscale (97x61 -> 768x768).
    small = Image.fromarray(d.coffee()).resize((97, 61), Image.BOX)
    cases.append(("coffee_97x61.bmp", small, {}))
    # 8-bit greyscale PNG (a real greyscale photograph), upscaled 1.5x.
    cases.append(("camera_grey_512x512.png", Image.fromarray(d.camera()), {}))
    # RGBA PNG with a varying alpha channel (every value 0..255 occurs).
    rocket = d.rocket()[40:340, 120:520]
    rgba = np.dstack([rocket, radial_alpha(*rocket.shape[:2])])
    cases.append(("rocket_rgba_400x300.png", Image.fromarray(rgba, "RGBA"), {}))
    # Palette GIF with a transparent index over part of the picture.
    pal_img = Image.fromarray(d.rocket()[0:260, 0:380]).quantize(colors=255)
    p = np.array(pal_img)
    y, x = np.mgrid[0 : p.shape[0], 0 : p.shape[1]]
    p[(x - 300) ** 2 + (y - 60) ** 2 < 45**2] = 255  # a transparent disc
    gif = Image.fromarray(p, "P")
    gif.putpalette(pal_img.getpalette()[: 255 * 3] + [0, 255, 0])
    cases.append(("rocket_palette_380x260.gif", gif, {"transparency": 255}))
    return cases


# ----------------------------------------------------------------------------------------------
# Edge cases for the decode step (tiny synthetic files)


def png_chunk(t, data):
    return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))


def raw_png(arr, ctype, depth, extra=b""):
    """A PNG written by hand (Pillow cannot write 16-bit RGB/RGBA/LA or low-bit greyscale)."""
    h, w = arr.shape[:2]
    if depth == 16:
        rows = [arr[y].astype(">u2").tobytes() for y in range(h)]
    elif depth == 8:
        rows = [arr[y].astype(np.uint8).tobytes() for y in range(h)]
    else:  # 1, 2, 4 bits, one channel
        rows = []
        per = 8 // depth
        for y in range(h):
            v = list(arr[y]) + [0] * ((-w) % per)
            rows.append(
                bytes(
                    sum(int(v[i + j]) << (8 - depth * (j + 1)) for j in range(per))
                    for i in range(0, len(v), per)
                )
            )
    raw = b"".join(b"\0" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + extra
        + png_chunk(b"IDAT", zlib.compress(raw, 9))
        + png_chunk(b"IEND", b"")
    )


def pil_bytes(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def make_edge_cases():
    rng = np.random.default_rng(1234)
    e = {}
    x = np.arange(256)
    xx, yy = np.meshgrid(x, x, indexing="xy")
    # Every (colour, alpha) pair: R = x, G = 255 - x, B scrambled, A = y.
    exh = np.stack([xx, 255 - xx, (37 * xx + 11 * yy) % 256, yy], -1).astype(np.uint8)
    e["alpha_all_pairs.png"] = pil_bytes(Image.fromarray(exh, "RGBA"), "PNG")
    la = rng.integers(0, 256, (24, 40, 2), dtype=np.uint8)
    e["la8.png"] = pil_bytes(Image.fromarray(la, "LA"), "PNG")
    g16 = rng.integers(0, 65536, (20, 30)).astype(np.uint16)
    g16[:4] = rng.integers(0, 300, (4, 30))  # some values below 256 (not clipped)
    e["grey16.png"] = raw_png(g16, 0, 16)
    g16t = g16.copy()
    g16t[5:9, 5:20] = 200
    e["grey16_trns.png"] = raw_png(g16t, 0, 16, png_chunk(b"tRNS", struct.pack(">H", 200)))
    e["rgb16.png"] = raw_png(rng.integers(0, 65536, (20, 30, 3)), 2, 16)
    e["rgba16.png"] = raw_png(rng.integers(0, 65536, (20, 30, 4)), 6, 16)
    e["la16.png"] = raw_png(rng.integers(0, 65536, (20, 30, 2)), 4, 16)
    g8 = rng.integers(0, 256, (20, 30))
    g8[3:7, 2:25] = 77
    e["grey8_trns.png"] = raw_png(g8, 0, 8, png_chunk(b"tRNS", struct.pack(">H", 77)))
    c8 = rng.integers(0, 256, (20, 30, 3))
    c8[10:15, 4:9] = (10, 20, 30)
    e["rgb8_trns.png"] = raw_png(c8, 2, 8, png_chunk(b"tRNS", struct.pack(">HHH", 10, 20, 30)))
    for depth in (1, 2, 4):
        e[f"grey{depth}.png"] = raw_png(rng.integers(0, 1 << depth, (13, 21)), 0, depth)
    pal_img = Image.fromarray(rng.integers(0, 16, (18, 26), dtype=np.uint8), "P")
    pal_img.putpalette(list(rng.integers(0, 256, 16 * 3)))
    alphas = bytes(rng.integers(0, 256, 16).tolist())
    e["palette_trns.png"] = pil_bytes(pal_img, "PNG", transparency=alphas)
    e["palette4.png"] = pil_bytes(pal_img, "PNG", bits=4)
    e["interlaced.png"] = _adam7(rng.integers(0, 256, (33, 45, 3)))
    rgba_small = rng.integers(0, 256, (21, 34, 4), dtype=np.uint8)
    e["rgba_lossless.webp"] = pil_bytes(Image.fromarray(rgba_small, "RGBA"), "WEBP", lossless=True)
    e["rgb_lossy.webp"] = pil_bytes(
        Image.fromarray(skimage.data.coffee()[100:164, 200:296]), "WEBP", quality=80
    )
    e["rgba32.bmp"] = pil_bytes(Image.fromarray(rgba_small, "RGBA"), "BMP")
    e["palette8.bmp"] = pil_bytes(pal_img, "BMP")
    e["grey8.bmp"] = pil_bytes(Image.fromarray(g8.astype(np.uint8), "L"), "BMP")
    e["grey.gif"] = pil_bytes(Image.fromarray(g8.astype(np.uint8), "L"), "GIF")
    e["grey.jpg"] = pil_bytes(Image.fromarray(skimage.data.camera()[200:264, 200:296]), "JPEG")
    return e


def _adam7(arr):
    """An interlaced 8-bit RGB PNG (Pillow does not write interlaced PNGs)."""
    h, w = arr.shape[:2]
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = arr[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        for row in sub:
            raw += b"\0" + row.astype(np.uint8).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw, 9))
        + png_chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------------------------


def check_alpha_formula():
    """PIL's alpha_composite over opaque white == round(c*a/255 + 255 - a), all pairs."""
    x = np.arange(256)
    c, a = np.meshgrid(x, x, indexing="xy")
    im = Image.fromarray(np.stack([c, c, c, a], -1).astype(np.uint8), "RGBA")
    got = to_rgb(im)[..., 0].astype(np.int64)
    want = np.floor(c * a / 255 + (255 - a) + 0.5)
    assert (got == want).all(), "alpha_composite formula changed"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/vision/images")
    args = ap.parse_args()
    out = args.out
    (out / "edge").mkdir(parents=True, exist_ok=True)
    print(
        f"transformers {transformers.__version__}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, Pillow {PIL.__version__}, scikit-image {skimage.__version__}"
    )
    check_alpha_formula()
    proc = processor()
    scale32 = np.float32(1 / 255)
    manifest = []
    for name, im, kw in make_cases():
        path = out / name
        fmt = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "bmp": "BMP", "gif": "GIF"}[name.rsplit(".", 1)[1]]
        im.save(path, fmt, **kw)
        # As a user of the HF processor would: open the file with PIL, hand it over.
        with Image.open(path) as src:
            src.load()
            mode, info_t = src.mode, src.info.get("transparency") is not None
            pv = proc(images=src, return_tensors="pt")["pixel_values"]
            decoded = to_rgb(src)
        assert pv.shape == (1, 3, SIZE, SIZE) and pv.dtype == torch.float32, pv.shape
        v = pv[0].numpy()
        v255 = v.astype(np.float64) * 255
        hf = np.round(v255)
        assert np.abs(v255 - hf).max() < 1e-4, "pixel_values*255 are not integers"
        hf = hf.astype(np.uint8)
        # The processor's rescale is exactly f32(u8) * f32(1/255).
        assert (hf.astype(np.float32) * scale32 == v).all(), "rescale is not f32(u8)*f32(1/255)"
        hf_hwc = hf.transpose(1, 2, 0)
        pil = np.array(Image.fromarray(decoded).resize((SIZE, SIZE), Image.BILINEAR))
        diff = np.abs(hf_hwc.astype(int) - pil.astype(int))
        save_png(pil, out / f"{name}.pil.png")
        # Golden 1 is stored as its difference from golden 2 (+128): it differs from it by at
        # most 1 in a small fraction of values, so this PNG is a few KB instead of ~500 KB.
        assert diff.max() <= 127
        save_png((hf_hwc.astype(np.int16) - pil + 128).astype(np.uint8), out / f"{name}.hf-pil.png")
        entry = {
            "file": name,
            "pil_mode": mode,
            "transparency_info": info_t,
            "width": decoded.shape[1],
            "height": decoded.shape[0],
            "hf_vs_pil_max_lsb": int(diff.max()),
            "hf_vs_pil_frac_differing": float((diff != 0).mean()),
        }
        if mode == "RGBA":
            # transformers' tensor branch (numpy input) composites in float and truncates.
            pv_np = proc(images=np.array(Image.open(path)), return_tensors="pt")["pixel_values"]
            d_np = np.abs(np.round(pv_np[0].numpy() * 255) - hf)
            entry["numpy_input_vs_pil_input_max_lsb"] = int(d_np.max())
            entry["numpy_input_vs_pil_input_frac_differing"] = float((d_np != 0).mean())
        manifest.append(entry)
        print(json.dumps(entry))

    edge = []
    for name, data in make_edge_cases().items():
        (out / "edge" / name).write_bytes(data)
        with Image.open(out / "edge" / name) as src:
            src.load()
            rgb = to_rgb(src)
            edge.append({"file": name, "pil_mode": src.mode, "transparency_info": src.info.get("transparency") is not None})
        save_png(rgb, out / "edge" / f"{name}.rgb.png")
    res = out / "resize"
    res.mkdir(exist_ok=True)
    src = Image.fromarray(skimage.data.coffee()[120:240, 300:460])
    src.save(res / "src_160x120.png", optimize=True)
    for w, h in RESIZE_SIZES:
        save_png(np.array(src.resize((w, h), Image.BILINEAR)), res / f"to_{w}x{h}.png")
    (out / "manifest.json").write_text(json.dumps({"cases": manifest, "edge": edge}, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
