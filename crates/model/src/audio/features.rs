//! Gemma 3n log-mel features, a port of transformers' `Gemma3nAudioFeatureExtractor` with its
//! default settings (spec/multimodal.md §3).
//!
//! Per waveform of N samples (after padding; see [`log_mel`] and [`log_mel_batch`]):
//! `F = floor((N − 513)/160) + 1` frames (0 when N < 513) of 513 samples each; HTK preemphasis
//! over the first 512 of them (`y[0] = 0.03·x[0]`, `y[j] = x[j] − 0.97·x[j−1]`); periodic Hann
//! window of 512; zero-padded 1024-point real FFT; magnitude; 128 HTK-mel triangular filters
//! from 125 to 7600 Hz without area normalisation; `ln(max(mel, 1e-5))`.
//!
//! Precision follows what transformers 5.24 does with NumPy 2.4.6: preemphasis and window are
//! computed in `f32` (with NumPy's own float32 window bits); the real FFT of the float32 frame
//! returns complex64, but NumPy computes it in double and rounds (checked: bit-identical to the
//! float64 rfft cast to complex64), so we run an f64 FFT and round re/im to `f32`; the magnitude
//! is an `f32` `hypot`, the filterbank is built in `f64`, the filterbank product and the log are
//! in `f64`, and the result is rounded to `f32`.
//!
//! The HF extractor truncates input beyond 480 000 samples (30 s). These functions take what they
//! are given; callers split long audio into windows of at most 30 s with [`windows`] and extract
//! each window as its own clip.

use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use realfft::{RealFftPlanner, RealToComplex};

/// Mel bins per frame.
pub const N_MELS: usize = 128;
/// Hop between frames, in samples (10 ms).
pub const HOP: usize = 160;
/// Frame length (32 ms); each frame reads `FRAME + 1` samples.
pub const FRAME: usize = 512;
/// FFT size (512 doubled by `fft_overdrive`).
pub const FFT: usize = 1024;
/// Number of FFT bins.
pub const N_BINS: usize = FFT / 2 + 1;
/// Batches are padded up to a multiple of this many samples.
pub const PAD_MULTIPLE: usize = 128;
/// The longest clip the HF extractor keeps (30 s at 16 kHz).
pub const MAX_SAMPLES: usize = 480_000;
/// `mel_floor`.
pub const MEL_FLOOR: f64 = 1e-5;

const PREEMPHASIS: f64 = 0.97;
const F_MIN: f64 = 125.0;
const F_MAX: f64 = 7600.0;
const SAMPLE_RATE: f64 = 16_000.0;

/// Log-mel features of one clip.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Number of frames F.
    pub frames: usize,
    /// Row-major `frames x 128` natural-log mel energies.
    pub mel: Vec<f32>,
    /// `frames` entries: true where the frame's first sample is a real (unpadded) sample.
    pub mask: Vec<bool>,
}

impl Features {
    /// The 128 mel values of frame `k`.
    pub fn frame(&self, k: usize) -> &[f32] {
        &self.mel[k * N_MELS..(k + 1) * N_MELS]
    }
    /// Number of valid (unmasked) frames.
    pub fn valid_frames(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }
}

/// Number of frames for a waveform of `n` samples *after* padding.
pub fn num_frames(n: usize) -> usize {
    if n < FRAME + 1 {
        0
    } else {
        (n - (FRAME + 1)) / HOP + 1
    }
}

/// Padded length of a batch whose longest clip has `n` samples.
pub fn padded_len(n: usize) -> usize {
    n.div_ceil(PAD_MULTIPLE) * PAD_MULTIPLE
}

/// Splits audio into consecutive windows of at most 480 000 samples (30 s at 16 kHz); the last
/// window holds the remainder. Each window is meant to be passed to [`log_mel`] as its own clip
/// (the HF extractor would silently drop everything after the first 30 s). Empty input gives no
/// windows.
pub fn windows(samples: &[f32]) -> Vec<&[f32]> {
    samples.chunks(MAX_SAMPLES).collect()
}

struct Tables {
    window: Vec<f32>,
    /// For each mel filter: first non-zero bin and its weights.
    filters: Vec<(usize, Vec<f64>)>,
    fft: Arc<dyn RealToComplex<f64>>,
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| Tables {
        window: HANN_NUMPY_F32.iter().map(|&b| f32::from_bits(b)).collect(),
        filters: mel_filters(),
        fft: RealFftPlanner::<f64>::new().plan_fft_forward(FFT),
    })
}

