//! The CUDA kernels compile with NVRTC for Hopper and export every kernel the backend
//! launches, and the GEMV argument struct has the same size on both sides. Needs libnvrtc
//! only (no GPU): run with `--features cuda` where it is found (`tools/fetch_nvrtc.sh`
//! fetches it; `.ci/run` does).
#![cfg(feature = "cuda")]

#[test]
fn kernels_compile_for_sm90() {
    let ptx = match gemma3n_compute::cuda::compile_kernels((9, 0)) {
        Err(gemma3n_compute::cuda::CudaError::NoNvrtc)
            if std::env::var_os("GEMMA3N_REQUIRE_NVRTC").is_none() =>
        {
            eprintln!("skipped: libnvrtc not found (GEMMA3N_REQUIRE_NVRTC=1 makes this a failure)");
            return;
        }
        r => r.expect("kernels compile"),
    };
    // For reading the code the kernels become (e.g. `ptxas -arch=sm_90 -v` on it).
    if let Some(path) = std::env::var_os("GEMMA3N_DUMP_PTX") {
        std::fs::write(path, &ptx).expect("write the PTX");
    }
    // The GEMV kernels take one struct by value: its size in the kernel must be the size of
    // the Rust struct the launcher fills.
    for name in gemma3n_compute::cuda::GEMV_KERNELS.iter().flatten().chain([
        &gemma3n_compute::cuda::GEMV_KERNEL_ONE,
        &gemma3n_compute::cuda::GEMV_KERNEL_ROWBLOCK,
    ]) {
        assert_eq!(
            param_bytes(&ptx, name),
            gemma3n_compute::cuda::GEMV_ARGS_BYTES,
            "{name}: kernel argument size"
        );
    }
    // So does the persistent decode kernel.
    assert_eq!(
        param_bytes(&ptx, "decode_layers"),
        gemma3n_compute::cuda::PK_STEP_BYTES,
        "decode_layers: kernel argument size"
    );
    assert_eq!(
        param_bytes(&ptx, "pk_layer_probe"),
        gemma3n_compute::cuda::PK_LAYER_BYTES,
        "persistent.cu's PkLayer against ops.rs's RawPkLayer"
    );
    for k in gemma3n_compute::cuda::KERNELS {
        assert!(
            ptx.contains(&format!(".entry {k}(")),
            "kernel {k} missing from the PTX"
        );
    }
}

/// Bytes of kernel `name`'s first parameter, a struct passed by value, in the PTX.
fn param_bytes(ptx: &str, name: &str) -> usize {
    let decl = format!(".param .align 8 .b8 {name}_param_0[");
    let at = ptx
        .find(&decl)
        .unwrap_or_else(|| panic!("no {decl} in the PTX"));
    let rest = &ptx[at + decl.len()..];
    rest[..rest.find(']').unwrap()].parse().unwrap()
}
