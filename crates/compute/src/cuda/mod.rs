//! The CUDA backend (feature `cuda`): a device, its stream, device buffers and the kernels.
//!
//! The driver, NVRTC and cuBLAS are loaded at run time (`cudarc` with dynamic loading), so
//! this builds without a CUDA toolkit and fails with a clear error where no GPU or driver is
//! found. The kernels are CUDA C files beside this one, compiled by NVRTC for the device's
//! own architecture the first time they are needed and cached on disk
//! (`$GEMMA3N_CACHE_DIR`, else `$XDG_CACHE_HOME/gemma3n`, else `~/.cache/gemma3n`).
//!
//! Device memory is handed out as [`DeviceBuffer`]s; kernels take [`DevPtr`]s into them.
//! Every op is queued on the one stream of the [`Gpu`], so ops run in the order they are
//! issued and a decode step can be captured as a CUDA graph and replayed.

mod ops;

pub use ops::{
    flash_plan, DecodeLayer, DecodeStep, Epilogue, FlashPlan, GemvSeg, KvPtrs, WeightFormat,
    WeightPtr, GEMV_ARGS_BYTES, GEMV_KERNELS, GEMV_KERNEL_ONE, GEMV_KERNEL_ROWBLOCK, MAX_ROW,
    PK_LAYER_BYTES, PK_STEP_BYTES,
};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr};
use cudarc::nvrtc::{CompileOptions, Ptx};

/// Every kernel source, compiled as one module.
const SOURCES: [(&str, &str); 5] = [
    ("common.cu", include_str!("kernels/common.cu")),
    ("gemv.cu", include_str!("kernels/gemv.cu")),
    ("rows.cu", include_str!("kernels/rows.cu")),
    ("attention.cu", include_str!("kernels/attention.cu")),
    ("persistent.cu", include_str!("kernels/persistent.cu")),
];

/// The kernels the module must export.
pub const KERNELS: [&str; 43] = [
    "weights_to_bf16",
    "softmax_masked",
    "gemv_any_b1",
    "gemv_rowblock_b1",
    "gemv_tc_bf16_b8",
    "gemv_tc_bf16_b16",
    "gemv_tc_q8_b8",
    "gemv_tc_q8_b16",
    "gemv_tc_q4k_b8",
    "gemv_tc_q4k_b16",
    "split_bf16_rows",
    "sparse_t_bf16",
    "sparse_tc_bf16_b8",
    "sparse_rows_bf16",
    "sparse_up_rows_bf16",
    "sparse_tc_bf16_b16",
    "embed_rows",
    "ple_combine",
    "match_magnitude",
    "altup_predict",
    "altup_predict_rows",
    "post_attention",
    "sparsity_cutoff",
    "gelu_mul",
    "ffn_act_split",
    "ffn_act_split_bf16",
    "post_ffn_correct",
    "post_ffn_correct_rows",
    "ple_gate",
    "ple_inject",
    "unembed_merge",
    "keep_row",
    "qkv_prep",
    "attention_decode",
    "attention_flash_hd16",
    "attention_flash_hd64",
    "attention_flash_hd128",
    "attention_flash_hd256",
    "argmax_f32",
    "topk_f32",
    "products_chain",
    "products_chain_tma",
    "decode_layers",
];

/// Errors of the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver found (libcuda could not be loaded): is there an NVIDIA GPU and driver on this machine?")]
    NoDriver,
    #[error("NVRTC (libnvrtc) could not be loaded: the CUDA runtime compiler is needed to build the kernels")]
    NoNvrtc,
    #[error("cuBLAS (libcublas) could not be loaded")]
    NoCublas,
    #[error("CUDA device {0} not found ({1} device(s) present)")]
    NoDevice(usize, usize),
    #[error("CUDA: {0}")]
    Driver(String),
    #[error("compiling the CUDA kernels failed: {0}")]
    Compile(String),
    #[error("cuBLAS: {0}")]
    Blas(String),
}

