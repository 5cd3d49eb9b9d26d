"""Write tests/fixtures/tokenizer/goldens.json: token ids, decoded strings and rendered chat
prompts produced by the Python `tokenizers` library and HF transformers' apply_chat_template,
for the Rust tests in crates/engine/tests/tokenizer_real.rs.

Usage (from the repository root):
    tools/fetch_tokenizer.sh          # builds .cache/tokenizer-gemma3/gemma3n/tokenizer.json
    tools/reference/.venv/bin/python tools/reference/make_tokenizer_goldens.py
"""

import json
import os
import sys

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOKENIZER = os.path.join(ROOT, ".cache", "tokenizer-gemma3", "gemma3n", "tokenizer.json")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
TEMPLATE = os.path.join(FIXTURES, "chat_template.jinja")

TEXTS = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "multiple   spaces   between    words",
    "    four leading spaces",
    "line one\nline two\n\nline four\n",
    "\n\n\n",
    "   \n  \t  \n",
    "def f(x):\n    if x > 0:\n        return x * 2\n    return -x\n",
    "fn main() {\n\tlet v = vec![1, 2, 3];\n\tfor i in &v {\n\t\tprintln!(\"{i}\");\n\t}\n}\n",
    "Grüße aus München! Äpfel, Öl und Übermut: ß ẞ",
    "你好，世界！今天天气很好。我们去公园散步吧。",
    "日本語のテキスト：カタカナ、ひらがな、漢字。東京タワー",
    "مرحبا بالعالم! كيف حالك اليوم؟",
    "नमस्ते दुनिया! आप कैसे हैं?",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "한국어 문장도 있습니다.",
    "Emoji: 😀🎉👍🏽 ❤️",
    "Family ZWJ: 👨‍👩‍👧‍👦 and 🏳️‍🌈 and 👩🏾‍💻",
    "Flags: 🇩🇪🇯🇵🇺🇸🇧🇷",
    "Rare characters: 𒀀𒀁 𓀀 𠀀𪜀 \ue000 \U0010fffd",
    "Control-ish: \u0000\u0001\u007f and zero\u200bwidth",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after a bos<eos>",
    "<start_of_image><image_soft_token><end_of_image> and <start_of_audio><audio_soft_token><end_of_audio>",
    "not special: <start_of_turn <end_of_turn> <unk> <pad> <mask> [multimodal]",
    "Math: ∫₀^∞ e^{-x²} dx = √π/2, α≠β, 1e-9 ≤ ε",
    "URLs: https://example.com/path?q=1&r=%20#frag and emails a.b@c.de",
    "Mixed: English, Deutsch, 中文, 日本語, العربية, हिन्दी, русский — all in one.",
    "1234567890 3.14159 -42 1,000,000",
]

CONVERSATIONS = [
    {
        "name": "system_user",
        "add_generation_prompt": True,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"},
        ],
    },
    {
        "name": "multi_turn",
        "add_generation_prompt": True,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hi there."},
            {"role": "user", "content": "What is 2+2?"},
        ],
    },
    {
        "name": "multi_turn_no_generation_prompt",
        "add_generation_prompt": False,
        "messages": [
            {"role": "user", "content": "  Tell me a joke.\n"},
            {"role": "assistant", "content": "\nWhy did the chicken cross the road?  "},
            {"role": "user", "content": "Why?"},
            {"role": "assistant", "content": "To get to the other side."},
        ],
    },
    {
        "name": "list_text_items",
        "add_generation_prompt": True,
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Answer in German."}]},
            {"role": "user", "content": [{"type": "text", "text": " First part. "}, {"type": "text", "text": "Second part."}]},
        ],
    },
    {
        "name": "image_and_audio",
        "add_generation_prompt": True,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "url": "cat.png"},
                    {"type": "text", "text": "Describe this image, then transcribe the audio."},
                    {"type": "audio", "url": "speech.wav"},
                ],
            },
        ],
    },
    {
        "name": "multilingual_no_system",
        "add_generation_prompt": False,
        "messages": [
            {"role": "user", "content": "你好！Wie geht's? 😀"},
        ],
    },
    {
        "name": "roles_do_not_alternate",
        "add_generation_prompt": True,
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
        ],
    },
]


def main():
    if not os.path.exists(TOKENIZER):
        sys.exit(f"{TOKENIZER} is missing: run tools/fetch_tokenizer.sh first")
    tok = Tokenizer.from_file(TOKENIZER)
    with open(TEMPLATE, encoding="utf-8") as f:
        template = f.read()
    hf = PreTrainedTokenizerFast(
        tokenizer_file=TOKENIZER,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        add_eos_token=False,
    )
    hf.chat_template = template

    texts = []
    saw_byte_fallback = False
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_bos = tok.encode(text, add_special_tokens=True).ids
        hf_ids = hf(text)["input_ids"]
        if hf_ids != ids_bos:
            sys.exit(f"tokenizers and transformers disagree on {text!r}: {ids_bos} vs {hf_ids}")
        pieces = [tok.id_to_token(i) for i in ids]
        saw_byte_fallback |= any(p.startswith("<0x") for p in pieces)
        texts.append({
            "text": text,
            "ids": ids,
            "ids_with_bos": ids_bos,
            "tokens": pieces,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
        })
    if not saw_byte_fallback:
        sys.exit("no text exercises byte fallback: add rarer characters")

    convs = []
    for conv in CONVERSATIONS:
        entry = {"name": conv["name"], "messages": conv["messages"],
                 "add_generation_prompt": conv["add_generation_prompt"]}
        try:
            rendered = hf.apply_chat_template(conv["messages"], tokenize=False,
                                              add_generation_prompt=conv["add_generation_prompt"])
        except Exception as e:  # the template raised (raise_exception)
            entry["error"] = str(e)
        else:
            entry["rendered"] = rendered
            entry["ids"] = tok.encode(rendered, add_special_tokens=False).ids
            hf_ids = hf.apply_chat_template(conv["messages"], tokenize=True, return_dict=False,
                                            add_generation_prompt=conv["add_generation_prompt"])
            if hasattr(hf_ids, "keys"):
                hf_ids = hf_ids["input_ids"]
            if list(hf_ids) != entry["ids"]:
                sys.exit(f"{conv['name']}: apply_chat_template(tokenize=True) gives {hf_ids}, expected {entry['ids']}")
        convs.append(entry)

    special = {name: tok.token_to_id(name) for name in [
        "<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]", "<start_of_turn>", "<end_of_turn>",
        "<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_audio>", "<end_of_audio>",
        "<audio_soft_token>"]}

    out = {
        "generator": "tools/reference/make_tokenizer_goldens.py",
        "tokenizer": ".cache/tokenizer-gemma3/gemma3n/tokenizer.json (tools/fetch_tokenizer.sh)",
        "vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
        "vocab_size_model": tok.get_vocab_size(with_added_tokens=False),
        "special_tokens": special,
        "texts": texts,
        "conversations": convs,
    }
    path = os.path.join(FIXTURES, "goldens.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path}: {len(texts)} texts, {len(convs)} conversations")


if __name__ == "__main__":
    main()
