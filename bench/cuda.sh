#!/usr/bin/env bash
# The CUDA parity test and the GPU benchmarks in one run, ours and HF transformers side by
# side (for the GPU machine; see ../shared/device.md). Usage:
#   bench/cuda.sh BINARY OUTDIR [parity|bench|hf|persistent|all]...
# BINARY: a gemma3n built with `--features cuda`. Logs go to OUTDIR; a summary is printed last.
set -u
bin=$1; out=$2; shift 2
steps=${*:-all}
mkdir -p "$out"
export GEMMA3N_CACHE_DIR=${GEMMA3N_CACHE_DIR:-/tmp/gemma3n-cache}
has() { [[ " $steps " == *" $1 "* || " $steps " == *" all "* ]]; }
summary=()
if has parity; then
  for m in tests/fixtures/matformer/base tests/fixtures/text/tiny_text_f32 tests/fixtures/text/tiny_text_f16 tests/fixtures/text/tiny_mm_bf16; do
    echo "== parity $m" | tee -a "$out/parity.log"
    timeout 120 "$bin" parity --model "$m" --device cuda 2>&1 | tee -a "$out/parity.log"
    summary+=("parity $m: $(tail -n 2 "$out/parity.log" | grep -o 'parity [A-Z]*: worst max rel err [0-9.e+-]*' || echo 'ERROR')")
  done
  for s in "--skip-layers 10,11,12 --ffn-dims 64" "--ffn-dims 32"; do
    echo "== parity matformer/base $s" | tee -a "$out/parity.log"
    timeout 120 "$bin" parity --model tests/fixtures/matformer/base --device cuda $s 2>&1 | tee -a "$out/parity.log"
    summary+=("parity base $s: $(tail -n 2 "$out/parity.log" | grep -o 'parity [A-Z]*: worst max rel err [0-9.e+-]*' || echo 'ERROR')")
  done
fi
if [[ " $steps " == *" persistent "* ]]; then
  # (Named only, not part of "all".) The decode step's layers in one persistent launch
  # (GEMMA3N_CUDA_PERSISTENT=1): parity on every fixture, then the decode step of both
  # shapes with and without it, the products-only chain three ways, and the kernel's
  # barrier trace.
  for m in tests/fixtures/matformer/base tests/fixtures/text/tiny_text_f32 tests/fixtures/text/tiny_text_f16 tests/fixtures/text/tiny_mm_bf16; do
    echo "== persistent parity $m" | tee -a "$out/persistent.log"
    GEMMA3N_CUDA_PERSISTENT=1 timeout 120 "$bin" parity --model "$m" --device cuda 2>&1 | tee -a "$out/persistent.log"
    summary+=("persistent parity $m: $(tail -n 2 "$out/persistent.log" | grep -o 'parity [A-Z]*: worst max rel err [0-9.e+-]*' || echo 'ERROR')")
  done
  summary+=("persistent parity: $(grep -c 'one persistent launch' "$out/persistent.log") greedy runs decoded on the kernel")
  for shape in e2b e4b; do
    for on in 0 1; do
      echo "== persistent=$on bench $shape" | tee -a "$out/persistent.log"
      GEMMA3N_CUDA_PERSISTENT=$on timeout 300 "$bin" bench --device cuda --synthetic "$shape" --prompt-len 128 --gen 64 --reps 3 2>&1 | tee -a "$out/persistent.log"
    done
    echo "== products chain $shape" | tee -a "$out/persistent.log"
    GEMMA3N_CUDA_PKT=16 GEMMA3N_CUDA_PROFILE=1 timeout 300 "$bin" bench --device cuda --synthetic "$shape" --prompt-len 16 --gen 2 --reps 1 2>&1 | grep -E '^products|rror' | tee -a "$out/persistent.log"
    # Where the kernel's time goes: each block's arrival at and release from every barrier.
    echo "== barrier trace $shape" | tee -a "$out/persistent.log"
    GEMMA3N_CUDA_PERSISTENT=1 GEMMA3N_CUDA_PK_TRACE=1 timeout 300 "$bin" bench --device cuda --synthetic "$shape" --prompt-len 128 --gen 8 --reps 1 2>&1 | grep '^pk trace' | tee -a "$out/persistent.log"
  done
  summary+=("$(grep -E '^(== persistent|== products|products|gpu step|roofline|== barrier|pk trace)' "$out/persistent.log")")
fi
if has bench; then
  # "CHUNK|args": CHUNK rows of the prompt at a time (the bf16-activation prefill of the
  # 2048-token prompt in one piece is the one the flash attention kernel takes).
  for shape in e2b e4b; do
    for run in "512|--prompt-len 2048" "512|--prompt-len 2048 --activation-parts 2" \
               "2048|--prompt-len 2048 --activation-parts 1" "512|--prompt-len 128"; do
      chunk=${run%%|*}; args=${run#*|}
      echo "== bench $shape $args (pieces of $chunk)" | tee -a "$out/bench.log"
      timeout 400 "$bin" bench --device cuda --synthetic "$shape" $args --prefill-rows "$chunk" --gen 64 --reps 3 2>&1 | tee -a "$out/bench.log"
    done
  done
  summary+=("$(grep -E '^(== bench|prefill|decode|gpu step|roofline|memory)' "$out/bench.log")")
fi
if has hf; then
  for shape in e2b e4b; do
    echo "== hf $shape" | tee -a "$out/hf.log"
    PYTHONUNBUFFERED=1 timeout 300 python3 bench/compare_hf_cuda.py --shape "$shape" --prompt-len 2048 --gen 32 --reps 2 2>&1 | tee -a "$out/hf.log"
  done
  summary+=("$(grep '^{' "$out/hf.log")")
fi
echo "================ summary"
printf '%s\n' "${summary[@]}"
