//! Byte storage behind weights: a memory-mapped file or an owned buffer.

use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::Mmap;

/// Bytes of owned buffers allocated so far in this process (weights built in memory or
/// copied; mmap'd weights are not counted). Lets tests prove that an operation allocates
/// no weight memory.
static OWNED_BYTES_ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// Total bytes of [`AlignedBytes`] allocated by this process so far.
pub fn owned_bytes_allocated() -> usize {
    OWNED_BYTES_ALLOCATED.load(Ordering::Relaxed)
}

static READ_FILES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`Storage::open_file`] reads files into owned memory (`true`) or maps them
/// (`false`, the default). Process-wide: a command-line setting.
pub fn set_read_files(read: bool) {
    READ_FILES.store(read, Ordering::Relaxed);
}

/// Bytes that weights point into. Owned buffers are 64-byte aligned.
pub enum Storage {
    Mmap(Mmap),
    Owned(AlignedBytes),
}

impl Storage {
    /// The bytes of the file at `path`: memory-mapped, or read into an owned buffer (on huge
    /// pages where available) after [`set_read_files`]`(true)`.
    pub fn open_file(path: &std::path::Path) -> std::io::Result<Storage> {
        let file = std::fs::File::open(path)?;
        if READ_FILES.load(Ordering::Relaxed) {
            use std::io::Read;
            let len = file.metadata()?.len() as usize;
            let mut b = AlignedBytes::zeroed(len);
            let mut f = std::io::BufReader::with_capacity(1 << 20, file);
            f.read_exact(b.as_mut_slice())?;
            return Ok(Storage::Owned(b));
        }
        // SAFETY: the file is opened read-only and not modified while mapped (weights are
        // read-only files; a concurrent writer is outside our contract).
        Ok(Storage::Mmap(unsafe { memmap2::Mmap::map(&file) }?))
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => &m[..],
            Storage::Owned(b) => b.as_slice(),
        }
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Tells the kernel that this process no longer reads bytes `start..start + len` of a
    /// memory-mapped file: the pages wholly inside the range leave the process's resident
    /// set (the page cache keeps them; a later read maps them again, with the same bytes).
    /// For weights copied into another layout. Nothing for owned buffers.
    pub fn release(&self, start: usize, len: usize) {
        #[cfg(target_os = "linux")]
        if let Storage::Mmap(m) = self {
            let end = start.saturating_add(len).min(m.len());
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
            let base = m.as_ptr() as usize;
            let s = (base + start).div_ceil(page) * page;
            let e = (base + end) / page * page;
            if e > s {
                // SAFETY: the range lies inside this live, read-only file mapping;
                // MADV_DONTNEED drops its page-table entries and later reads fault the
                // unchanged file pages back in.
                unsafe { libc::madvise(s as *mut libc::c_void, e - s, libc::MADV_DONTNEED) };
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (start, len);
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A heap buffer of bytes aligned to 64 bytes (cache line / any SIMD load).
pub struct AlignedBytes {
    words: Vec<Line>,
    len: usize,
}

/// 64 bytes on a 64-byte boundary: the element type that aligns [`AlignedBytes`] (a
/// `Vec<[u64; 8]>` is only 8-byte aligned; large allocations came back 16 bytes past a page).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u64; 8]);

impl AlignedBytes {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        OWNED_BYTES_ALLOCATED.fetch_add(len, Ordering::Relaxed);
        let words = vec![Line([0u64; 8]); len.div_ceil(64)];
        // Large buffers (weights) on transparent huge pages where the kernel offers them:
        // decode streams every weight per token, and 4 KiB pages cost a TLB miss per page and
        // stop the hardware prefetchers at every page boundary.
        if len >= HUGE_PAGE {
            advise_huge_pages(words.as_ptr() as *const u8, len);
        }
        AlignedBytes { words, len }
    }

    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut b = Self::zeroed(bytes.len());
        b.as_mut_slice().copy_from_slice(bytes);
        b
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.len) }
    }
}

/// Asks the kernel to back the 2 MiB-aligned part of a large buffer with transparent huge
/// pages before it is first touched.
const HUGE_PAGE: usize = 2 << 20;

fn advise_huge_pages(p: *const u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        let start = (p as usize).div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let end = (p as usize + len) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: the range lies inside this live allocation; MADV_HUGEPAGE changes only
            // how the kernel backs it.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_bytes_start_on_64_byte_boundaries() {
        // Small, odd and large (huge-page advised, mmap-backed in the allocator) sizes.
        for len in [1, 63, 64, 65, 4097, 3 << 20, (5 << 20) + 7] {
            let b = AlignedBytes::zeroed(len);
            assert_eq!(b.as_slice().len(), len);
            assert_eq!(b.as_slice().as_ptr() as usize % 64, 0, "{len} bytes");
            assert!(b.as_slice().iter().all(|&v| v == 0));
        }
    }
}
