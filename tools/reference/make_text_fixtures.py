#!/usr/bin/env python3
"""Build tiny random Gemma 3n text models with HF transformers and write reference fixtures.

Every fixture is a checkpoint in the Hugging Face layout plus `golden.safetensors` with outputs of
transformers' own `Gemma3nForCausalLM` run in float32 with eager attention. See
tools/reference/README.md (how to regenerate, what each golden tensor means) and
tests/fixtures/text/README.md (what each fixture exercises).

Usage: tools/reference/.venv/bin/python tools/reference/make_text_fixtures.py [--out DIR] [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import transformers
from transformers import AutoConfig, Gemma3nConfig, Gemma3nForCausalLM, Gemma3nTextConfig

EXPECTED_TRANSFORMERS = "5.24.0"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "tests" / "fixtures" / "text"
SOFTCAP = 30.0
S_, F_ = "sliding_attention", "full_attention"

torch.set_num_threads(min(2, os.cpu_count() or 1))
torch.use_deterministic_algorithms(True)


# --------------------------------------------------------------------------------------------
# Fixture definitions
# --------------------------------------------------------------------------------------------

def _types(spec: str) -> list[str]:
    return [S_ if c == "S" else F_ for c in spec]


FIXTURES = {
    # 12 layers, 8 own-KV layers + 4 KV-shared. Producers: sliding 7, full 5 (the full producer
    # is NOT the last own-KV layer, unlike the real model). Consumers: 8 S, 9 F, 10 S, 11 F.
    "tiny_text_f32": dict(
        seed=1001,
        layout="text",
        store_dtype=torch.float32,
        legacy_config=False,
        config=dict(
            vocab_size=300,
            vocab_size_per_layer_input=256,
            hidden_size=64,
            num_hidden_layers=12,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            hidden_size_per_layer_input=8,
            laurel_rank=4,
            altup_num_inputs=4,
            intermediate_size=[128, 128, 64, 32, 32, 64, 32, 64, 32, 64, 32, 64],
            activation_sparsity_pattern=[0.95, 0.95, 0.9] + [0.0] * 9,
            sliding_window=5,
            layer_types=_types("SSFSSFSS" + "SFSF"),
            num_kv_shared_layers=4,
            max_position_embeddings=128,
            final_logit_softcapping=SOFTCAP,
            rope_parameters={
                F_: {"rope_type": "default", "rope_theta": 1_000_000.0},
                S_: {"rope_type": "default", "rope_theta": 10_000.0},
            },
        ),
        prefill_len=20,
        decode_len=30,  # S
        decode_prefix=9,  # P > window: the sliding cache is already truncated after prefill
        greedy_prompt_len=8,
    ),
    # Multimodal (Gemma3nForConditionalGeneration) layout, bf16, 2 shards, shared-layer k/v stored.
    # 15 layers with the real (i+1)%5 pattern and num_kv_shared_layers=5 -> exactly the real
    # structure scaled down: producers 8 (sliding) and 9 (full), consumers 10-13 S, 14 F.
    # H*d = 8*12 = 96 != hidden 48 (q/o projections are not square).
    "tiny_mm_bf16": dict(
        seed=2002,
        layout="mm",
        store_dtype=torch.bfloat16,
        legacy_config=False,
        config=dict(
            vocab_size=320,
            vocab_size_per_layer_input=256,
            hidden_size=48,
            num_hidden_layers=15,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=12,
            hidden_size_per_layer_input=8,
            laurel_rank=4,
            altup_num_inputs=4,
            # MatFormer "layer-level" style: global (full) layers get the wide FFN
            intermediate_size=[96 if (i + 1) % 5 == 0 else 64 for i in range(15)],
            activation_sparsity_pattern=[0.95] * 5 + [0.0] * 10,
            sliding_window=7,
            layer_types=[F_ if (i + 1) % 5 == 0 else S_ for i in range(15)],
            num_kv_shared_layers=5,
            max_position_embeddings=256,
            final_logit_softcapping=SOFTCAP,
            rope_parameters={
                F_: {"rope_type": "default", "rope_theta": 1_000_000.0},
                S_: {"rope_type": "default", "rope_theta": 10_000.0},
            },
        ),
        prefill_len=21,
        decode_len=32,
        decode_prefix=11,
        greedy_prompt_len=9,
        shard_split_layer=6,  # layers < 6 (and part of layer 6) go to shard 1
    ),
    # F16, single file, text-only layout, LEGACY config spelling (rope_theta /
    # rope_local_base_freq / rope_scaling: null, scalar intermediate_size, torch_dtype).
    # MQA (1 KV head). Non-default thetas so a parser that ignores the legacy keys fails.
    # P (3) < window (6): decode crosses the window boundary during token-by-token decode.
    # Producers: full 7 (last own-KV layer), sliding 6. Consumers 8 S, 9 S, 10 F, 11 S.
    "tiny_text_f16": dict(
        seed=3003,
        layout="text",
        store_dtype=torch.float16,
        legacy_config=True,
        config=dict(
            vocab_size=280,
            vocab_size_per_layer_input=256,
            hidden_size=32,
            num_hidden_layers=12,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            hidden_size_per_layer_input=4,
            laurel_rank=2,
            altup_num_inputs=4,
            intermediate_size=64,  # scalar: HF expands to [64]*12
            activation_sparsity_pattern=[0.95, 0.9, 0.95] + [0.0] * 9,
            sliding_window=6,
            layer_types=_types("SFSSFSSF" + "SSFS"),
            num_kv_shared_layers=4,
            max_position_embeddings=96,
            final_logit_softcapping=SOFTCAP,
            # legacy kwargs (HF converts them to rope_parameters)
            rope_theta=20_000.0,
            rope_local_base_freq=500.0,
            rope_scaling=None,
        ),
        prefill_len=19,
        decode_len=26,
        decode_prefix=3,
        greedy_prompt_len=7,
    ),
}

# Spec §1.2 / real -it checkpoint top-level values for the multimodal layout.
MM_TOP_LEVEL = dict(
    boi_token_id=255999,
    eoi_token_id=262144,
    image_token_id=262145,
    boa_token_id=256000,
    eoa_token_id=262272,
    audio_token_id=262273,
    vision_soft_tokens_per_image=256,
    audio_soft_tokens_per_image=188,
    eos_token_id=[1, 106],
    bos_token_id=2,
    pad_token_id=0,
)
MM_GENERATION_CONFIG = {
    "bos_token_id": 2,
    "cache_implementation": "hybrid",
    "do_sample": True,
    "eos_token_id": [1, 106],
    "pad_token_id": 0,
    "top_k": 64,
    "top_p": 0.95,
    "transformers_version": EXPECTED_TRANSFORMERS,
}


# --------------------------------------------------------------------------------------------
# Model construction and re-randomisation
# --------------------------------------------------------------------------------------------

def build_model(cfg_kwargs: dict) -> Gemma3nForCausalLM:
    cfg = Gemma3nTextConfig(**cfg_kwargs)
    # NB: constructing the class directly leaves config._attn_implementation = None, and in
    # transformers 5.24 that gives DIFFERENT logits (wrong masking) from eager/sdpa. Always set it.
    model = Gemma3nForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    assert model.config._attn_implementation == "eager"
    return model.eval()


def randomize(model: Gemma3nForCausalLM, seed: int) -> None:
    """Re-draw every parameter from `seed`. Scales keep activations O(1); norms are non-unit."""
    cfg = model.config
    D, P = cfg.hidden_size, cfg.hidden_size_per_layer_input
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=g, dtype=torch.float32) * (hi - lo) + lo

    seen = set()
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head is not listed twice
            shape = tuple(p.shape)
            if name == "model.norm.weight":
                # final norm scale sets the logit scale (logit std ~ rms(w)): large enough that
                # the 30 soft-cap visibly bends some logits, small enough that few saturate
                v = uniform(shape, 3.0, 9.0)
            elif name.endswith("self_attn.q_norm.weight") or name.endswith("self_attn.k_norm.weight"):
                # attention has scaling 1.0: keep q.k scores moderate (real E2B q/k norms ~0.35)
                v = uniform(shape, 0.25, 0.75)
            elif name.endswith("norm.weight"):
                v = uniform(shape, 0.5, 1.5)
            elif name == "model.embed_tokens.weight":
                v = normal(shape, 1.0 / math.sqrt(D))  # x sqrt(D) at lookup -> O(1); row 0 too
            elif name == "model.embed_tokens_per_layer.weight":
                v = normal(shape, 1.0 / math.sqrt(P))  # x sqrt(P) at lookup -> O(1); row 0 too
            elif name == "model.per_layer_model_projection.weight":
                v = normal(shape, 1.0)
            elif name.endswith("altup.correct_output_scale"):
                v = uniform(shape, 0.25, 1.75)
            elif name.endswith("altup.modality_router.weight"):
                # routed = R . (rmsnorm(x) / D) ~ std(R)/sqrt(D): tanh inputs ~0.25 (clearly
                # nonzero coefficients without making the stream mixing ill-conditioned)
                v = normal(shape, 0.25 * math.sqrt(D))
            elif name.endswith("altup.prediction_coefs.weight") or name.endswith(
                "altup.correction_coefs.weight"
            ):
                v = normal(shape, 0.3)
            elif p.ndim == 2:  # every nn.Linear [out, in]
                v = normal(shape, 1.0 / math.sqrt(shape[1]))
            else:
                raise RuntimeError(f"no init rule for parameter {name} {shape}")
            p.copy_(v)
            seen.add(name)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "lm_head not tied"
    n_state = {k for k in model.state_dict() if k != "lm_head.weight"}
    assert n_state == seen, f"parameters not re-randomised: {sorted(n_state - seen)}"


def round_to_storage(model: Gemma3nForCausalLM, dtype: torch.dtype) -> None:
    """Round weights to the storage dtype and back, so f32 goldens use exactly the stored values."""
    if dtype == torch.float32:
        return
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


# --------------------------------------------------------------------------------------------
# Goldens
# --------------------------------------------------------------------------------------------

def make_ids(g: torch.Generator, n: int, cfg, n_high: int) -> torch.Tensor:
    """BOS, then random ids in [3, Vp) with `n_high` ids in [Vp, V) (they take PLE row 0)."""
    V, Vp = cfg.vocab_size, cfg.vocab_size_per_layer_input
    ids = torch.randint(3, Vp, (n,), generator=g)
    ids[0] = 2
    pos = torch.randperm(n - 1, generator=g)[:n_high] + 1
    ids[pos] = torch.randint(Vp, V, (n_high,), generator=g)
    return ids


@torch.no_grad()
def forward_logits(model, ids: torch.Tensor, use_cache: bool, **kw):
    return model(ids[None], use_cache=use_cache, **kw)


@torch.no_grad()
def decode_logits(model, ids: torch.Tensor, prefix: int) -> torch.Tensor:
    out = model(ids[None, :prefix], use_cache=True)
    cache = out.cache
    assert cache is not None
    steps = []
    for t in range(prefix, ids.numel()):
        out = model(ids[None, t : t + 1], cache=cache, use_cache=True)
        cache = out.cache
        steps.append(out.logits[0, -1])
    return torch.stack(steps)


@torch.no_grad()
def capture_streams(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[L+1, 4, T, D] via output_hidden_states, cross-checked with our own forward hooks."""
    hooked = []

    def hook(mod, args, output):
        if not hooked:
            hooked.append(args[0].detach().clone())
        hooked.append(output.detach().clone())

    hs = [layer.register_forward_hook(hook) for layer in model.model.layers]
    try:
        out = model(ids[None], use_cache=False, output_hidden_states=True)
    finally:
        for h in hs:
            h.remove()
    L = model.config.num_hidden_layers
    assert len(out.hidden_states) == L + 1, len(out.hidden_states)
    for h in out.hidden_states:
        assert h.shape == (model.config.altup_num_inputs, 1, ids.numel(), model.config.hidden_size), h.shape
    hidden = torch.stack([h[:, 0] for h in out.hidden_states])
    mine = torch.stack([h[:, 0] for h in hooked])
    assert torch.equal(hidden, mine), "output_hidden_states != forward hooks on decoder layers"
    return out.logits[0], hidden


