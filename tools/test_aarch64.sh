#!/usr/bin/env bash
# The aarch64 (NEON) matmul kernels' tests. On x86-64: cross-compiles gemma3n-compute's unit
# tests for aarch64-unknown-linux-gnu and runs the cpu::matmul ones under user-mode QEMU with
# two CPU models, `max` (has the dot-product extension: the SDOT kernels run) and
# `cortex-a57` (Armv8.0 without it: the baseline NEON kernels run). On aarch64: runs them
# natively. Installs what it needs when missing (Debian's gcc-aarch64-linux-gnu and
# qemu-user, rustup's aarch64 target) and prints how long it took.
# Extra arguments go to the test binary, e.g. `--ignored --nocapture neon_speed` for the
# rough NEON vs portable timings.
set -euo pipefail

start=$(date +%s)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=aarch64-unknown-linux-gnu
filter=cpu::matmul::
# No debug info: the step compiles the crate and its dependencies (the `gemm` crate is most of
# it) for one more target, and CI has two cores.
export CARGO_PROFILE_TEST_DEBUG=false

if [ "$(uname -m)" = aarch64 ]; then
    cargo test -p gemma3n-compute --lib -- "$filter" "$@"
    echo "aarch64 matmul tests (native): $(($(date +%s) - start)) s"
    exit 0
fi

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
# Without the cross toolchain (no Debian mirror or rustup server reachable) the step is
# skipped with a message rather than failing the x86 tests that ran before it.
skip() {
    echo "aarch64 matmul tests SKIPPED: $1" >&2
    exit 0
}
if [ ${#need[@]} -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq || skip "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
        skip "could not install ${need[*]}"
fi
if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target" || skip "rustup could not add $target"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo test -p gemma3n-compute --target "$target" --lib --no-run
built=$(date +%s)
# GEMMA3N_EXPECT_DOTPROD makes the tests check that the intended path is the one detected.
for cpu in max:1 cortex-a57:0; do
    echo "== QEMU_CPU=${cpu%:*}"
    QEMU_CPU=${cpu%:*} GEMMA3N_EXPECT_DOTPROD=${cpu#*:} \
        cargo test -p gemma3n-compute --target "$target" --lib -- "$filter" "$@"
done
end=$(date +%s)
echo "aarch64 matmul tests: $((end - start)) s ($((built - start)) s to build, $((end - built)) s to run)"