/// The periodic Hann window exactly as the extractor builds it in float32:
/// `0.5 * (1 - np.cos(np.float32(2*pi) * arange(512, f32) / 512))`. NumPy's float32 `cos` is its
/// own SIMD routine, which differs from a correctly rounded cosine by one ulp in 37 of the 512
/// entries; since the low-energy mel bins are sensitive to such differences (they are swamped by
/// leakage of strong bins), the bit patterns NumPy 2.4 produces are stored here. The unit test
/// `window_matches_formula` checks them against the formula (within one ulp of the cosine).
#[rustfmt::skip]
const HANN_NUMPY_F32: [u32; FRAME] = [
    0x00000000, 0x381de000, 0x391de800, 0x39b1a000, 0x3a1de200, 0x3a76aa00, 0x3ab19300, 0x3af1a800,
    0x3b1dc980, 0x3b47a800, 0x3b766e00, 0x3b950d00, 0x3bb15500, 0x3bd00dc0, 0x3bf13600, 0x3c0a6660,
    0x3c1d6840, 0x3c319fc0, 0x3c470c60, 0x3c5dad00, 0x3c758100, 0x3c8743b0, 0x3c945f90, 0x3ca213a0,
    0x3cb05f50, 0x3cbf4230, 0x3ccebb90, 0x3cdecae0, 0x3cef6f80, 0x3d005468, 0x3d093b10, 0x3d126b68,
    0x3d1be510, 0x3d25a7a0, 0x3d2fb2d0, 0x3d3a0620, 0x3d44a140, 0x3d4f83c8, 0x3d5aad38, 0x3d661d30,
    0x3d71d348, 0x3d7dcef8, 0x3d8507ec, 0x3d8b4ab4, 0x3d91af98, 0x3d983658, 0x3d9edeb4, 0x3da5a86c,
    0x3dac933c, 0x3db39ee0, 0x3dbacb0c, 0x3dc21784, 0x3dc983f8, 0x3dd11020, 0x3dd8bbb8, 0x3de0866c,
    0x3de86ff4, 0x3df07800, 0x3df89e3c, 0x3e007132, 0x3e04a20e, 0x3e08e18a, 0x3e0d2f7c, 0x3e118bbc,
    0x3e15f61a, 0x3e1a6e6e, 0x3e1ef48c, 0x3e238844, 0x3e28296e, 0x3e2cd7d8, 0x3e319356, 0x3e365bb8,
    0x3e3b30ce, 0x3e40126c, 0x3e45005e, 0x3e49fa76, 0x3e4f0082, 0x3e54124e, 0x3e592fac, 0x3e5e5868,
    0x3e638c4e, 0x3e68cb2a, 0x3e6e14ca, 0x3e7368fc, 0x3e78c788, 0x3e7e3038, 0x3e81d16d, 0x3e848f9c,
    0x3e87528c, 0x3e8a1a22, 0x3e8ce646, 0x3e8fb6da, 0x3e928bc0, 0x3e9564e0, 0x3e98421c, 0x3e9b2358,
    0x3e9e0875, 0x3ea0f15c, 0x3ea3ddec, 0x3ea6ce08, 0x3ea9c196, 0x3eacb878, 0x3eafb28f, 0x3eb2afbd,
    0x3eb5afe8, 0x3eb8b2f0, 0x3ebbb8b6, 0x3ebec120, 0x3ec1cc0e, 0x3ec4d960, 0x3ec7e8fc, 0x3ecafac0,
    0x3ece0e91, 0x3ed1244c, 0x3ed43bd8, 0x3ed75514, 0x3eda6fdf, 0x3edd8c1f, 0x3ee0a9b3, 0x3ee3c87c,
    0x3ee6e859, 0x3eea0931, 0x3eed2ae1, 0x3ef04d49, 0x3ef3704d, 0x3ef693ce, 0x3ef9b7ac, 0x3efcdbc6,
    0x3f000000, 0x3f01921e, 0x3f03242b, 0x3f04b61a, 0x3f0647da, 0x3f07d95c, 0x3f096a90, 0x3f0afb68,
    0x3f0c8bd4, 0x3f0e1bc3, 0x3f0fab27, 0x3f1139f1, 0x3f12c811, 0x3f145577, 0x3f15e215, 0x3f176ddb,
    0x3f18f8b8, 0x3f1a82a0, 0x3f1c0b83, 0x3f1d9351, 0x3f1f19fa, 0x3f209f70, 0x3f2223a6, 0x3f23a688,
    0x3f25280c, 0x3f26a822, 0x3f2826b9, 0x3f29a3c5, 0x3f2b1f35, 0x3f2c98fc, 0x3f2e110a, 0x3f2f8753,
    0x3f30fbc6, 0x3f326e55, 0x3f33def3, 0x3f354d90, 0x3f36ba20, 0x3f382494, 0x3f398cde, 0x3f3af2ef,
    0x3f3c56bb, 0x3f3db834, 0x3f3f174a, 0x3f4073f2, 0x3f41ce1e, 0x3f4325c2, 0x3f447ace, 0x3f45cd36,
    0x3f471cee, 0x3f4869e6, 0x3f49b416, 0x3f4afb6d, 0x3f4c3fe0, 0x3f4d8164, 0x3f4ebfea, 0x3f4ffb66,
    0x3f5133cc, 0x3f526912, 0x3f539b2b, 0x3f54ca0b, 0x3f55f5a6, 0x3f571df0, 0x3f5842de, 0x3f596464,
    0x3f5a827a, 0x3f5b9d12, 0x3f5cb422, 0x3f5dc79e, 0x3f5ed77d, 0x3f5fe3b4, 0x3f60ec38, 0x3f61f100,
    0x3f62f202, 0x3f63ef33, 0x3f64e88a, 0x3f65ddfc, 0x3f66cf82, 0x3f67bd10, 0x3f68a69e, 0x3f698c24,
    0x3f6a6d99, 0x3f6b4af3, 0x3f6c242a, 0x3f6cf936, 0x3f6dca0d, 0x3f6e96aa, 0x3f6f5f03, 0x3f702311,
    0x3f70e2cc, 0x3f719e2e, 0x3f72552c, 0x3f7307c4, 0x3f73b5ec, 0x3f745f9e, 0x3f7504d4, 0x3f75a586,
    0x3f7641b0, 0x3f76d94a, 0x3f776c4f, 0x3f77faba, 0x3f788484, 0x3f7909aa, 0x3f798a24, 0x3f7a05ef,
    0x3f7a7d06, 0x3f7aef63, 0x3f7b5d04, 0x3f7bc5e2, 0x3f7c29fc, 0x3f7c894c, 0x3f7ce3cf, 0x3f7d3981,
    0x3f7d8a60, 0x3f7dd666, 0x3f7e1d94, 0x3f7e5fe4, 0x3f7e9d56, 0x3f7ed5e6, 0x3f7f0992, 0x3f7f3858,
    0x3f7f6236, 0x3f7f872c, 0x3f7fa737, 0x3f7fc256, 0x3f7fd888, 0x3f7fe9cc, 0x3f7ff622, 0x3f7ffd88,
    0x3f800000, 0x3f7ffd88, 0x3f7ff622, 0x3f7fe9cc, 0x3f7fd888, 0x3f7fc256, 0x3f7fa736, 0x3f7f872c,
    0x3f7f6236, 0x3f7f3858, 0x3f7f0992, 0x3f7ed5e6, 0x3f7e9d56, 0x3f7e5fe4, 0x3f7e1d94, 0x3f7dd666,
    0x3f7d8a5f, 0x3f7d3980, 0x3f7ce3ce, 0x3f7c894c, 0x3f7c29fc, 0x3f7bc5e2, 0x3f7b5d04, 0x3f7aef62,
    0x3f7a7d05, 0x3f7a05ee, 0x3f798a24, 0x3f7909a9, 0x3f788484, 0x3f77fab9, 0x3f776c4e, 0x3f76d949,
    0x3f7641af, 0x3f75a586, 0x3f7504d3, 0x3f745f9e, 0x3f73b5ec, 0x3f7307c3, 0x3f72552c, 0x3f719e2d,
    0x3f70e2cc, 0x3f702310, 0x3f6f5f02, 0x3f6e96a9, 0x3f6dca0c, 0x3f6cf935, 0x3f6c242a, 0x3f6b4af2,
    0x3f6a6d98, 0x3f698c24, 0x3f68a69e, 0x3f67bd0f, 0x3f66cf82, 0x3f65ddfc, 0x3f64e889, 0x3f63ef32,
    0x3f62f201, 0x3f61f100, 0x3f60ec38, 0x3f5fe3b4, 0x3f5ed77c, 0x3f5dc79e, 0x3f5cb420, 0x3f5b9d11,
    0x3f5a8278, 0x3f596464, 0x3f5842de, 0x3f571def, 0x3f55f5a4, 0x3f54ca0a, 0x3f539b2c, 0x3f526913,
    0x3f5133cd, 0x3f4ffb66, 0x3f4ebfe8, 0x3f4d8162, 0x3f4c3fe0, 0x3f4afb6c, 0x3f49b414, 0x3f4869e5,
    0x3f471ceb, 0x3f45cd34, 0x3f447acb, 0x3f4325bf, 0x3f41ce1f, 0x3f4073f2, 0x3f3f174a, 0x3f3db833,
    0x3f3c56ba, 0x3f3af2ee, 0x3f398cdc, 0x3f382492, 0x3f36ba1f, 0x3f354d8f, 0x3f33def1, 0x3f326e52,
    0x3f30fbc3, 0x3f2f8753, 0x3f2e110b, 0x3f2c98fc, 0x3f2b1f35, 0x3f29a3c4, 0x3f2826b9, 0x3f26a821,
    0x3f25280c, 0x3f23a687, 0x3f2223a3, 0x3f209f6e, 0x3f1f19f7, 0x3f1d934d, 0x3f1c0b80, 0x3f1a82a1,
    0x3f18f8b9, 0x3f176dda, 0x3f15e214, 0x3f145576, 0x3f12c810, 0x3f1139f0, 0x3f0fab26, 0x3f0e1bc1,
    0x3f0c8bd2, 0x3f0afb66, 0x3f096a8e, 0x3f07d959, 0x3f0647d7, 0x3f04b61a, 0x3f03242b, 0x3f01921d,
    0x3f000000, 0x3efcdbc5, 0x3ef9b7a9, 0x3ef693cb, 0x3ef3704a, 0x3ef04d46, 0x3eed2adc, 0x3eea092c,
    0x3ee6e854, 0x3ee3c875, 0x3ee0a9ac, 0x3edd8c20, 0x3eda6fe0, 0x3ed75513, 0x3ed43bd7, 0x3ed1244b,
    0x3ece0e8e, 0x3ecafabe, 0x3ec7e8f8, 0x3ec4d95d, 0x3ec1cc09, 0x3ebec11c, 0x3ebbb8b2, 0x3eb8b2ea,
    0x3eb5afe2, 0x3eb2afbe, 0x3eafb28e, 0x3eacb877, 0x3ea9c196, 0x3ea6ce08, 0x3ea3ddea, 0x3ea0f15a,
    0x3e9e0873, 0x3e9b2354, 0x3e984218, 0x3e9564dc, 0x3e928bbc, 0x3e8fb6d4, 0x3e8ce640, 0x3e8a1a24,
    0x3e87528c, 0x3e848f9a, 0x3e81d16c, 0x3e7e3036, 0x3e78c784, 0x3e7368f8, 0x3e6e14c6, 0x3e68cb24,
    0x3e638c46, 0x3e5e585e, 0x3e592fa2, 0x3e541244, 0x3e4f0082, 0x3e49fa76, 0x3e45005e, 0x3e40126a,
    0x3e3b30cc, 0x3e365bb4, 0x3e319352, 0x3e2cd7d4, 0x3e282968, 0x3e23883e, 0x3e1ef484, 0x3e1a6e66,
    0x3e15f612, 0x3e118bb2, 0x3e0d2f7e, 0x3e08e18a, 0x3e04a20e, 0x3e007130, 0x3df89e3c, 0x3df077f8,
    0x3de86fec, 0x3de08664, 0x3dd8bbac, 0x3dd11018, 0x3dc983ec, 0x3dc21778, 0x3dbacafc, 0x3db39ed0,
    0x3dac933c, 0x3da5a86c, 0x3d9edeb4, 0x3d983658, 0x3d91af94, 0x3d8b4ab0, 0x3d8507e4, 0x3d7dcee8,
    0x3d71d338, 0x3d661d20, 0x3d5aad28, 0x3d4f83b0, 0x3d44a130, 0x3d3a0610, 0x3d2fb2d0, 0x3d25a7a0,
    0x3d1be508, 0x3d126b68, 0x3d093b10, 0x3d005460, 0x3cef6f70, 0x3cdecad0, 0x3ccebb70, 0x3cbf4210,
    0x3cb05f40, 0x3ca21380, 0x3c945f70, 0x3c874390, 0x3c758100, 0x3c5dad00, 0x3c470c60, 0x3c319fc0,
    0x3c1d6820, 0x3c0a6640, 0x3bf13600, 0x3bd00d80, 0x3bb154c0, 0x3b950d00, 0x3b766e00, 0x3b47a780,
    0x3b1dc900, 0x3af1a800, 0x3ab19300, 0x3a76aa00, 0x3a1de200, 0x39b1a000, 0x391de800, 0x381de000,
];