pub type Result<T> = std::result::Result<T, CudaError>;

pub(crate) fn drv(e: cudarc::driver::DriverError) -> CudaError {
    CudaError::Driver(e.to_string())
}

/// One GPU: its context, the stream every op runs on, the compiled kernels and cuBLAS.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    blas: CudaBlas,
    ordinal: usize,
    name: String,
    arch: (i32, i32),
    allocated: AtomicUsize,
    /// Programmatic dependent launch (`GEMMA3N_CUDA_PDL=0` turns it off).
    pdl: bool,
    /// The flash attention kernels run here (compute capability 8.0 and up).
    flash: bool,
    /// Multiprocessors of the device.
    sms: usize,
    /// Dynamic shared memory the persistent kernels may take (`ops::PK_MAX_SMEM` or what
    /// the device allows).
    pk_smem: usize,
    /// Which products run on `gemv_rowblock_b1` (`GEMMA3N_CUDA_ROWBLOCK`).
    rowblock: ops::RowBlock,
    /// A single row's sparse down product reads only the kept units' rows
    /// (`GEMMA3N_CUDA_SPARSE_ROWS=0`: the tensor-core kernel instead).
    sparse_rows: bool,
    /// Kernels not launched at all (`GEMMA3N_CUDA_SKIP=name,name`): a development knob that
    /// measures what a kernel costs inside the step (the results are then wrong).
    skip: Vec<String>,
    /// Per-op GPU timing (`GEMMA3N_CUDA_PROFILE=1`): events around every launch.
    profile: Option<std::sync::Mutex<Profile>>,
    /// Set while timing is paused ([`Gpu::without_timing`]).
    untimed: std::sync::atomic::AtomicBool,
}

/// Events recorded around each op of a step, and the totals per op name.
#[derive(Default)]
struct Profile {
    pending: Vec<(
        &'static str,
        cudarc::driver::CudaEvent,
        cudarc::driver::CudaEvent,
    )>,
    totals: HashMap<&'static str, (usize, f64)>,
}

/// Whether a CUDA driver can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

