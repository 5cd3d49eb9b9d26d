#!/usr/bin/env python3
"""MatFormer (elastic Gemma 3n) reference fixtures, sliced the MatFormer Lab way.

Builds one tiny E4B-like random Gemma 3n text model (`base/`, BF16, as `save_pretrained` writes
it), then applies spec §6.2 (the slicing procedure of Google's MatFormer Lab notebook) to that
checkpoint in plain Python: drop the skipped layers and renumber the kept ones, keep the first F
rows of gate/up and the first F columns of down, reduce `per_layer_model_projection` and
`embed_tokens_per_layer` to the kept layers through their [L, P] view, copy everything else, and
edit the config (num_hidden_layers, intermediate_size, num_kv_shared_layers,
activation_sparsity_pattern, layer_types). Each slice is reloaded with
`Gemma3nForCausalLM.from_pretrained` and its goldens are computed by HF transformers in float32
(eager attention) on the upcast BF16 values.

Output (default tests/fixtures/matformer/):
  base/{config.json, generation_config.json, model.safetensors, golden.safetensors}
  slices/<name>/{slice.json, config.json, generation_config.json, model.safetensors, golden.safetensors}
  README.md (generated: configs, derived layer roles, golden tensor names)

Usage: tools/reference/.venv/bin/python tools/reference/make_matformer_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import transformers
from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

# Helpers shared with the text fixtures (importing sets 2 torch threads and deterministic algorithms).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_text_fixtures import (  # noqa: E402
    EXPECTED_TRANSFORMERS,
    F_,
    REPO,
    S_,
    SOFTCAP,
    build_model,
    decode_logits,
    logit_stats,
    make_ids,
    noise_floor,
    randomize,
    round_to_storage,
    sparsity_report,
)

DEFAULT_OUT = REPO / "tests" / "fixtures" / "matformer"
STORE_DTYPE = torch.bfloat16
SPARSE = 0.95

# --------------------------------------------------------------------------------------------
# Base model: E4B scaled down. E4B: 35 layers, full at (i+1)%5==0, 15 KV-shared (first consumer
# 20, producers 18 S / 19 F), FFN 16384 everywhere, sparsity 0.95 on layers 0-9.
# Here: 15 layers, full at 4/9/14, 5 KV-shared (first consumer 10, producers 8 S / 9 F),
# FFN 128 everywhere (nested prefixes 64 and 32), sparsity 0.95 on layers 0-2.
# Hidden size 32 (not 64) keeps the five checkpoints under ~2.5 MB.
# --------------------------------------------------------------------------------------------
BASE = dict(
    seed=4004,
    config=dict(
        vocab_size=300,
        vocab_size_per_layer_input=256,
        hidden_size=32,
        num_hidden_layers=15,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        hidden_size_per_layer_input=8,
        laurel_rank=4,
        altup_num_inputs=4,
        intermediate_size=[128] * 15,
        activation_sparsity_pattern=[SPARSE] * 3 + [0.0] * 12,
        sliding_window=5,
        layer_types=[F_ if (i + 1) % 5 == 0 else S_ for i in range(15)],
        num_kv_shared_layers=5,
        max_position_embeddings=128,
        final_logit_softcapping=SOFTCAP,
        rope_parameters={
            F_: {"rope_type": "default", "rope_theta": 1_000_000.0},
            S_: {"rope_type": "default", "rope_theta": 10_000.0},
        },
    ),
    prefill_len=20,
    decode_len=30,
    decode_prefix=9,  # > sliding window: the sliding cache is already truncated after the prefix
)

_W = [128 if (i + 1) % 5 == 0 else 64 for i in range(15)]  # "layer-level": wide full layers

# (layers_to_skip, ffn_hidden_dims) exactly as the MatFormer Lab notebook takes them:
# ffn_hidden_dims has one entry per KEPT layer.
SLICES = {
    # like the official E2B config (E4B skipping 20-24, FFN 8192 everywhere): skip the first three
    # consumer layers, half width everywhere
    "e2b_like": dict(layers_to_skip=[10, 11, 12], ffn_hidden_dims=[64] * 12, decode=True),
    # like the "layer-level" rows of the official table: no skip, wide FFN on the full layers only
    "mix_layer_level": dict(layers_to_skip=[], ffn_hidden_dims=_W, decode=True),
    # skip a sparse layer (1) and a non-producer sliding layer before the consumers (6): the
    # sparsity pattern, all later indices, the producers (8->6, 9->7) and the first consumer
    # (10->8) shift; widths 32/64 mixed, 128 on the full layers (new 3, 7, 12)
    "skip_early": dict(
        layers_to_skip=[1, 6],
        ffn_hidden_dims=[32, 64, 32, 128, 64, 32, 64, 128, 64, 32, 64, 32, 128],
        decode=True,
    ),
    # the identity slice: must reproduce base bit for bit
    "full": dict(layers_to_skip=[], ffn_hidden_dims=[128] * 15, decode=False),
}


# --------------------------------------------------------------------------------------------
# Spec §6.2 slicing (MatFormer Lab), on a config dict + a dict of stored tensors
# --------------------------------------------------------------------------------------------

def matformer_slice(cfg: dict, tensors: dict[str, torch.Tensor], layers_to_skip: list[int],
                    ffn_hidden_dims: list[int]) -> tuple[dict, dict[str, torch.Tensor]]:
    L = cfg["num_hidden_layers"]
    N = cfg["num_kv_shared_layers"]
    P = cfg["hidden_size_per_layer_input"]
    skip = sorted(set(layers_to_skip))
    assert skip == sorted(layers_to_skip), "duplicate entries in layers_to_skip"
    assert all(0 <= i < L for i in skip)
    kept = [i for i in range(L) if i not in skip]
    if len(ffn_hidden_dims) != len(kept):
        raise ValueError(f"ffn_hidden_dims needs one entry per kept layer: {len(ffn_hidden_dims)} != {len(kept)}")
    # MatFormer Lab: the KV producers (num_kv_comp_layers - 2 and - 1) may not be skipped
    num_kv_comp_layers = L - N
    producers = (num_kv_comp_layers - 2, num_kv_comp_layers - 1)
    if any(p in skip for p in producers):
        raise ValueError(f"layers {producers} store the shared KV cache and cannot be skipped")
    for new, old in enumerate(kept):
        if not 0 < ffn_hidden_dims[new] <= cfg["intermediate_size"][old]:
            raise ValueError(f"ffn_hidden_dims[{new}] = {ffn_hidden_dims[new]} exceeds stored width "
                             f"{cfg['intermediate_size'][old]} of layer {old}")

    # -- config edits
    asp = cfg["activation_sparsity_pattern"]
    n_sparse = sum(1 for a in asp if a > 0)
    assert asp == [asp[0]] * n_sparse + [0.0] * (L - n_sparse), "expected a sparse prefix, then zeros"
    n_skip_sparse = sum(1 for i in skip if i < n_sparse)  # notebook: `layer <= 9` for E4B
    n_skip_consumer = sum(1 for i in skip if i >= num_kv_comp_layers)
    new = dict(cfg)
    new["num_hidden_layers"] = len(kept)
    new["intermediate_size"] = [int(f) for f in ffn_hidden_dims]
    new["num_kv_shared_layers"] = N - n_skip_consumer
    # write 0.0, not 0: transformers 5.24's strict config rejects an int in list[float]
    new["activation_sparsity_pattern"] = [asp[0]] * (n_sparse - n_skip_sparse) + [0.0] * (
        len(kept) - n_sparse + n_skip_sparse)
    # not in the notebook; transformers 5 validates len(layer_types) == num_hidden_layers
    new["layer_types"] = [cfg["layer_types"][i] for i in kept]
    assert new["activation_sparsity_pattern"] == [asp[i] for i in kept]

    # -- tensor edits
    out: dict[str, torch.Tensor] = {}
    layer_re = re.compile(r"^(.*\blayers\.)(\d+)(\..*)$")
    for k, v in tensors.items():
        m = layer_re.match(k)
        if m:
            old = int(m.group(2))
            if old in skip:
                continue
            j = kept.index(old)
            nk = f"{m.group(1)}{j}{m.group(3)}"
            Fn = ffn_hidden_dims[j]
            if k.endswith("mlp.gate_proj.weight") or k.endswith("mlp.up_proj.weight"):
                v = v[:Fn, :]
            elif k.endswith("mlp.down_proj.weight"):
                v = v[:, :Fn]
            out[nk] = v.contiguous().clone()
        elif k.endswith("per_layer_model_projection.weight"):  # [L*P, D]
            out[k] = v.reshape(L, P, -1)[kept].reshape(len(kept) * P, -1).contiguous()
        elif k.endswith("embed_tokens_per_layer.weight"):  # [Vp, L*P]
            out[k] = v.reshape(v.shape[0], L, P)[:, kept].reshape(v.shape[0], len(kept) * P).contiguous()
        else:
            out[k] = v.clone()
    return new, out


def check_slice_tensors(cfg: dict, base: dict, sliced: dict, kept: list[int], widths: list[int]) -> None:
    """Independent element-wise check of the sliced tensors against base (loops, no reshapes)."""
    P = cfg["hidden_size_per_layer_input"]
    n_layer_keys = {k.split(".layers.")[1].split(".", 1)[1] for k in base if ".layers." in k}
    for j, old in enumerate(kept):
        for suffix in n_layer_keys:
            bk, sk = f"model.layers.{old}.{suffix}", f"model.layers.{j}.{suffix}"
            if bk not in base:
                assert sk not in sliced, sk
                continue
            b, s = base[bk], sliced[sk]
            if suffix in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                assert s.shape == (widths[j], b.shape[1]) and torch.equal(s, b[: widths[j]]), sk
            elif suffix == "mlp.down_proj.weight":
                assert s.shape == (b.shape[0], widths[j]) and torch.equal(s, b[:, : widths[j]]), sk
            else:
                assert torch.equal(s, b), sk
        e_b, e_s = base["model.embed_tokens_per_layer.weight"], sliced["model.embed_tokens_per_layer.weight"]
        assert torch.equal(e_s[:, j * P : (j + 1) * P], e_b[:, old * P : (old + 1) * P])
        p_b, p_s = base["model.per_layer_model_projection.weight"], sliced["model.per_layer_model_projection.weight"]
        assert torch.equal(p_s[j * P : (j + 1) * P], p_b[old * P : (old + 1) * P])
    assert not any(f"model.layers.{len(kept)}." in k for k in sliced)
    glob = [k for k in base if ".layers." not in k and "per_layer_model_projection" not in k
            and "embed_tokens_per_layer" not in k]
    for k in glob:
        assert torch.equal(sliced[k], base[k]), k
    assert sliced["model.embed_tokens_per_layer.weight"].shape == (cfg["vocab_size_per_layer_input"], len(kept) * P)
    assert sliced["model.per_layer_model_projection.weight"].shape == (len(kept) * P, cfg["hidden_size"])


def roles(cfg) -> dict:
    modes = cfg.kv_sharing_modes
    first = cfg.num_hidden_layers - cfg.num_kv_shared_layers
    prod = {t: i for i, (m, t) in enumerate(zip(modes, cfg.layer_types)) if m == "store"}
    return dict(
        first_consumer=first,
        producer_sliding=prod[S_],
        producer_full=prod[F_],
        consumers=[i for i, m in enumerate(modes) if m == "reuse"],
        full_layers=[i for i, t in enumerate(cfg.layer_types) if t == F_],
    )


# --------------------------------------------------------------------------------------------
# Goldens
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def prefill(model, ids: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
    return model(ids[None], use_cache=use_cache).logits[0].float().contiguous()


@torch.no_grad()
def goldens_for(model, prefill_ids: torch.Tensor, decode_ids: torch.Tensor | None, cfg_kwargs: dict,
                tag: str) -> tuple[dict, dict]:
    logits = prefill(model, prefill_ids)
    assert torch.isfinite(logits).all(), f"{tag}: non-finite logits"
    d = (logits - prefill(model, prefill_ids, use_cache=True)).abs().max().item()
    assert d <= 1e-5, f"{tag}: use_cache False/True differ by {d}"
    gold = {"prefill_ids": prefill_ids.to(torch.int64).contiguous(), "prefill_logits": logits}
    info = {"decode_vs_oneshot": None}
    if decode_ids is not None:
        Pfx = BASE["decode_prefix"]
        dec = decode_logits(model, decode_ids, Pfx).float().contiguous()
        assert torch.isfinite(dec).all()
        one = model(decode_ids[None], use_cache=False).logits[0, Pfx:]
        d = (dec - one).abs().max().item()
        print(f"    cached decode vs one-shot forward: max |diff| {d:.2e}")
        assert d <= 1e-3
        info["decode_vs_oneshot"] = d
        gold.update({
            "decode_ids": decode_ids.to(torch.int64).contiguous(),
            "decode_prefix_len": torch.tensor([Pfx], dtype=torch.int64),
            "decode_logits": dec,
        })
        logit_stats("decode ", dec)
    nf = noise_floor(model, prefill_ids, {"config": cfg_kwargs})
    info["noise_floor"] = nf
    info["max_logit"] = logits.abs().max().item()
    print(f"    f32-vs-f64 noise floor on prefill logits: {nf:.1e} (relative {nf / info['max_logit']:.1e})")
    logit_stats("prefill", logits)
    sparsity_report(model, prefill_ids)
    return gold, info


def load_hf(path: Path):
    m, info = Gemma3nForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager",
                                                 output_loading_info=True)
    assert not info["missing_keys"] or info["missing_keys"] == {"lm_head.weight"}, info
    for k in ("unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(k), (k, info[k])
    assert m.config._attn_implementation == "eager"
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    return m.eval()


# --------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------

def _fmt_list(xs) -> str:
    return "[" + ", ".join(str(x) for x in xs) + "]"


def _sparsity(asp) -> str:
    n = sum(1 for a in asp if a > 0)
    return f"0.95 x {n}, 0.0 x {len(asp) - n}"


def write_readme(out: Path, base_cfg, base_roles, rows: list[dict], sizes: dict, base_info: dict) -> None:
    c = base_cfg
    lt = "".join("F" if t == F_ else "S" for t in c.layer_types)
    lines = [
        "# MatFormer reference fixtures",
        "",
        "Generated by `tools/reference/generate_all.sh matformer` (script:",
        "`tools/reference/make_matformer_fixtures.py`), byte-reproducible. Do not edit by hand.",
        "",
        "`base/` is a tiny E4B-like random Gemma 3n text model; every directory under `slices/` is",
        "that checkpoint sliced with the MatFormer Lab procedure (spec §6.2) in Python, loaded back",
        "with `Gemma3nForCausalLM.from_pretrained` (transformers " f"{EXPECTED_TRANSFORMERS}, float32, eager",
        "attention) to compute its goldens. A Rust",
        "implementation of slicing should turn `base/` + `slice.json` into a model that reproduces",
        "the slice's goldens (and, for BF16, the slice's stored tensors bit for bit).",
        "",
        "## base/",
        "",
        "Layout as `Gemma3nForCausalLM.save_pretrained` writes it: `config.json` (`model_type`",
        "`gemma3n_text`), `generation_config.json`, one BF16 `model.safetensors`, tensor prefix",
        "`model.`, no `lm_head` (tied), no `k_proj`/`v_proj`/`k_norm` for the KV-shared layers.",
        "Parameters re-drawn from seed " f"{BASE['seed']} with the rules of `make_text_fixtures.py`"
        " (non-unit norms,",
        "random AltUp coefficients/router/`correct_output_scale`, N(0, 1/fan_in) linears), rounded",
        "to BF16; HF runs in float32 on the upcast values.",
        "",
        "| field | value | E4B analogue |",
        "|---|---|---|",
        f"| vocab_size / vocab_size_per_layer_input | {c.vocab_size} / {c.vocab_size_per_layer_input} | 262400 / 262144 |",
        f"| hidden_size D | {c.hidden_size} | 2048 |",
        f"| heads H / kv heads G / head_dim d | {c.num_attention_heads} / {c.num_key_value_heads} / {c.head_dim} | 8 / 2 / 256 |",
        f"| hidden_size_per_layer_input P, laurel_rank | {c.hidden_size_per_layer_input}, {c.laurel_rank} | 256, 64 |",
        f"| num_hidden_layers | {c.num_hidden_layers} | 35 |",
        f"| layer_types (F = full) | `{lt}` (full at {_fmt_list(base_roles['full_layers'])}) | full at (i+1)%5==0 |",
        f"| num_kv_shared_layers | {c.num_kv_shared_layers} (first consumer {base_roles['first_consumer']}) | 15 (first consumer 20) |",
        f"| KV producers (sliding, full) | {base_roles['producer_sliding']}, {base_roles['producer_full']} | 18, 19 |",
        f"| intermediate_size (stored FFN width) | {c.intermediate_size[0]} on every layer | 16384 |",
        f"| activation_sparsity_pattern | {_sparsity(c.activation_sparsity_pattern)} | 0.95 x 10, 0.0 x 25 |",
        f"| sliding_window | {c.sliding_window} | 512 |",
        f"| RoPE theta sliding / full | 1e4 / 1e6 | same |",
        f"| max_position_embeddings | {c.max_position_embeddings} | 32768 |",
        "",
        f"Max |prefill logit| {base_info['max_logit']:.1f}; f32-vs-f64 noise floor (max abs, prefill "
        f"logits) {base_info['noise_floor']:.1e}.",
        "",
        "## slices/",
        "",
        "`slice.json` holds the two MatFormer Lab inputs: `layers_to_skip` (original layer indices)",
        "and `ffn_hidden_dims` (one width per **kept** layer, in kept order). The checkpoint next to it",
        "is the result of spec §6.2 applied to `base/`:",
        "",
        "- tensors of skipped layers dropped, kept layers renumbered `layers.{old}` -> `layers.{new}`;",
        "- `mlp.gate_proj`/`mlp.up_proj`: first F rows; `mlp.down_proj`: first F columns;",
        "- `per_layer_model_projection.weight` [L·P, D] viewed [L, P, D] and "
        "`embed_tokens_per_layer.weight` [Vp, L·P] viewed [Vp, L, P], reduced to the kept layers;",
        "- every other tensor copied unchanged;",
        "- config: `num_hidden_layers` = #kept, `intermediate_size` = ffn_hidden_dims,",
        "  `num_kv_shared_layers` -= #(skipped layers >= first consumer),",
        "  `activation_sparsity_pattern` = [0.95]·(3 − #skipped sparse) + [0.0]·rest,",
        "  `layer_types` = base layer_types at the kept layers. Everything else copied.",
        "  The notebook does not touch `layer_types` and writes `0` (int) into the sparsity list;",
        "  transformers 5.24 rejects both (length check, strict `list[float]`). Omitting `layer_types`",
        "  is accepted but silently falls back to the (i+1)%5 default, which is wrong for skips that",
        "  are not whole 5-layer blocks (`e2b_like`: new 11 = old 14 is full, the default says sliding).",
        "  A loader must take `layer_types` from config.json (or slice it along) rather than recompute it.",
        "",
        "All config and sliced tensors are checked element-wise against base by the script; the",
        "BF16 values are exact copies.",
        "",
        "| slice | layers_to_skip | ffn_hidden_dims | kept (old indices) | L | num_kv_shared_layers | first consumer | producers S, F (new idx) | full layers (new idx) | sparsity | decode golden | noise floor | size |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['name']}` | {_fmt_list(r['skip'])} | {_fmt_list(r['widths'])} | {_fmt_list(r['kept'])} | "
            f"{r['L']} | {r['N']} | {r['roles']['first_consumer']} (old {r['kept'][r['roles']['first_consumer']]}) | "
            f"{r['roles']['producer_sliding']}, {r['roles']['producer_full']} "
            f"(old {r['kept'][r['roles']['producer_sliding']]}, {r['kept'][r['roles']['producer_full']]}) | "
            f"{_fmt_list(r['roles']['full_layers'])} | {_sparsity(r['asp'])} | "
            f"{'yes' if r['decode'] else 'no'} | {r['info']['noise_floor']:.1e} | {sizes[r['name']] / 1024:.0f} KiB |"
        )
    lines += [
        "",
        "Notes",
        "",
        "- `e2b_like` is the scaled-down official E2B recipe (E4B skipping 20-24 with FFN 8192",
        "  everywhere): the first three consumers go, everything else is half width. The remaining",
        "  consumers (new 10 S, 11 F = old 13, 14) still read producers 8/9.",
        "- `mix_layer_level` mirrors the \"layer-level\" rows of the official table (wide FFN on the",
        "  full-attention layers only).",
        "- `skip_early` removes a sparse layer and a sliding layer before the producers, so the",
        "  sparsity prefix shrinks to 2, the producers move to 6/7 and the first consumer to 8",
        "  (= old 10). Widths 32/64 mixed, 128 on the full layers. Layer 1's removal also means old",
        "  layer 3 (sparsity 0.0) becomes new layer 2.",
        "- `full` is the identity slice: its tensors and config equal `base/`'s, and its",
        "  `prefill_logits` are asserted bit-identical to `base/golden.safetensors`.",
        "- A slice that skips a KV producer (8 or 9 here; 18 or 19 in E4B) is refused by the",
        "  MatFormer Lab procedure (`ValueError`); the script asserts that its slicer refuses it. Such a",
        "  skip would silently change the model: transformers would make the last remaining",
        "  non-consumer layer of that type the producer.",
        "",
        "## golden.safetensors",
        "",
        "| tensor | dtype, shape | in | meaning |",
        "|---|---|---|---|",
        f"| `prefill_ids` | I64 [{BASE['prefill_len']}] | base, every slice (same ids) | BOS then random ids; 4 ids are >= vocab_size_per_layer_input (PLE row 0) |",
        f"| `prefill_logits` | F32 [{BASE['prefill_len']}, {c.vocab_size}] | base, every slice | one forward over all ids, logits of every position after the soft-cap |",
        f"| `decode_ids` | I64 [{BASE['decode_len']}] | base and the slices marked above (same ids) | ids of the decode test |",
        "| `decode_prefix_len` | I64 [1] | same | P = " f"{BASE['decode_prefix']} (> sliding window {c.sliding_window}) |",
        f"| `decode_logits` | F32 [{BASE['decode_len'] - BASE['decode_prefix']}, {c.vocab_size}] | same | forward over `decode_ids[:P]` with the cache, then one token at a time; row i = logits of the step that fed `decode_ids[P+i]` |",
        "",
        "\"noise floor\" = max |f32 logits - f64 logits| of HF on the prefill (the error an exact f32",
        "implementation may show). Cached decode and a one-shot forward over the same ids differ by up",
        "to " f"{max(x for x in [base_info['decode_vs_oneshot']] + [r['info']['decode_vs_oneshot'] for r in rows] if x is not None):.1e}"
        " in HF itself (sparse layers amplify rounding near the top-k cutoff). One-shot prefill is",
        "bit-reproducible across HF model instances; decode is not guaranteed to be. Compare with a",
        "tolerance of a few times these numbers.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if transformers.__version__ != EXPECTED_TRANSFORMERS:
        print(f"error: transformers {transformers.__version__} != pinned {EXPECTED_TRANSFORMERS}", file=sys.stderr)
        return 1
    transformers.logging.set_verbosity_error()
    root: Path = args.out
    if root.exists():
        shutil.rmtree(root)
    (root / "slices").mkdir(parents=True)
    sizes: dict[str, int] = {}

    # ---- base
    print("== base")
    model = build_model(BASE["config"])
    randomize(model, BASE["seed"])
    round_to_storage(model, STORE_DTYPE)
    base_roles = roles(model.config)
    print(f"    kv_sharing_modes {model.config.kv_sharing_modes}")
    assert base_roles["first_consumer"] == 10 and base_roles["producer_sliding"] == 8 and base_roles["producer_full"] == 9
    g = torch.Generator().manual_seed(BASE["seed"] + 7)
    prefill_ids = make_ids(g, BASE["prefill_len"], model.config, n_high=4)
    decode_ids = make_ids(g, BASE["decode_len"], model.config, n_high=4)
    base_gold, base_info = goldens_for(model, prefill_ids, decode_ids, BASE["config"], "base")

    bdir = root / "base"
    to_save = build_model(BASE["config"]).to(STORE_DTYPE)
    to_save.load_state_dict({k: v.to(STORE_DTYPE) for k, v in model.state_dict().items()})
    to_save.save_pretrained(bdir)
    save_file(base_gold, bdir / "golden.safetensors", metadata={"format": "pt"})
    mb = load_hf(bdir)
    assert mb.config.layer_types == model.config.layer_types
    assert torch.equal(prefill(mb, prefill_ids), base_gold["prefill_logits"]), "reloaded base != golden"
    d = (decode_logits(mb, decode_ids, BASE["decode_prefix"]) - base_gold["decode_logits"]).abs().max().item()
    print(f"    reload base: prefill logits bit-identical; decode max |diff| {d:.1e}")
    assert d <= 1e-3
    del mb, to_save
    sizes["base"] = sum(p.stat().st_size for p in bdir.iterdir())

    base_cfg_json = json.loads((bdir / "config.json").read_text())
    base_tensors = load_file(bdir / "model.safetensors")
    assert all(v.dtype == STORE_DTYPE for v in base_tensors.values())

    # ---- the MatFormer Lab procedure refuses to skip a KV producer
    for bad in ([8], [9], [8, 9], [7, 8, 12]):
        kept_n = 15 - len(bad)
        try:
            matformer_slice(base_cfg_json, base_tensors, bad, [64] * kept_n)
        except ValueError as e:
            print(f"    skip {bad}: refused ({e})")
        else:
            raise AssertionError(f"skipping producer(s) {bad} must be refused")

    # ---- transformers 5.24 pitfalls with sliced configs (what the notebook writes is not loadable)
    cfg_json, _ = matformer_slice(base_cfg_json, {}, [10, 11, 12], [64] * 12)
    kw = {k: cfg_json[k] for k in BASE["config"]}
    try:
        Gemma3nTextConfig(**dict(kw, layer_types=BASE["config"]["layer_types"]))
    except Exception as e:  # strict dataclass validation: len(layer_types) != num_hidden_layers
        print(f"    unsliced layer_types (the notebook's config) rejected: {type(e).__name__}")
    else:
        raise AssertionError("expected transformers to reject 15 layer_types for 12 layers")
    try:
        Gemma3nTextConfig(**dict(kw, activation_sparsity_pattern=[SPARSE] * 3 + [0] * 9))
    except Exception as e:
        print(f"    int 0 in activation_sparsity_pattern (the notebook's list) rejected: {type(e).__name__}")
    else:
        raise AssertionError("expected transformers to reject ints in activation_sparsity_pattern")
    no_lt = Gemma3nTextConfig(**{k: v for k, v in kw.items() if k != "layer_types"})
    # without layer_types HF falls back to the (i+1)%5 default: for a skip that is not
    # block-aligned this silently turns old layer 14 (full) into a sliding layer
    assert no_lt.layer_types != cfg_json["layer_types"]
    print(f"    layer_types omitted -> default pattern {''.join('F' if t == F_ else 'S' for t in no_lt.layer_types)}"
          f" != sliced {''.join('F' if t == F_ else 'S' for t in cfg_json['layer_types'])} (silently wrong)")

    # ---- slices
    rows = []
    for name, s in SLICES.items():
        print(f"== slice {name}: skip {s['layers_to_skip']}, widths {s['ffn_hidden_dims']}")
        sdir = root / "slices" / name
        sdir.mkdir(parents=True)
        (sdir / "slice.json").write_text(json.dumps(
            {"layers_to_skip": s["layers_to_skip"], "ffn_hidden_dims": s["ffn_hidden_dims"]}) + "\n")
        cfg_json, tensors = matformer_slice(base_cfg_json, base_tensors, s["layers_to_skip"], s["ffn_hidden_dims"])
        kept = [i for i in range(15) if i not in s["layers_to_skip"]]
        check_slice_tensors(base_cfg_json, base_tensors, tensors, kept, s["ffn_hidden_dims"])
        (sdir / "config.json").write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
        shutil.copyfile(bdir / "generation_config.json", sdir / "generation_config.json")
        save_file(dict(sorted(tensors.items())), sdir / "model.safetensors", metadata={"format": "pt"})

        m = load_hf(sdir)
        c = m.config
        assert c.num_hidden_layers == len(kept) and list(c.intermediate_size) == s["ffn_hidden_dims"]
        assert c.layer_types == cfg_json["layer_types"]
        assert c.activation_sparsity_pattern == cfg_json["activation_sparsity_pattern"]
        assert [lay.mlp.intermediate_size for lay in m.model.layers] == s["ffn_hidden_dims"]
        r = roles(c)
        # §6.2 step 5: consumers keep reading old 8 / old 9
        assert kept[r["producer_sliding"]] == 8 and kept[r["producer_full"]] == 9, r
        assert r["first_consumer"] == 10 - sum(1 for i in s["layers_to_skip"] if i < 10)
        assert kept[r["first_consumer"]] == min(i for i in kept if i >= 10)
        print(f"    kept {kept}; L {c.num_hidden_layers}, N {c.num_kv_shared_layers}, first consumer "
              f"{r['first_consumer']}, producers S {r['producer_sliding']} F {r['producer_full']}, "
              f"sparsity {c.activation_sparsity_pattern}")
        kw = {k: cfg_json[k] for k in BASE["config"]}
        gold, info = goldens_for(m, prefill_ids, decode_ids if s["decode"] else None, kw, name)
        if name == "full":
            assert cfg_json == base_cfg_json
            assert set(tensors) == set(base_tensors) and all(torch.equal(tensors[k], base_tensors[k]) for k in tensors)
            assert torch.equal(gold["prefill_logits"], base_gold["prefill_logits"]), "full slice != base"
            print("    full slice: config, tensors and prefill logits identical to base")
        else:
            d = (gold["prefill_logits"] - base_gold["prefill_logits"]).abs().max().item()
            print(f"    max |logit - base logit| {d:.2f} (the slice is a different model)")
            assert d > 1e-2
        save_file(gold, sdir / "golden.safetensors", metadata={"format": "pt"})
        # reload once more from disk: the golden must be reproducible from the files alone
        m2 = load_hf(sdir)
        assert torch.equal(prefill(m2, prefill_ids), gold["prefill_logits"])
        del m, m2
        sizes[name] = sum(p.stat().st_size for p in sdir.iterdir())
        rows.append(dict(name=name, skip=s["layers_to_skip"], widths=s["ffn_hidden_dims"], kept=kept,
                         L=c.num_hidden_layers, N=c.num_kv_shared_layers, roles=r,
                         asp=c.activation_sparsity_pattern, decode=s["decode"], info=info))
        print(f"    wrote {sdir}: {sizes[name] / 1024:.0f} KiB")

    write_readme(root, model.config, base_roles, rows, sizes, base_info)
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"total size of {root}: {total / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