/// The 513 x 128 HTK filterbank of `create_fb_matrix` (f64), stored sparsely per filter.
fn mel_filters() -> Vec<(usize, Vec<f64>)> {
    let mel = |f: f64| 2595.0 * (1.0 + f / 700.0).log10();
    let (m_min, m_max) = (mel(F_MIN), mel(F_MAX));
    let n_pts = N_MELS + 2;
    // np.linspace: start + i*step, last point exactly stop.
    let step = (m_max - m_min) / (n_pts - 1) as f64;
    let f_pts: Vec<f64> = (0..n_pts)
        .map(|i| {
            let m = if i == n_pts - 1 {
                m_max
            } else {
                m_min + i as f64 * step
            };
            700.0 * (10f64.powf(m / 2595.0) - 1.0)
        })
        .collect();
    let bin_hz = (SAMPLE_RATE / FFT as f64) as f32; // all_freqs is float32
    (0..N_MELS)
        .map(|m| {
            let w: Vec<f64> = (0..N_BINS)
                .map(|b| {
                    let f = (b as f32 * bin_hz) as f64;
                    let down = (-(f_pts[m] - f)) / (f_pts[m + 1] - f_pts[m]);
                    let up = (f_pts[m + 2] - f) / (f_pts[m + 2] - f_pts[m + 1]);
                    0f64.max(down.min(up))
                })
                .collect();
            let first = w.iter().position(|&v| v > 0.0).unwrap_or(0);
            let last = w.iter().rposition(|&v| v > 0.0).map_or(0, |p| p + 1);
            let last = last.max(first);
            (first, w[first..last].to_vec())
        })
        .collect()
}