impl Gpu {
    /// Opens device `ordinal`: creates its context and stream, builds (or loads from the
    /// cache) the kernels and starts cuBLAS.
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        // SAFETY: only tries to open the libraries.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(CudaError::NoNvrtc);
        }
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CudaError::NoCublas);
        }
        let count = CudaContext::device_count().map_err(drv)? as usize;
        if ordinal >= count {
            return Err(CudaError::NoDevice(ordinal, count));
        }
        let ctx = CudaContext::new(ordinal).map_err(drv)?;
        // One stream, in order: the per-buffer event tracking is not needed (and would
        // get in the way of graph capture).
        // SAFETY: every op of this backend runs on `stream`.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv)?;
        let arch = ctx.compute_capability().map_err(drv)?;
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(drv)? as usize;
        let name = ctx.name().map_err(drv)?;
        let ptx = kernels_ptx(arch)?;
        let module = ctx.load_module(ptx).map_err(drv)?;
        let mut funcs = HashMap::new();
        for k in KERNELS {
            funcs.insert(k, module.load_function(k).map_err(drv)?);
        }
        // The flash kernels take more than the default 48 KB of dynamic shared memory.
        let flash = arch.0 >= 8;
        for (hd, k) in ops::FLASH_HEAD_DIMS.into_iter().filter(|_| flash) {
            funcs[k]
                .set_attribute(
                    cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    ops::flash_smem(hd) as i32,
                )
                .map_err(drv)?;
        }
        // The persistent kernels' activations, up to what a block may opt into here (less
        // than their limit on some GPUs: `decode_layers_fit` then refuses larger models).
        let optin = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(drv)? as usize;
        let pk_smem = ops::PK_MAX_SMEM.min(optin.saturating_sub(ops::PK_STATIC_SMEM));
        for k in ["products_chain", "products_chain_tma", "decode_layers"] {
            funcs[k]
                .set_attribute(
                    cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    pk_smem as i32,
                )
                .map_err(drv)?;
        }
        let blas = CudaBlas::new(stream.clone()).map_err(|e| CudaError::Blas(e.to_string()))?;
        Ok(Arc::new(Gpu {
            ctx,
            stream,
            funcs,
            blas,
            ordinal,
            name,
            arch,
            allocated: AtomicUsize::new(0),
            pdl: std::env::var_os("GEMMA3N_CUDA_PDL").is_none_or(|v| v != "0"),
            flash,
            sms,
            pk_smem,
            rowblock: ops::RowBlock::from_env(
                std::env::var("GEMMA3N_CUDA_ROWBLOCK").ok().as_deref(),
            ),
            sparse_rows: std::env::var_os("GEMMA3N_CUDA_SPARSE_ROWS").is_none_or(|v| v != "0"),
            skip: std::env::var("GEMMA3N_CUDA_SKIP")
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            profile: std::env::var_os("GEMMA3N_CUDA_PROFILE")
                .is_some_and(|v| v == "1")
                .then(|| std::sync::Mutex::new(Profile::default())),
            untimed: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// "NVIDIA H200 (cuda:0, sm_90)".
    pub fn describe(&self) -> String {
        format!(
            "{} (cuda:{}, sm_{}{})",
            self.name, self.ordinal, self.arch.0, self.arch.1
        )
    }

    /// Bytes of device memory held by live [`DeviceBuffer`]s of this GPU.
    pub fn allocated_bytes(&self) -> usize {
        self.allocated.load(Ordering::Relaxed)
    }

    /// Free and total device memory.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(drv)
    }

    /// A zeroed buffer of `bytes` bytes.
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer> {
        let slice = self
            .stream
            .alloc_zeros::<u8>(bytes.max(16))
            .map_err(|e| CudaError::Driver(format!("allocating {bytes} bytes: {e}")))?;
        self.allocated.fetch_add(bytes, Ordering::Relaxed);
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(&self.stream);
            ptr
        };
        Ok(DeviceBuffer {
            slice,
            ptr,
            bytes,
            gpu: self.clone(),
        })
    }

    /// A buffer holding `data`.
    pub fn upload<T: Copy>(self: &Arc<Self>, data: &[T]) -> Result<DeviceBuffer> {
        let buf = self.alloc(std::mem::size_of_val(data))?;
        self.write(&buf, 0, data)?;
        Ok(buf)
    }

    /// Copies `data` into `buf` at byte offset `offset` (queued on the stream; the host
    /// data is read before this returns).
    pub fn write<T: Copy>(&self, buf: &DeviceBuffer, offset: usize, data: &[T]) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv)?;
        let bytes = std::mem::size_of_val(data);
        assert!(
            offset + bytes <= buf.bytes,
            "write past the end of a device buffer"
        );
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: the range lies inside `buf` (checked above); `data` is plain data of
        // `bytes` bytes.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(
                buf.ptr + offset as u64,
                std::slice::from_raw_parts(data.as_ptr() as *const u8, bytes),
                self.stream.cu_stream(),
            )
            .map_err(drv)?;
        }
        // Pageable host memory: make sure the copy is done before `data` may go away.
        self.sync()
    }

    /// Copies `out.len()` values at `src` to the host (waits for everything queued before).
    pub fn read_at<T: Copy>(&self, src: DevPtr, out: &mut [T]) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv)?;
        let bytes = std::mem::size_of_val(out);
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: `src` points into a live buffer holding at least `bytes` bytes (the
        // caller's contract for every `DevPtr`).
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(
                std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, bytes),
                src.0,
                self.stream.cu_stream(),
            )
            .map_err(drv)?;
        }
        self.sync()
    }

    /// Device-to-device copy of `bytes` bytes.
    pub fn copy(&self, src: DevPtr, dst: DevPtr, bytes: usize) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv)?;
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: both pointers come from live buffers; the caller sizes `bytes`.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(dst.0, src.0, bytes, self.stream.cu_stream())
                .map_err(drv)
        }
    }

    /// Zeroes `bytes` bytes at `dst`.
    pub fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv)?;
        // SAFETY: as in `copy`.
        unsafe {
            cudarc::driver::result::memset_d8_async(dst.0, 0, bytes, self.stream.cu_stream())
                .map_err(drv)
        }
    }

    /// Waits for everything queued on the stream.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv)
    }

    /// Starts recording the ops issued on the stream into a graph instead of running them.
    pub fn begin_capture(&self) -> Result<()> {
        self.stream
            .begin_capture(
                cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
            .map_err(drv)
    }

    /// Ends a capture and returns the replayable graph.
    pub fn end_capture(&self) -> Result<Graph> {
        let g = self
            .stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .map_err(drv)?
            .ok_or_else(|| CudaError::Driver("graph capture recorded nothing".into()))?;
        Ok(Graph(g))
    }

    /// Times `f` on the stream with events (milliseconds).
    pub fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f32> {
        let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let a = self.ctx.new_event(timed).map_err(drv)?;
        let b = self.ctx.new_event(timed).map_err(drv)?;
        a.record(&self.stream).map_err(drv)?;
        f()?;
        b.record(&self.stream).map_err(drv)?;
        b.synchronize().map_err(drv)?;
        a.elapsed_ms(&b).map_err(drv)
    }

    /// Runs `f` with per-op timing paused (for ops captured into a graph, which events
    /// around each launch would break).
    pub fn without_timing<T>(&self, f: impl FnOnce() -> T) -> T {
        let was = self.untimed.swap(true, Ordering::Relaxed);
        let r = f();
        self.untimed.store(was, Ordering::Relaxed);
        r
    }

    /// Whether ops are being timed (`GEMMA3N_CUDA_PROFILE=1`; graphs are not used then).
    pub fn profiling(&self) -> bool {
        self.profile.is_some()
    }

    /// Runs `f` (which queues one op) between two timing events when profiling.
    pub(crate) fn timed<T>(&self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let Some(p) = &self.profile else {
            return f();
        };
        if self.untimed.load(Ordering::Relaxed) {
            return f();
        }
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let a = self.ctx.new_event(flags).map_err(drv)?;
        let b = self.ctx.new_event(flags).map_err(drv)?;
        a.record(&self.stream).map_err(drv)?;
        let r = f()?;
        b.record(&self.stream).map_err(drv)?;
        p.lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .push((name, a, b));
        Ok(r)
    }

    /// Adds the timings of the ops queued since the last call to the totals (waits for them).
    pub fn profile_collect(&self) -> Result<()> {
        let Some(p) = &self.profile else {
            return Ok(());
        };
        self.sync()?;
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        let pending = std::mem::take(&mut p.pending);
        for (name, a, b) in pending {
            let ms = a.elapsed_ms(&b).map_err(drv)? as f64;
            let e = p.totals.entry(name).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += ms;
        }
        Ok(())
    }

    /// The totals per op (name, count, milliseconds), largest first; resets them.
    pub fn profile_take(&self) -> Vec<(&'static str, usize, f64)> {
        let Some(p) = &self.profile else {
            return Vec::new();
        };
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = p.totals.drain().map(|(k, (c, t))| (k, c, t)).collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v
    }

    fn func(&self, name: &str) -> &CudaFunction {
        self.funcs
            .get(name)
            .unwrap_or_else(|| panic!("kernel `{name}` not in the module"))
    }

    fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

/// A captured sequence of ops (a CUDA graph), replayed with [`Graph::launch`].
pub struct Graph(cudarc::driver::CudaGraph);

// SAFETY: a graph is only launched or dropped through `&mut` of its owner (one thread at a
// time); the driver objects it wraps may be used from any thread bound to the context.
unsafe impl Send for Graph {}

impl Graph {
    /// Queues one replay on the stream it was captured from.
    pub fn launch(&self) -> Result<()> {
        self.0.launch().map_err(drv)
    }
}

/// Page-locked host memory: copies from and to it run asynchronously on the stream.
pub struct PinnedBuffer {
    ptr: *mut u8,
    bytes: usize,
    gpu: Arc<Gpu>,
}

// SAFETY: plain host memory owned by this value.
unsafe impl Send for PinnedBuffer {}
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    /// The buffer as values of `T` (as many as fit).
    pub fn as_mut_slice<T: Copy>(&mut self) -> &mut [T] {
        assert_eq!(self.ptr as usize % std::mem::align_of::<T>(), 0);
        // SAFETY: `bytes` bytes of host memory owned by this value; T is plain data.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr as *mut T,
                self.bytes / std::mem::size_of::<T>(),
            )
        }
    }

    pub fn as_slice<T: Copy>(&self) -> &[T] {
        assert_eq!(self.ptr as usize % std::mem::align_of::<T>(), 0);
        // SAFETY: as above.
        unsafe {
            std::slice::from_raw_parts(self.ptr as *const T, self.bytes / std::mem::size_of::<T>())
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        let _ = self.gpu.ctx.bind_to_thread();
        let _ = self.gpu.sync();
        // SAFETY: allocated by `malloc_host` in `Gpu::alloc_pinned`, freed once.
        unsafe {
            let _ = cudarc::driver::result::free_host(self.ptr as *mut _);
        }
    }
}

