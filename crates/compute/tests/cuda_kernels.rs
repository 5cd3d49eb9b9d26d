//! The CUDA kernels compile with NVRTC for Hopper and export every kernel the backend
//! launches. Needs libnvrtc only (no GPU): run with `--features cuda` where it is found
//! (`tools/fetch_nvrtc.sh` fetches it; `.ci/run` does).
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
    for k in gemma3n_compute::cuda::KERNELS {
        assert!(
            ptx.contains(&format!(".entry {k}(")),
            "kernel {k} missing from the PTX"
        );
    }
}
