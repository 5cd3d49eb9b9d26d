#!/usr/bin/env python3
"""Audio front-end fixtures: inputs and HF Gemma3nAudioFeatureExtractor goldens.

Writes tests/fixtures/audio/:
  inputs (16 kHz mono int16 WAV; the golden input is exactly samples/32768 as float32):
    speech_a.wav  espeak-ng en-us, speed 150, ~2.6 s (espeak writes 22050 Hz; resampled here with
                  scipy resample_poly 320/441, then rounded to int16)
    speech_b.wav  espeak-ng en+f3, speed 230, cut to 0.9 s
    noise.wav     white noise, 0.4 s (seeded)
    tone.wav      440 Hz sine, 0.5 s
    silence.wav   1.0 s of zeros
    long clip     (not stored) 31 s = [speech_a, reversed speech_a] repeated, cut to 496000 samples;
                  the Rust test rebuilds it from speech_a.wav
  decoding fixtures (the same 1 s clip `speech_b` padded/cut to 1 s, from codec_s16.wav):
    codec_u8.wav codec_s16.wav codec_s24.wav codec_s32.wav codec_f32.wav codec_f64.wav
    codec.flac codec.mp3 (lame, 64 kbit/s) codec.ogg (oggenc -q 4)
    stereo_44k.wav  44.1 kHz stereo int16, 0.5 s, 1 kHz tone (L 0.5, R 0.3 amplitude)
    espeak_22k.wav  the raw espeak-ng 22050 Hz output used for speech_b
  goldens: <name>.mel.bin (float32 LE, frames x 128) + manifest.json (frames, mask, stored frame
  indices, sample counts).
Requires espeak-ng, lame, flac, vorbis-tools (apt) and the venv of tools/reference.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import scipy.io.wavfile as wavfile
from scipy.signal import resample_poly
from transformers import Gemma3nAudioFeatureExtractor

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "audio")
SR = 16000


def espeak(text, voice, speed, tmp):
    path = os.path.join(tmp, f"espeak_{voice}_{speed}.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", path, text], check=True)
    rate, x = wavfile.read(path)
    assert rate == 22050 and x.dtype == np.int16, (rate, x.dtype)
    return path, x


def to16k_int16(x22):
    y = resample_poly(x22.astype(np.float64), 320, 441)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def f32(x_int16):
    return (x_int16.astype(np.float32) / np.float32(32768.0)).astype(np.float32)


def long_clip(speech_a):
    """The 31 s clip: speech_a, then reversed, repeated, cut to 496000 samples."""
    rep = np.concatenate([speech_a, speech_a[::-1]])
    return np.tile(rep, 31 * SR // len(rep) + 1)[: 31 * SR]


def main():
    os.makedirs(OUT, exist_ok=True)
    fe = Gemma3nAudioFeatureExtractor()
    manifest = {"clips": {}, "batch": {}, "long": {}}

    with tempfile.TemporaryDirectory() as tmp:
        _, a22 = espeak("The quick brown fox jumps over the lazy dog. Gemma listens.", "en-us", 150, tmp)
        b_path, b22 = espeak("Hello there, how are you today?", "en+f3", 230, tmp)
        speech_a = to16k_int16(a22)[: int(2.6 * SR)]
        speech_b = to16k_int16(b22)[: int(0.9 * SR)]
        # the raw 22050 Hz espeak file (decoder + resampler test)
        with open(b_path, "rb") as f:
            open(os.path.join(OUT, "espeak_22k.wav"), "wb").write(f.read())

    rng = np.random.default_rng(1234)
    noise = np.round(rng.uniform(-0.3, 0.3, int(0.4 * SR)) * 32768).astype(np.int16)
    t = np.arange(int(0.5 * SR)) / SR
    tone = np.round(0.5 * np.sin(2 * np.pi * 440 * t) * 32768).astype(np.int16)
    silence = np.zeros(SR, dtype=np.int16)
    clips = {"speech_a": speech_a, "speech_b": speech_b, "noise": noise, "tone": tone, "silence": silence}

    def run(xs):
        out = fe([f32(x) for x in xs], return_tensors="np")
        return np.asarray(out["input_features"], np.float32), np.asarray(out["input_features_mask"], bool)

    def store(name, mel, mask, frames_idx=None):
        if frames_idx is None:
            frames_idx = list(range(mel.shape[0]))
        np.ascontiguousarray(mel[frames_idx], dtype="<f4").tofile(os.path.join(OUT, f"{name}.mel.bin"))
        return {"frames": int(mel.shape[0]), "mask": [int(v) for v in mask], "stored_frames": frames_idx}

    for name, x in clips.items():
        wavfile.write(os.path.join(OUT, f"{name}.wav"), SR, x)
        mel, mask = run([x])
        manifest["clips"][name] = {"samples": int(len(x)), **store(name, mel[0], mask[0])}

    # padded batch of two clips of different lengths
    mel, mask = run([speech_b, speech_a])
    manifest["batch"] = {
        "clips": ["speech_b", "speech_a"],
        "items": [store(f"batch{i}", mel[i], mask[i]) for i in range(2)],
    }

    # 31 s clip, window by window
    long = long_clip(speech_a)
    w0, w1 = long[:480000], long[480000:]
    mel_full, _ = run([long])
    mel0, mask0 = run([w0])
    assert np.array_equal(mel_full, mel0), "HF truncates at 480000 samples"
    mel1, mask1 = run([w1])
    idx0 = sorted(set(range(0, mel0.shape[1], 16)) | {mel0.shape[1] - 1})
    manifest["long"] = {
        "samples": int(len(long)),
        "windows": [store("long_w0", mel0[0], mask0[0], idx0), store("long_w1", mel1[0], mask1[0])],
    }

    # decoding fixtures: one 1 s clip in many containers/codecs
    c = np.zeros(SR, dtype=np.int16)
    c[: len(speech_b)] = speech_b
    cf = f32(c)
    p = lambda n: os.path.join(OUT, n)  # noqa: E731
    wavfile.write(p("codec_s16.wav"), SR, c)
    wavfile.write(p("codec_u8.wav"), SR, ((c.astype(np.int32) >> 8) + 128).astype(np.uint8))
    wavfile.write(p("codec_s32.wav"), SR, c.astype(np.int32) << 16)
    wavfile.write(p("codec_f32.wav"), SR, cf)
    wavfile.write(p("codec_f64.wav"), SR, cf.astype(np.float64))
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", p("codec_s16.wav"), "-c:a", "pcm_s24le",
                    p("codec_s24.wav")], check=True)
    subprocess.run(["flac", "-s", "-f", "-8", "-o", p("codec.flac"), p("codec_s16.wav")], check=True)
    subprocess.run(["lame", "--quiet", "-b", "64", p("codec_s16.wav"), p("codec.mp3")], check=True)
    subprocess.run(["oggenc", "--quiet", "-q", "4", "-o", p("codec.ogg"), p("codec_s16.wav")], check=True)

    t44 = np.arange(int(0.5 * 44100)) / 44100
    st = np.stack([0.5 * np.sin(2 * np.pi * 1000 * t44), 0.3 * np.sin(2 * np.pi * 1000 * t44)], axis=1)
    wavfile.write(p("stereo_44k.wav"), 44100, np.round(st * 32767).astype(np.int16))

    with open(p("manifest.json"), "w") as f:
        json.dump(manifest, f, indent=None, separators=(",", ":"))
    total = sum(os.path.getsize(p(n)) for n in os.listdir(OUT))
    print(f"wrote {OUT}: {total / 1e6:.2f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
