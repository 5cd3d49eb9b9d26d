#!/usr/bin/env bash
# ptxas, cuobjdump and nvdisasm (from NVIDIA's CUDA 13 wheels on PyPI) for reading what the
# CUDA kernels become without a GPU: registers and spills per kernel, and their SASS. Prints
# the directory holding the binaries. Idempotent. x86-64 Linux only. Typical use:
#   export LD_LIBRARY_PATH=$(bash tools/fetch_nvrtc.sh)
#   GEMMA3N_DUMP_PTX=/tmp/k.ptx cargo test -p gemma3n-compute --features cuda --test cuda_kernels
#   bin=$(bash tools/fetch_sass_tools.sh)
#   $bin/ptxas -arch=sm_90 -v /tmp/k.ptx -o /tmp/k.cubin      # registers, spills
#   PATH=$bin:$PATH $bin/cuobjdump -sass -fun gemv_bf16_b8 /tmp/k.cubin
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.cache/sass-tools"
bin="$dir/nvidia/cu13/bin"
pins="nvidia-cuda-nvcc==13.5.37 nvidia-cuda-cuobjdump==13.5.37 nvidia-cuda-nvdisasm==13.5.37"
if [ ! -x "$bin/ptxas" ] || [ ! -x "$bin/cuobjdump" ] || [ ! -x "$bin/nvdisasm" ]; then
    mkdir -p "$dir"
    py="$root/.cache/openai-venv/bin/python"
    [ -x "$py" ] || py=python3
    # shellcheck disable=SC2086
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux_2_17_x86_64 --python-version 3 -d "$dir/wheel" $pins >&2
    python3 - "$dir" <<'PY'
import glob, os, sys, zipfile
d = sys.argv[1]
for w in glob.glob(d + "/wheel/*.whl"):
    with zipfile.ZipFile(w) as z:
        for n in z.namelist():
            if os.path.basename(n) in ("ptxas", "cuobjdump", "nvdisasm"):
                os.chmod(z.extract(n, d), 0o755)
PY
    rm -rf "$dir/wheel"
fi
find "$dir" -name ptxas -type f -exec dirname {} \; | head -1
