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

/// Bytes that weights point into. Owned buffers are 64-byte aligned.
pub enum Storage {
    Mmap(Mmap),
    Owned(AlignedBytes),
}

impl Storage {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => &m[..],
            Storage::Owned(b) => b.as_slice(),
        }
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A heap buffer of bytes aligned to 64 bytes (cache line / any SIMD load).
pub struct AlignedBytes {
    words: Vec<[u64; 8]>,
    len: usize,
}

impl AlignedBytes {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        OWNED_BYTES_ALLOCATED.fetch_add(len, Ordering::Relaxed);
        AlignedBytes {
            words: vec![[0u64; 8]; len.div_ceil(64)],
            len,
        }
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