impl Gpu {
    /// `bytes` of page-locked host memory.
    pub fn alloc_pinned(self: &Arc<Self>, bytes: usize) -> Result<PinnedBuffer> {
        self.ctx.bind_to_thread().map_err(drv)?;
        // SAFETY: a plain allocation; freed in Drop.
        let ptr = unsafe { cudarc::driver::result::malloc_host(bytes.max(16), 0) }
            .map_err(|e| CudaError::Driver(format!("allocating {bytes} pinned bytes: {e}")))?;
        Ok(PinnedBuffer {
            ptr: ptr as *mut u8,
            bytes,
            gpu: self.clone(),
        })
    }

    /// Queues a copy of `bytes` bytes from `src` (at byte `offset`) to `dst`; `src` must not
    /// change until the stream has passed this point (e.g. the next [`Gpu::sync`]).
    pub fn upload_async(
        &self,
        src: &PinnedBuffer,
        offset: usize,
        dst: DevPtr,
        bytes: usize,
    ) -> Result<()> {
        assert!(
            offset + bytes <= src.bytes,
            "upload past the end of a pinned buffer"
        );
        if bytes == 0 {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(drv)?;
        // SAFETY: the range lies inside `src`; `dst` is a live device range (caller).
        unsafe {
            cudarc::driver::result::memcpy_htod_async(
                dst.0,
                std::slice::from_raw_parts(src.ptr.add(offset), bytes),
                self.stream.cu_stream(),
            )
            .map_err(drv)
        }
    }

    /// Copies `bytes` bytes at `src` into `dst` and waits for it.
    pub fn download(&self, src: DevPtr, dst: &mut PinnedBuffer, bytes: usize) -> Result<()> {
        assert!(
            bytes <= dst.bytes,
            "download past the end of a pinned buffer"
        );
        self.ctx.bind_to_thread().map_err(drv)?;
        // SAFETY: as above.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(
                std::slice::from_raw_parts_mut(dst.ptr, bytes),
                src.0,
                self.stream.cu_stream(),
            )
            .map_err(drv)?;
        }
        self.sync()
    }
}