@torch.no_grad()
def greedy(model, prompt: torch.Tensor, n_new: int = 20) -> tuple[torch.Tensor, float]:
    model.generation_config.eos_token_id = None  # never stop early, never suppress eos
    out = model.generate(
        prompt[None],
        do_sample=False,
        max_new_tokens=n_new,
        eos_token_id=None,
        pad_token_id=0,
        attention_mask=torch.ones(1, prompt.numel(), dtype=torch.long),
    )
    new = out[0, prompt.numel() :]
    assert new.numel() == n_new, f"generate stopped early: {new.numel()} tokens"
    # Independent check: the argmax chain with full no-cache forwards, and the top-1/top-2 gap
    full = torch.cat([prompt, new])
    logits = model(full[None], use_cache=False).logits[0, prompt.numel() - 1 : -1]
    assert torch.equal(logits.argmax(-1), new), "generate() != argmax chain"
    top2 = logits.topk(2, dim=-1).values
    return new, float((top2[:, 0] - top2[:, 1]).min())


def logit_stats(tag: str, logits: torch.Tensor) -> None:
    a = logits.abs()
    raw = torch.atanh((logits / SOFTCAP).clamp(-0.999999, 0.999999)) * SOFTCAP
    print(
        f"    {tag}: max|logit| {a.max():.2f} (pre-cap ~{raw.abs().max():.2f}), std {logits.std():.2f}, "
        f"|logit|>15 (cap bends >7%): {(a > 15).float().mean():.3f}, "
        f"|logit|>27 (near saturation): {(a > 27).float().mean():.4f}"
    )


