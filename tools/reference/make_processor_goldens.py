#!/usr/bin/env python3
"""Token ids of chat prompts with images and audio clips, as HF's Gemma3nProcessor builds
them (chat template, then the expansion of every <image_soft_token> / <audio_soft_token> to
the image's / clip's token block, then tokenization with the real Gemma 3n tokenizer), for
tests/fixtures/tokenizer/: image_prompts.json (images only) and audio_prompts.json (audio,
alone and next to an image).

Usage: tools/reference/.venv/bin/python tools/reference/make_processor_goldens.py
(needs .cache/tokenizer-gemma3/gemma3n/tokenizer.json from tools/fetch_tokenizer.sh)
"""

import json
import os

import numpy as np
from PIL import Image
from transformers import (
    Gemma3nAudioFeatureExtractor,
    Gemma3nProcessor,
    GemmaTokenizerFast,
    SiglipImageProcessorFast,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(ROOT, ".cache", "tokenizer-gemma3", "gemma3n", "tokenizer.json")
TEMPLATE = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "chat_template.jinja")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "image_prompts.json")
AUDIO_OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "audio_prompts.json")

CASES = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this."}]}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [
            {"type": "text", "text": "Compare"},
            {"type": "image"},
            {"type": "text", "text": "with"},
            {"type": "image"},
        ]},
    ],
    [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"}, {"type": "image"}]},
    ],
]

AUDIO_CASES = [
    # (a) one clip, then the instruction.
    [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe this."}]}],
    # (b) a system prompt, then text and clips interleaved in one message.
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": [
            {"type": "text", "text": "Is the speaker in"},
            {"type": "audio"},
            {"type": "text", "text": "the same person as in"},
            {"type": "audio"},
        ]},
    ],
    # (c) two user turns with a clip each, around a reply.
    [
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What language is this?"}]},
        {"role": "assistant", "content": "French."},
        {"role": "user", "content": [{"type": "text", "text": "Translate this one too:"}, {"type": "audio"}]},
    ],
    # (d) an image, then a clip, then text, in one message.
    [{"role": "user", "content": [
        {"type": "image"},
        {"type": "audio"},
        {"type": "text", "text": "Does the sound match the picture?"},
    ]}],
]


def count(msgs, kind):
    return sum(1 for m in msgs if isinstance(m["content"], list)
               for p in m["content"] if p["type"] == kind)


def main():
    # The special tokens the released tokenizer_config.json names (spec/multimodal.md §0.1).
    tok = GemmaTokenizerFast(tokenizer_file=TOKENIZER, extra_special_tokens={
        "image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>", "audio_token": "<audio_soft_token>",
        "boa_token": "<start_of_audio>", "eoa_token": "<end_of_audio>"})
    for name in ("image_token", "audio_token"):
        setattr(tok, name + "_id", tok.convert_tokens_to_ids(getattr(tok, name)))
    template = open(TEMPLATE).read()
    proc = Gemma3nProcessor(
        feature_extractor=Gemma3nAudioFeatureExtractor(),
        image_processor=SiglipImageProcessorFast(
            size={"height": 768, "width": 768}, resample=Image.BILINEAR, do_normalize=False,
            image_mean=(0.5,) * 3, image_std=(0.5,) * 3),
        tokenizer=tok,
        chat_template=template,
    )
    img = Image.new("RGB", (32, 24), (10, 200, 30))
    out = []
    for msgs in CASES:
        n = sum(1 for m in msgs if isinstance(m["content"], list)
                for p in m["content"] if p["type"] == "image")
        text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        # The rendered text already starts with <bos>: as apply_chat_template(tokenize=True)
        # does, tokenize without adding another.
        enc = proc(text=text, images=[img] * n, return_tensors="np", add_special_tokens=False)
        ids = [int(i) for i in enc["input_ids"][0]]
        out.append({"messages": msgs, "images": n, "text": text, "ids": ids})
        print(f"{len(ids)} ids, {ids.count(262145)} image placeholders, bos count {ids[:2].count(2)}")
    with open(OUT, "w") as f:
        json.dump({"image_tokens": 256, "cases": out}, f, indent=1)

    # Audio: one second of silence at 16 kHz per clip (the processor always writes 188
    # placeholders per clip, whatever its length or content).
    clip = np.zeros(16000, dtype=np.float32)
    out = []
    for msgs in AUDIO_CASES:
        n_img, n_aud = count(msgs, "image"), count(msgs, "audio")
        text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        kwargs = {"images": [img] * n_img} if n_img else {}
        enc = proc(text=text, audio=[clip] * n_aud, return_tensors="np",
                   add_special_tokens=False, **kwargs)
        ids = [int(i) for i in enc["input_ids"][0]]
        assert ids.count(262273) == 188 * n_aud and ids.count(262145) == 256 * n_img
        out.append({"messages": msgs, "images": n_img, "audios": n_aud, "text": text, "ids": ids})
        print(f"{len(ids)} ids, {ids.count(262273)} audio and {ids.count(262145)} image "
              f"placeholders, bos count {ids.count(2)}")
    with open(AUDIO_OUT, "w") as f:
        json.dump({"audio_tokens": 188, "image_tokens": 256, "cases": out}, f, indent=1)


if __name__ == "__main__":
    main()