/// Log-mel of frames starting at `hop * k` of `s` (already padded), `frames` of them.
fn extract(s: &[f32], frames: usize) -> Vec<f32> {
    let t = tables();
    let mut mel = vec![0f32; frames * N_MELS];
    let coef = PREEMPHASIS as f32;
    let first_coef = (1.0 - PREEMPHASIS) as f32;
    mel.par_chunks_mut(N_MELS).enumerate().for_each_init(
        || {
            (
                t.fft.make_input_vec(),
                t.fft.make_output_vec(),
                t.fft.make_scratch_vec(),
                vec![0f32; N_BINS],
            )
        },
        |(inp, out, scratch, mag), (k, row)| {
            let x = &s[HOP * k..HOP * k + FRAME + 1];
            // f32 preemphasis and window, as NumPy does for float32 frames.
            inp[0] = ((x[0] * first_coef) * t.window[0]) as f64;
            for j in 1..FRAME {
                inp[j] = ((x[j] - coef * x[j - 1]) * t.window[j]) as f64;
            }
            inp[FRAME..].iter_mut().for_each(|v| *v = 0.0);
            // Lengths are fixed by construction, so this cannot fail.
            if t.fft.process_with_scratch(inp, out, scratch).is_err() {
                row.iter_mut().for_each(|v| *v = MEL_FLOOR.ln() as f32);
                return;
            }
            // NumPy 2.4 returns complex64 for float32 input, but computes it in double precision
            // (its rfft equals the float64 rfft rounded to complex64, checked bit for bit); then
            // np.abs is a float32 hypot.
            for (m, c) in mag.iter_mut().zip(out.iter()) {
                *m = (c.re as f32).hypot(c.im as f32);
            }
            for (r, (first, w)) in row.iter_mut().zip(t.filters.iter()) {
                let acc: f64 = w
                    .iter()
                    .zip(&mag[*first..])
                    .map(|(&wv, &mv)| wv * mv as f64)
                    .sum();
                *r = acc.max(MEL_FLOOR).ln() as f32;
            }
        },
    );
    mel
}

