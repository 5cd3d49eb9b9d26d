"""GGUF fixtures for crates/model/tests/gguf.rs, written by the `gguf` PyPI package and by
llama.cpp's own converter (never by our Rust writer).

Usage:
  make_gguf_fixtures.py LLAMA_CPP_SRC     (writes tests/fixtures/gguf/)
  make_gguf_fixtures.py --check FILE      (reads FILE with gguf.GGUFReader, prints JSON)

LLAMA_CPP_SRC: the llama-cpp-python source package (the .tar.gz, or the directory it
unpacks to), e.g. llama_cpp_python-0.3.36.tar.gz from
`pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36` (pip saves the archive
before it tries to build; the build itself is not needed). Its vendor/llama.cpp holds
convert_hf_to_gguf.py and gguf-py.

Files:
  all_types.gguf      every metadata value type (scalars, strings, arrays of each, an array
                      of arrays), `general.alignment` = 64, and F32/F16/BF16
                      tensors of odd shapes plus one Q8_0 tensor (raw blocks); the expected
                      values are in all_types.json.
  tiny_text_f16.gguf  tests/fixtures/text/tiny_text_f32 converted by the vendored
                      convert_hf_to_gguf.py (--outtype f16), with a tiny SentencePiece
                      tokenizer.model trained here (the converter requires one) plus a
                      tokenizer_config.json and added_tokens.json; those three files are
                      kept in tiny_tokenizer/ for the test of our `quantize`'s vocabulary.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
TINY = os.path.join(ROOT, "tests", "fixtures", "text", "tiny_text_f32")


def all_types(gguf):
    from gguf import GGUFValueType as T

    path = os.path.join(OUT, "all_types.gguf")
    w = gguf.GGUFWriter(path, arch="testarch")
    w.add_custom_alignment(64)
    expect = {"metadata": {}, "tensors": {}}

    def kv(key, val, vtype, sub=None, jval=None):
        w.add_key_value(key, val, vtype, sub_type=sub)
        expect["metadata"][key] = {"type": int(vtype), "value": val if jval is None else jval}

    kv("t.u8", 250, T.UINT8)
    kv("t.i8", -120, T.INT8)
    kv("t.u16", 65000, T.UINT16)
    kv("t.i16", -32000, T.INT16)
    kv("t.u32", 4000000000, T.UINT32)
    kv("t.i32", -2000000000, T.INT32)
    kv("t.f32", 1.5, T.FLOAT32)
    kv("t.bool_true", True, T.BOOL)
    kv("t.bool_false", False, T.BOOL)
    kv("t.string", "héllo GGUF ✓", T.STRING)
    kv("t.empty_string", "", T.STRING)
    kv("t.u64", 18000000000000000000, T.UINT64)
    kv("t.i64", -9000000000000000000, T.INT64)
    kv("t.f64", -2.0 ** -30, T.FLOAT64)
    kv("t.arr_u8", [0, 1, 255], T.ARRAY, T.UINT8)
    kv("t.arr_i8", [-128, 0, 127], T.ARRAY, T.INT8)
    kv("t.arr_u16", [1, 65535], T.ARRAY, T.UINT16)
    kv("t.arr_i16", [-32768, 32767], T.ARRAY, T.INT16)
    kv("t.arr_u32", [7, 4294967295], T.ARRAY, T.UINT32)
    kv("t.arr_i32", [-5, 6, -7], T.ARRAY, T.INT32)
    kv("t.arr_f32", [0.25, -1.0, 3.0e38], T.ARRAY, T.FLOAT32)
    kv("t.arr_bool", [True, False, True], T.ARRAY, T.BOOL)
    kv("t.arr_string", ["a", "", "<0x0A>", "▁the"], T.ARRAY, T.STRING)
    kv("t.arr_u64", [0, 2 ** 64 - 1], T.ARRAY, T.UINT64)
    kv("t.arr_i64", [-(2 ** 63), 2 ** 63 - 1], T.ARRAY, T.INT64)
    kv("t.arr_f64", [1e-300, -0.5], T.ARRAY, T.FLOAT64)
    # An array of arrays (gguf-py writes the element type of the nested arrays from their
    # first element; ggml itself never writes these).
    kv("t.arr_nested", [[1, 2], [3]], T.ARRAY, T.ARRAY)

    rng = np.random.default_rng(7)
    a = rng.standard_normal((3, 5, 7)).astype(np.float32)
    w.add_tensor("t_f32", a)
    expect["tensors"]["t_f32"] = {"type": 0, "dims": [7, 5, 3], "values": a.ravel().tolist()}
    b = rng.standard_normal(13).astype(np.float16)
    w.add_tensor("t_f16", b)
    expect["tensors"]["t_f16"] = {"type": 1, "dims": [13], "values": b.astype(np.float32).tolist()}
    c32 = rng.standard_normal((2, 3, 5)).astype(np.float32)
    c_bits = (c32.view(np.uint32) >> 16).astype(np.uint16)  # truncated to bf16: exact values
    w.add_tensor("t_bf16", c_bits, raw_shape=(2, 3, 5), raw_dtype=gguf.GGMLQuantizationType.BF16)
    cvals = (c_bits.astype(np.uint32) << 16).view(np.float32)
    expect["tensors"]["t_bf16"] = {"type": 30, "dims": [5, 3, 2], "values": cvals.ravel().tolist()}
    d = rng.standard_normal((3, 64)).astype(np.float32)
    q = gguf.quants.quantize(d, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("t_q8_0", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    expect["tensors"]["t_q8_0"] = {"type": 8, "dims": [64, 3], "bytes_hex": q.tobytes().hex()}
    e = np.arange(4, dtype=np.float32)
    w.add_tensor("t_vec", e)
    expect["tensors"]["t_vec"] = {"type": 0, "dims": [4], "values": e.tolist()}

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(os.path.join(OUT, "all_types.json"), "w") as f:
        json.dump(expect, f, indent=0, ensure_ascii=False)
        f.write("\n")


# Tokenizer files beside tokenizer.model, so that the converter's added-token, special-id and
# chat-template handling is exercised: ids >= 120 are past the SentencePiece pieces.
TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "added_tokens_decoder": {
        "0": {"content": "<pad>", "special": True},
        "1": {"content": "<eos>", "special": True},
        "2": {"content": "<bos>", "special": True},
        "3": {"content": "<unk>", "special": True},
        "120": {"content": "<image_soft_token>", "special": True},
        "121": {"content": "<unused0>", "special": False},
        "122": {"content": "\u2581\u2581hi", "special": False},
    },
    "chat_template": "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
                     "{{ m['content'] }}<end_of_turn>\n{% endfor %}",
}
ADDED_TOKENS = {"<audio_soft_token>": 123}


def tiny_tokenizer(path):
    """Trains the 120-piece SentencePiece model into `path` (a directory) with the
    tokenizer_config.json and added_tokens.json above."""
    import sentencepiece as spm

    lines = [
        "the quick brown fox jumps over the lazy dog",
        "hello world, this is a tiny tokenizer for gemma 3n tests",
        "GGUF files store tensors and metadata",
        "0123456789 numbers and symbols !?.,;:",
    ] * 20
    m = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=m, vocab_size=120, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], character_coverage=1.0,
        normalization_rule_name="identity", minloglevel=2)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "tokenizer.model"), "wb") as f:
        f.write(m.getvalue())
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(TOKENIZER_CONFIG, f, indent=1, ensure_ascii=False)
    with open(os.path.join(path, "added_tokens.json"), "w") as f:
        json.dump(ADDED_TOKENS, f)


def converted_tiny(src):
    tmp = tempfile.mkdtemp(prefix="gguf_fixtures_")
    try:
        if os.path.isfile(src):
            with tarfile.open(src) as t:
                t.extractall(tmp, filter="data")
            src = os.path.join(tmp, os.listdir(tmp)[0])
        llama = os.path.join(src, "vendor", "llama.cpp")
        model = os.path.join(tmp, "model")
        os.makedirs(model)
        for f in ("config.json", "generation_config.json", "model.safetensors"):
            shutil.copy(os.path.join(TINY, f), model)
        tok = os.path.join(OUT, "tiny_tokenizer")
        tiny_tokenizer(tok)
        for f in os.listdir(tok):
            shutil.copy(os.path.join(tok, f), model)
        out = os.path.join(OUT, "tiny_text_f16.gguf")
        subprocess.run(
            [sys.executable, os.path.join(llama, "convert_hf_to_gguf.py"), model,
             "--outfile", out, "--outtype", "f16"],
            check=True, cwd=llama, stdout=subprocess.DEVNULL)
    finally:
        shutil.rmtree(tmp)


def check(path):
    """Reads a GGUF file with gguf-py and prints its metadata and tensors as JSON."""
    from gguf import GGUFReader, GGUFValueType as T

    r = GGUFReader(path)
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        v = f.contents()
        if isinstance(v, float) and not np.isfinite(v):
            v = str(v)
        meta[k] = {"types": [int(t) for t in f.types], "value": v}
    tensors = {}
    for t in r.tensors:
        tensors[t.name] = {"type": int(t.tensor_type), "dims": [int(x) for x in t.shape],
                           "bytes_hex": np.asarray(t.data).tobytes().hex()}
    json.dump({"metadata": meta, "tensors": tensors}, sys.stdout)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
        return
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    import gguf

    os.makedirs(OUT, exist_ok=True)
    all_types(gguf)
    converted_tiny(sys.argv[1])
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)))


if __name__ == "__main__":
    main()
