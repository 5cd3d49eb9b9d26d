//! Memory read bandwidth of this machine, the yardstick of the (bandwidth-bound) decode path.

use rayon::prelude::*;

/// Timed passes over the buffer; the best one is reported.
const PASSES: usize = 5;

/// Measures the memory read bandwidth in GB/s (1e9 bytes per second) by summing a buffer of
/// `bytes` bytes (choose it well above the last-level cache, e.g. 512 MiB) with `threads`
/// threads (0: the size of the current rayon pool). Returns the best of several passes, or 0.0
/// if the measurement could not run (e.g. the thread pool could not be built).
pub fn measure_read_gb_s(bytes: usize, threads: usize) -> f64 {
    let words = (bytes / 8).max(1024);
    // Writing every element faults the pages in, so the timed passes only read.
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = if threads == 0 {
        rayon::current_num_threads()
    } else {
        threads
    };
    let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(p) => p,
        Err(_) => return 0.0,
    };
    let per_thread = words.div_ceil(threads);
    let mut best = 0.0f64;
    pool.install(|| {
        for _ in 0..PASSES {
            let start = std::time::Instant::now();
            let s: u64 = buf
                .par_chunks(per_thread)
                .map(sum_words)
                .reduce(|| 0, u64::wrapping_add);
            let secs = start.elapsed().as_secs_f64();
            std::hint::black_box(s);
            if secs > 0.0 {
                best = best.max((words * 8) as f64 / secs / 1e9);
            }
        }
    });
    best
}

/// Wrapping sum of `v`, reading it at full vector width where the CPU allows.
fn sum_words(v: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected just above.
        return unsafe { sum_words_avx2(v) };
    }
    sum_words_scalar(v)
}

/// Portable sum with four independent accumulators (compilers vectorise it).
fn sum_words_scalar(v: &[u64]) -> u64 {
    let mut acc = [0u64; 4];
    let mut chunks = v.chunks_exact(4);
    for c in &mut chunks {
        for l in 0..4 {
            acc[l] = acc[l].wrapping_add(c[l]);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |a, &b| a.wrapping_add(b));
    acc.iter().fold(tail, |a, &b| a.wrapping_add(b))
}

/// AVX2 sum, 128 bytes per step into four accumulators.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_words_avx2(v: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let n16 = v.len() & !15;
    let p = v.as_ptr() as *const __m256i;
    let mut a = [_mm256_setzero_si256(); 4];
    let mut i = 0;
    while i < n16 {
        // SAFETY: words i..i+16 are in bounds (i + 16 <= n16 <= len); unaligned loads.
        let q = p.add(i / 4);
        for (l, acc) in a.iter_mut().enumerate() {
            *acc = _mm256_add_epi64(*acc, _mm256_loadu_si256(q.add(l)));
        }
        i += 16;
    }
    let s = _mm256_add_epi64(_mm256_add_epi64(a[0], a[1]), _mm256_add_epi64(a[2], a[3]));
    let mut lanes = [0u64; 4];
    // SAFETY: `lanes` is 32 bytes; unaligned store.
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, s);
    let head = lanes.iter().fold(0u64, |x, &y| x.wrapping_add(y));
    head.wrapping_add(sum_words_scalar(&v[n16..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_agree_and_bandwidth_is_positive() {
        let v: Vec<u64> = (0..1000u64).map(|i| i * 7919).collect();
        let expect = v.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        assert_eq!(sum_words(&v), expect);
        assert_eq!(sum_words_scalar(&v), expect);
        assert!(measure_read_gb_s(1 << 20, 1) > 0.0);
    }
}