/// Log-mel features of audio arriving in pieces (a microphone, a network stream): each frame
/// is emitted as soon as its 513 samples are there, and [`LogMelStream::finish`] pads the end
/// exactly as [`log_mel`] does, so the frames of all calls together equal [`log_mel`] of the
/// whole stream bit for bit. Only the samples of frames not yet emitted are kept.
#[derive(Debug, Default)]
pub struct LogMelStream {
    /// Samples from absolute index `base` on.
    buf: Vec<f32>,
    base: usize,
    /// Next frame to emit.
    next: usize,
    /// Samples seen.
    total: usize,
    finished: bool,
}

impl LogMelStream {
    pub fn new() -> LogMelStream {
        LogMelStream::default()
    }

    /// Adds samples; returns the frames they complete (`frames x 128` and the mask).
    pub fn push(&mut self, samples: &[f32]) -> (Vec<f32>, Vec<bool>) {
        assert!(!self.finished, "LogMelStream::push after finish");
        self.total += samples.len();
        self.buf.extend_from_slice(samples);
        self.emit(num_frames(self.total))
    }

    /// Ends the stream: zeros up to a multiple of 128 samples, then the last frames.
    pub fn finish(&mut self) -> (Vec<f32>, Vec<bool>) {
        if self.finished {
            return (Vec::new(), Vec::new());
        }
        self.finished = true;
        let padded = padded_len(self.total);
        self.buf.resize(padded - self.base, 0.0);
        self.emit(num_frames(padded))
    }