/// A block of device memory (freed on drop).
pub struct DeviceBuffer {
    #[allow(dead_code)]
    slice: CudaSlice<u8>,
    ptr: u64,
    bytes: usize,
    gpu: Arc<Gpu>,
}

impl DeviceBuffer {
    /// The address of the first byte.
    pub fn ptr(&self) -> DevPtr {
        DevPtr(self.ptr)
    }

    /// The address of the `i`-th f32 (or other 4-byte element).
    pub fn f32_at(&self, i: usize) -> DevPtr {
        assert!(
            i * 4 <= self.bytes,
            "offset past the end of a device buffer"
        );
        DevPtr(self.ptr + 4 * i as u64)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.gpu.allocated.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A device address inside a [`DeviceBuffer`] (or null). Ops take these; the caller keeps
/// the buffers alive and sizes the ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DevPtr(pub(crate) u64);

impl DevPtr {
    pub const NULL: DevPtr = DevPtr(0);

    /// `self` advanced by `n` f32 elements.
    pub fn add_f32(self, n: usize) -> DevPtr {
        DevPtr(self.0 + 4 * n as u64)
    }

    /// `self` advanced by `n` bf16 elements.
    pub fn add_bf16(self, n: usize) -> DevPtr {
        DevPtr(self.0 + 2 * n as u64)
    }

    pub fn is_null(self) -> bool {
        self.0 == 0
    }

    /// The device address (for tables of pointers the kernels read).
    pub fn addr(self) -> u64 {
        self.0
    }
}

/// The directory where compiled kernels are kept.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("GEMMA3N_CACHE_DIR") {
        return Some(PathBuf::from(d).join("cuda"));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("gemma3n").join("cuda"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/gemma3n/cuda"))
}

/// The whole kernel source (common helpers first).
pub fn kernel_source() -> String {
    let mut s = String::new();
    for (name, src) in SOURCES {
        s.push_str(&format!("// ---- {name}\n"));
        s.push_str(src);
        s.push('\n');
    }
    s
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// NVRTC options for compute capability `arch`. `GEMMA3N_CUDA_DEFINES` adds macro
/// definitions (`NAME=VALUE`, whitespace-separated) for trying kernel variants without a
/// rebuild; they are part of the cache key.
fn compile_options(arch: (i32, i32)) -> CompileOptions {
    let mut options = vec![
        format!("--gpu-architecture=compute_{}{}", arch.0, arch.1),
        "--std=c++17".into(),
    ];
    if let Ok(defs) = std::env::var("GEMMA3N_CUDA_DEFINES") {
        options.extend(defs.split_whitespace().map(|d| format!("-D{d}")));
    }
    CompileOptions {
        options,
        prec_div: Some(true),
        prec_sqrt: Some(true),
        ..Default::default()
    }
}

/// Compiles the kernels to PTX for `arch` (no GPU needed: NVRTC alone).
pub fn compile_kernels(arch: (i32, i32)) -> Result<String> {
    // SAFETY: only tries to open the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc);
    }
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(kernel_source(), compile_options(arch))
        .map_err(|e| CudaError::Compile(format!("{e:?}")))?;
    Ok(ptx.to_src())
}

/// The kernels' PTX for `arch`, from the disk cache or freshly compiled (then cached).
fn kernels_ptx(arch: (i32, i32)) -> Result<Ptx> {
    let src = kernel_source();
    let key = fnv1a(format!("{src}{:?}", compile_options(arch).options).as_bytes());
    let file =
        cache_dir().map(|d| d.join(format!("kernels-sm{}{}-{key:016x}.ptx", arch.0, arch.1)));
    if let Some(f) = &file {
        if let Ok(text) = std::fs::read_to_string(f) {
            return Ok(Ptx::from_src(text));
        }
    }
    let ptx = compile_kernels(arch)?;
    if let Some(f) = &file {
        // A cache that cannot be written only costs a recompile next time.
        if let Some(dir) = f.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &ptx).is_ok() {
            let _ = std::fs::rename(&tmp, f);
        }
    }
    Ok(Ptx::from_src(ptx))
}
