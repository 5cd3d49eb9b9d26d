#!/usr/bin/env bash
# NVIDIA's runtime compiler (libnvrtc, from the nvidia-cuda-nvrtc wheel on PyPI) for compiling
# the CUDA kernels where there is no GPU and no CUDA toolkit: CI checks that every kernel of
# crates/compute/src/cuda/kernels compiles for Hopper. Prints the directory holding the
# libraries (for LD_LIBRARY_PATH). Idempotent. x86-64 Linux only.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.cache/nvrtc"
lib="$dir/nvidia/cu13/lib"
pin="nvidia-cuda-nvrtc==13.2.86"
if [ ! -e "$lib/libnvrtc.so.13" ]; then
    mkdir -p "$dir"
    # pip from the tests' venv (tools/setup_tests.sh makes it), else the system's.
    py="$root/.cache/openai-venv/bin/python"
    [ -x "$py" ] || py=python3
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux_2_12_x86_64 --python-version 3 -d "$dir/wheel" "$pin" >&2
    python3 - "$dir" <<'PY'
import glob, sys, zipfile
d = sys.argv[1]
for w in glob.glob(d + "/wheel/*.whl"):
    with zipfile.ZipFile(w) as z:
        for n in z.namelist():
            if "/lib/" in n and ".so" in n:
                z.extract(n, d)
PY
    rm -rf "$dir/wheel"
fi
echo "$lib"