    fn emit(&mut self, upto: usize) -> (Vec<f32>, Vec<bool>) {
        if upto <= self.next {
            return (Vec::new(), Vec::new());
        }
        let n = upto - self.next;
        let start = HOP * self.next - self.base;
        let mel = extract(&self.buf[start..], n);
        let mask = (self.next..upto).map(|k| HOP * k < self.total).collect();
        self.next = upto;
        // Samples before the next frame's start are no longer needed.
        let keep_from = (HOP * self.next).min(self.base + self.buf.len());
        self.buf.drain(..keep_from - self.base);
        self.base = keep_from;
        (mel, mask)
    }
}

/// Features of ONE clip processed alone (a batch of one): right-padded with zeros to a multiple
/// of 128 samples; the mask marks frames whose first sample is a real sample. No truncation
/// (see [`windows`]).
pub fn log_mel(samples: &[f32]) -> Features {
    log_mel_batch(&[samples]).pop().unwrap_or(Features {
        frames: 0,
        mel: Vec::new(),
        mask: Vec::new(),
    })
}

/// Features of a padded batch, as the HF extractor computes them: every clip is right-padded
/// with zeros to the longest clip, then to a multiple of 128 samples; every clip gets the same
/// number of frames F; `mask[k]` is true iff sample `160·k` is a real sample of that clip
/// (so a short clip in a batch can have a few more valid frames than alone).
pub fn log_mel_batch(clips: &[&[f32]]) -> Vec<Features> {
    let longest = clips.iter().map(|c| c.len()).max().unwrap_or(0);
    let n = padded_len(longest);
    let frames = num_frames(n);
    let mut padded = vec![0f32; n];
    clips
        .iter()
        .map(|clip| {
            padded[..clip.len()].copy_from_slice(clip);
            padded[clip.len()..].iter_mut().for_each(|v| *v = 0.0);
            let mel = extract(&padded, frames);
            let mask = (0..frames).map(|k| HOP * k < clip.len()).collect();
            Features { frames, mel, mask }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_matches_formula() {
        let two_pi = (2.0 * std::f64::consts::PI) as f32;
        for (j, &w) in tables().window.iter().enumerate() {
            let a = two_pi * j as f32 / FRAME as f32;
            let want = 0.5f32 * (1.0f32 - a.cos());
            // NumPy's cos differs from the libm one by at most 1 ulp of cos (6e-8 near 1).
            assert!((w - want).abs() <= 6e-8, "window[{j}] {w} vs {want}");
        }
    }
}