@torch.no_grad()
def sparsity_report(model, ids: torch.Tensor) -> None:
    zeros = {}
    hs = []
    for i, layer in enumerate(model.model.layers):
        if layer.mlp.activation_sparsity > 0:
            def hook(mod, args, i=i):
                zeros[i] = float((args[0] == 0).float().mean())
            hs.append(layer.mlp.down_proj.register_forward_pre_hook(hook))
    model(ids[None], use_cache=False)
    for h in hs:
        h.remove()
    print("    zero fraction of FFN activations in sparse layers:",
          {i: round(z, 3) for i, z in zeros.items()})


@torch.no_grad()
def noise_floor(model, ids: torch.Tensor, spec: dict) -> float:
    """Max |logit| difference between this f32 run and the same model in float64 (RMSNorm patched
    to stay in float64). It is the error an exact-but-differently-rounded f32 implementation can
    be expected to show, i.e. the floor for a Rust test tolerance. Informational."""
    from transformers.models.gemma3n import modeling_gemma3n as mg

    m64 = build_model(spec["config"])
    m64.load_state_dict(model.state_dict())
    m64 = m64.double()
    orig = mg.Gemma3nRMSNorm.forward

    def fwd64(self, x):
        o = self._norm(x)
        return o * self.weight.to(x.dtype) if self.with_scale else o

    mg.Gemma3nRMSNorm.forward = fwd64
    try:
        l64 = m64(ids[None], use_cache=False).logits[0]
    finally:
        mg.Gemma3nRMSNorm.forward = orig
    l32 = model(ids[None], use_cache=False).logits[0]
    return float((l32.double() - l64).abs().max())


def compute_goldens(model, spec: dict) -> dict[str, torch.Tensor]:
    cfg = model.config
    g = torch.Generator().manual_seed(spec["seed"] + 7)
    T, S, Pfx, Tp = spec["prefill_len"], spec["decode_len"], spec["decode_prefix"], spec["greedy_prompt_len"]
    assert S > cfg.sliding_window + 10, "decode must run well past the sliding window"
    assert T > cfg.sliding_window

    prefill_ids = make_ids(g, T, cfg, n_high=4)
    logits_nc, hidden = capture_streams(model, prefill_ids)
    logits_c = forward_logits(model, prefill_ids, use_cache=True).logits[0]
    d = (logits_nc - logits_c).abs().max().item()
    print(f"    use_cache=False vs True one-shot prefill: max |diff| {d:.2e}")
    assert d <= 1e-5

    decode_ids = make_ids(g, S, cfg, n_high=4)
    dec = decode_logits(model, decode_ids, Pfx)
    oneshot = forward_logits(model, decode_ids, use_cache=False).logits[0, Pfx:]
    d = (dec - oneshot).abs().max().item()
    print(f"    cached decode vs one-shot forward over the same ids: max |diff| {d:.2e}")
    assert d <= 1e-3, "cached decode disagrees with one-shot forward beyond f32 noise"

    # greedy: pick the first prompt whose argmax chain has a safe top-1/top-2 margin
    for attempt in range(20):
        prompt = make_ids(g, Tp, cfg, n_high=1)
        new, gap = greedy(model, prompt)
        if gap > 1e-2:
            break
        print(f"    greedy prompt {attempt}: min top1-top2 gap {gap:.2e} too small, retrying")
    else:
        raise RuntimeError("no greedy prompt with a safe argmax margin")
    print(f"    greedy: {new.tolist()} (min top1-top2 gap {gap:.3f})")

    nf = noise_floor(model, prefill_ids, spec)
    print(f"    f32-vs-f64 noise floor on prefill logits: max |diff| {nf:.1e} "
          f"(relative to max|logit|: {nf / logits_nc.abs().max().item():.1e})")
    logit_stats("prefill", logits_nc)
    logit_stats("decode ", dec)
    sparsity_report(model, prefill_ids)
    return {
        "prefill_ids": prefill_ids.to(torch.int64),
        "prefill_logits": logits_nc.float().contiguous(),
        "prefill_hidden": hidden.float().contiguous(),
        "decode_ids": decode_ids.to(torch.int64),
        "decode_prefix_len": torch.tensor([Pfx], dtype=torch.int64),
        "decode_logits": dec.float().contiguous(),
        "greedy_prompt": prompt.to(torch.int64),
        "greedy_tokens": new.to(torch.int64).contiguous(),
    }


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------

def write_text_layout(model, spec: dict, out: Path) -> None:
    dt = spec["store_dtype"]
    to_save = model if dt == torch.float32 else build_model(spec["config"]).to(dt)
    if to_save is not model:
        to_save.load_state_dict({k: v.to(dt) for k, v in model.state_dict().items()})
    to_save.save_pretrained(out)  # single model.safetensors (small), config.json, generation_config.json
    if spec["legacy_config"]:
        path = out / "config.json"
        c = json.loads(path.read_text())
        rp = c.pop("rope_parameters")
        c["rope_theta"] = rp[F_]["rope_theta"]
        c["rope_local_base_freq"] = rp[S_]["rope_theta"]
        c["rope_scaling"] = None
        widths = c["intermediate_size"]
        assert len(set(widths)) == 1
        c["intermediate_size"] = widths[0]
        c["torch_dtype"] = c.pop("dtype")
        # fields present in the published configs that v5 does not model (must be ignored)
        c["query_pre_attn_scalar"] = 256
        c["altup_lr_multiplier"] = 1.0
        path.write_text(json.dumps(dict(sorted(c.items())), indent=2) + "\n")


def write_mm_layout(model, spec: dict, out: Path) -> None:
    dt = spec["store_dtype"]
    text_cfg = model.config
    g = torch.Generator().manual_seed(spec["seed"] + 13)
    # config.json: as Gemma3nConfig writes it, with the -it top-level values
    top = Gemma3nConfig(text_config=Gemma3nTextConfig(**spec["config"]), **MM_TOP_LEVEL)
    top.architectures = ["Gemma3nForConditionalGeneration"]
    top.dtype = dt
    top.text_config.dtype = dt
    top.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps(MM_GENERATION_CONFIG, indent=2) + "\n")

    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        assert k.startswith("model.")
        tensors["model.language_model." + k[len("model."):]] = v.to(dt).contiguous()
    # unused K/V tensors of KV-shared layers, as in the real checkpoints (random, must be ignored)
    D, G, hd = text_cfg.hidden_size, text_cfg.num_key_value_heads, text_cfg.head_dim
    shared = [i for i, m in enumerate(text_cfg.kv_sharing_modes) if m == "reuse"]
    for i in shared:
        p = f"model.language_model.layers.{i}.self_attn."
        tensors[p + "k_proj.weight"] = (torch.randn(G * hd, D, generator=g) * 3.0).to(dt)
        tensors[p + "v_proj.weight"] = (torch.randn(G * hd, D, generator=g) * 3.0).to(dt)
        tensors[p + "k_norm.weight"] = (torch.rand(hd, generator=g) * 5.0 - 2.5).to(dt)
    # two small non-text decoys with the real names/shapes (vision/audio embedder norms)
    tensors["model.embed_vision.hard_embedding_norm.weight"] = torch.rand(top.vision_config.hidden_size, generator=g).to(dt)
    tensors["model.embed_audio.soft_embedding_norm.weight"] = torch.rand(top.audio_config.hidden_size, generator=g).to(dt)

    split = spec["shard_split_layer"]

    def shard_of(name: str) -> int:
        if ".layers." in name:
            layer = int(name.split(".layers.")[1].split(".")[0])
            if layer < split:
                return 1
            if layer == split:  # straddle: one layer spread over both files
                return 1 if ".self_attn." in name else 2
            return 2
        return 1 if ("embed_tokens" in name or "altup_projections" in name) else 2

    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for s in (1, 2):
        part = {k: v for k, v in sorted(tensors.items()) if shard_of(k) == s}
        save_file(part, out / names[s - 1], metadata={"format": "pt"})
        weight_map.update({k: names[s - 1] for k in part})
    total_size = sum(v.numel() * v.element_size() for v in tensors.values())
    total_params = sum(v.numel() for v in tensors.values())
    index = {
        "metadata": {"total_parameters": total_params, "total_size": total_size},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Verification of what was written
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def check_against_goldens(tag: str, model, gold: dict) -> None:
    logits = model(gold["prefill_ids"][None], use_cache=False, output_hidden_states=True)
    d1 = (logits.logits[0] - gold["prefill_logits"]).abs().max().item()
    hidden = torch.stack([h[:, 0] for h in logits.hidden_states])
    d2 = (hidden - gold["prefill_hidden"]).abs().max().item()
    dec = decode_logits(model, gold["decode_ids"], int(gold["decode_prefix_len"][0]))
    d3 = (dec - gold["decode_logits"]).abs().max().item()
    rel2 = d2 / gold["prefill_hidden"].abs().max().item()
    print(f"    reload [{tag}]: max |diff| prefill logits {d1:.2e}, hidden {d2:.2e} (rel {rel2:.1e}), "
          f"decode logits {d3:.2e}")
    # Not bit-exact in general: oneDNN/MKL pick kernels by shape and buffer alignment (the
    # mmap-loaded weights differ from the in-memory ones), so single-token decode GEMVs can
    # round differently. The bound is a few times the f32 noise floor printed above.
    assert d1 <= 2e-3 and rel2 <= 1e-4 and d3 <= 2e-3, "reloaded checkpoint does not reproduce the goldens"


def verify_text(out: Path, spec: dict, gold: dict) -> None:
    m = Gemma3nForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    c = m.config
    want = build_model(spec["config"]).config
    for f in ("layer_types", "intermediate_size", "activation_sparsity_pattern", "rope_parameters",
              "num_kv_shared_layers", "sliding_window", "vocab_size_per_layer_input"):
        assert getattr(c, f) == getattr(want, f), (f, getattr(c, f), getattr(want, f))
    with safe_open(out / "model.safetensors", "pt") as f:
        dts = {f.get_slice(k).get_dtype() for k in f.keys()}
    print(f"    stored dtypes {sorted(dts)}; reloaded rope_parameters {c.rope_parameters}")
    check_against_goldens("from_pretrained", m, gold)


def verify_mm(out: Path, spec: dict, model_f32, gold: dict) -> None:
    top = AutoConfig.from_pretrained(out)
    assert top.model_type == "gemma3n" and isinstance(top.text_config, Gemma3nTextConfig)
    tc = top.text_config
    assert tc.layer_types == model_f32.config.layer_types
    assert tc.intermediate_size == model_f32.config.intermediate_size
    # (1) re-read the shards ourselves through the index
    index = json.loads((out / "model.safetensors.index.json").read_text())
    tensors = {}
    for fname in sorted(set(index["weight_map"].values())):
        part = load_file(out / fname)
        for k, v in part.items():
            assert index["weight_map"][k] == fname
            assert v.dtype == spec["store_dtype"], (k, v.dtype)
        tensors.update(part)
    assert set(tensors) == set(index["weight_map"])
    prefix = "model.language_model."
    m = Gemma3nForCausalLM._from_config(tc, attn_implementation="eager", dtype=torch.float32).eval()
    # HF lists module prefixes such as 'layers.10.self_attn.k_proj' for the KV-shared layers
    ignore_prefixes = tuple(prefix + k + "." for k in m.model._keys_to_ignore_on_load_unexpected)
    sd = {}
    extra = []
    for k, v in tensors.items():
        if not k.startswith(prefix):
            extra.append(k)
            continue
        if not k.startswith(ignore_prefixes):
            sd["model." + k[len(prefix):]] = v.float()
    unused = sorted(k for k in tensors if k.startswith(ignore_prefixes))
    n_shared = sum(m == "reuse" for m in tc.kv_sharing_modes)
    assert len(unused) == 3 * n_shared, unused
    print(f"    shards hold {len(tensors)} tensors; {len(unused)} unused KV-shared tensors; non-text {extra}")
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert missing == ["lm_head.weight"] or missing == [], missing  # tied
    assert not unexpected, unexpected
    m.tie_weights()
    check_against_goldens("shards re-read", m, gold)
    # (2) transformers' own loader: Gemma3nForCausalLM from the multimodal checkpoint
    #     (conversion_mapping strips 'language_model', k/v of shared layers are ignored)
    try:
        m2 = Gemma3nForCausalLM.from_pretrained(out, config=tc, dtype=torch.float32,
                                                attn_implementation="eager").eval()
        check_against_goldens("Gemma3nForCausalLM.from_pretrained(mm dir)", m2, gold)
    except Exception as e:  # informative only; (1) is the required check
        print(f"    NOTE: Gemma3nForCausalLM.from_pretrained on the multimodal layout failed: {e!r}")


# --------------------------------------------------------------------------------------------

def make_fixture(name: str, spec: dict, root: Path) -> None:
    print(f"== {name}")
    out = root / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = build_model(spec["config"])
    c = model.config
    print(f"    L={c.num_hidden_layers} D={c.hidden_size} H={c.num_attention_heads} G={c.num_key_value_heads} "
          f"d={c.head_dim} V={c.vocab_size} Vp={c.vocab_size_per_layer_input} W={c.sliding_window}")
    print(f"    kv_sharing_modes {c.kv_sharing_modes}")
    randomize(model, spec["seed"])
    round_to_storage(model, spec["store_dtype"])
    gold = compute_goldens(model, spec)
    save_file(gold, out / "golden.safetensors", metadata={"format": "pt"})
    if spec["layout"] == "text":
        write_text_layout(model, spec, out)
        verify_text(out, spec, gold)
    else:
        write_mm_layout(model, spec, out)
        verify_mm(out, spec, model, gold)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"    wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}: {size / 1024:.0f} KiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("names", nargs="*", help=f"subset of {list(FIXTURES)}")
    args = ap.parse_args()
    if transformers.__version__ != EXPECTED_TRANSFORMERS:
        print(f"error: transformers {transformers.__version__} != pinned {EXPECTED_TRANSFORMERS}", file=sys.stderr)
        return 1
    transformers.logging.set_verbosity_error()
    names = args.names or list(FIXTURES)
    for n in names:
        if n not in FIXTURES:
            print(f"error: unknown fixture {n}", file=sys.stderr)
            return 1
    for n in names:
        make_fixture(n, FIXTURES[n], args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"total size of {args.out}: {total / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
