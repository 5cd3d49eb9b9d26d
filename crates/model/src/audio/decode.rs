//! Audio decoding: any WAV / FLAC / MP3 / Ogg-Vorbis file to 16 kHz mono `f32`.
//!
//! * Container and codec are probed from the content (the file extension is ignored), using
//!   symphonia 0.6 with the `wav`, `flac`, `mp3`, `ogg`, `vorbis` and `pcm` features. WAV may hold
//!   PCM integers of 8/16/24/32 bits or IEEE floats of 32/64 bits. Samples are converted to `f32`
//!   in [-1, 1] by symphonia's sample conversion (integers divided by 2^(bits-1)).
//! * Several channels are mixed to mono by averaging the channels of each frame.
//! * Any other sample rate is converted to 16 kHz with rubato's synchronous FFT resampler
//!   (`rubato::Fft`, `FixedSync::Input`, chunks of 1024 input frames, rubato's default
//!   Blackman-Harris² anti-aliasing window with the cutoff just below the output Nyquist
//!   frequency). It is band-limited (no aliasing of content above 8 kHz), its start-up delay is
//!   trimmed by `process_all`, and it gives `ceil(n·16000/rate)` samples. It is not exactly
//!   zero-phase: a residual constant shift of a fraction of a sample remains (measured −0.18
//!   output samples ≈ 11 µs for 44.1 kHz input; irrelevant for log-mel features).
//!   Accepted input rates: 1 kHz … 768 kHz.
//! * Limit: at most [`MAX_SECONDS`] (one hour) of audio. The limit is enforced while decoding
//!   (counted in source frames), so a long file is refused without decoding all of it.
//! * Every failure is an [`AudioError`]; no input bytes can make these functions panic (symphonia
//!   is additionally run under `catch_unwind` as a safety net).

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use symphonia::core::codecs::audio::well_known::{
    CODEC_ID_FLAC, CODEC_ID_PCM_F32BE, CODEC_ID_PCM_F32LE, CODEC_ID_PCM_F64BE, CODEC_ID_PCM_F64LE,
    CODEC_ID_PCM_S16BE, CODEC_ID_PCM_S16LE, CODEC_ID_PCM_S24BE, CODEC_ID_PCM_S24LE,
    CODEC_ID_PCM_S32BE, CODEC_ID_PCM_S32LE, CODEC_ID_PCM_S8, CODEC_ID_PCM_U8,
};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;

/// The sample rate of [`Waveform`] and of the Gemma 3n feature extractor.
pub const SAMPLE_RATE: u32 = 16_000;

/// The longest audio accepted, in seconds (one hour).
pub const MAX_SECONDS: u64 = 3600;

const MIN_RATE: u32 = 1_000;
const MAX_RATE: u32 = 768_000;

/// Mono f32 samples at 16 kHz in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Waveform {
    pub samples: Vec<f32>,
}

impl Waveform {
    /// Duration in seconds.
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / SAMPLE_RATE as f64
    }
}

/// Everything that can go wrong when reading audio.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot read audio file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audio input is empty (0 bytes)")]
    Empty,
    #[error("unsupported audio format: {0} (supported: WAV, FLAC, MP3, Ogg/Vorbis)")]
    UnsupportedFormat(String),
    #[error("unsupported audio codec: {0}")]
    UnsupportedCodec(String),
    #[error("corrupt audio data: {0}")]
    Corrupt(String),
    #[error("truncated audio data: {0}")]
    Truncated(String),
    #[error("audio contains no samples")]
    NoSamples,
    #[error("audio is too long: more than the limit of {limit_s} s")]
    TooLong { limit_s: u64 },
    #[error("unsupported sample rate {0} Hz (accepted: 1000..=768000)")]
    BadSampleRate(u32),
}

/// Reads and decodes an audio file (format probed from its content).
pub fn load_audio(path: &Path) -> Result<Waveform, AudioError> {
    let unreadable = |source| AudioError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if meta.is_dir() {
        return Err(unreadable(std::io::Error::other("is a directory")));
    }
    if meta.len() == 0 {
        return Err(AudioError::Empty);
    }
    decode_source(Box::new(file))
}

/// Decodes an in-memory audio file (format probed from its content).
pub fn decode_audio_bytes(bytes: &[u8]) -> Result<Waveform, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    decode_source(Box::new(Cursor::new(bytes)))
}

fn decode_source<'s>(source: Box<dyn MediaSource + 's>) -> Result<Waveform, AudioError> {
    let (mono, rate) = match catch_unwind(AssertUnwindSafe(|| decode_mono(source))) {
        Ok(r) => r?,
        Err(_) => {
            return Err(AudioError::Corrupt(
                "the decoder failed on malformed data".into(),
            ))
        }
    };
    if mono.is_empty() {
        return Err(AudioError::NoSamples);
    }
    let samples = resample_to_16k(&mono, rate)?;
    if samples.is_empty() {
        return Err(AudioError::NoSamples);
    }
    Ok(Waveform { samples })
}

fn is_eof(e: &SymError) -> bool {
    matches!(e, SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
}

/// Decodes the default audio track to mono f32 at its own sample rate.
fn decode_mono<'s>(source: Box<dyn MediaSource + 's>) -> Result<(Vec<f32>, u32), AudioError> {
    let mss = MediaSourceStream::new(source, Default::default());
    let mut format = symphonia::default::get_probe()
        .probe(
            &Hint::new(),
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymError::Unsupported(m) => AudioError::UnsupportedFormat(m.to_string()),
            e if is_eof(&e) => AudioError::Truncated(format!("the header is incomplete ({e})")),
            e => AudioError::Corrupt(format!("cannot read the container header: {e}")),
        })?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| AudioError::UnsupportedFormat("the file has no audio track".into()))?;
    let track_id = track.id;
    let declared_frames = track.num_frames;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| AudioError::UnsupportedCodec("the track is not audio".into()))?
        .clone();
    let lossless = [
        CODEC_ID_FLAC,
        CODEC_ID_PCM_F32BE,
        CODEC_ID_PCM_F32LE,
        CODEC_ID_PCM_F64BE,
        CODEC_ID_PCM_F64LE,
        CODEC_ID_PCM_S16BE,
        CODEC_ID_PCM_S16LE,
        CODEC_ID_PCM_S24BE,
        CODEC_ID_PCM_S24LE,
        CODEC_ID_PCM_S32BE,
        CODEC_ID_PCM_S32LE,
        CODEC_ID_PCM_S8,
        CODEC_ID_PCM_U8,
    ]
    .contains(&params.codec);
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| AudioError::UnsupportedCodec(format!("{} ({e})", params.codec)))?;

    let mut rate = params.sample_rate;
    if let Some(r) = rate {
        if !(MIN_RATE..=MAX_RATE).contains(&r) {
            return Err(AudioError::BadSampleRate(r));
        }
    }
    let mut mono: Vec<f32> = Vec::new();
    let mut planes: Vec<Vec<f32>> = Vec::new();
    let mut first_decode_error: Option<String> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) | Err(SymError::ResetRequired) => break,
            Err(e) if is_eof(&e) => {
                if mono.is_empty() {
                    return Err(AudioError::Truncated(format!(
                        "no complete audio data ({e})"
                    )));
                }
                break;
            }
            Err(e) => return Err(AudioError::Corrupt(e.to_string())),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(b) => b,
            Err(SymError::DecodeError(m)) => {
                first_decode_error.get_or_insert_with(|| m.to_string());
                continue;
            }
            Err(SymError::IoError(e)) => {
                first_decode_error.get_or_insert_with(|| e.to_string());
                continue;
            }
            Err(e) => return Err(AudioError::Corrupt(e.to_string())),
        };
        let spec_rate = buf.spec().rate();
        match rate {
            None => {
                if !(MIN_RATE..=MAX_RATE).contains(&spec_rate) {
                    return Err(AudioError::BadSampleRate(spec_rate));
                }
                rate = Some(spec_rate);
            }
            Some(r) if r != spec_rate => {
                return Err(AudioError::UnsupportedFormat(format!(
                    "the sample rate changes within the stream ({r} Hz -> {spec_rate} Hz)"
                )))
            }
            Some(_) => {}
        }
        let frames = buf.frames();
        if frames == 0 {
            continue;
        }
        buf.copy_to_vecs_planar::<f32>(&mut planes);
        let nch = planes.len().max(1);
        let start = mono.len();
        mono.resize(start + frames, 0.0);
        let out = &mut mono[start..];
        for plane in planes.iter() {
            for (o, &s) in out.iter_mut().zip(plane.iter()) {
                *o += s;
            }
        }
        if nch > 1 {
            let inv = 1.0 / nch as f32;
            out.iter_mut().for_each(|o| *o *= inv);
        }
        let limit = rate.unwrap_or(SAMPLE_RATE) as u64 * MAX_SECONDS;
        if mono.len() as u64 > limit {
            return Err(AudioError::TooLong {
                limit_s: MAX_SECONDS,
            });
        }
    }
    if mono.is_empty() {
        return Err(match first_decode_error {
            Some(m) => AudioError::Corrupt(m),
            None => AudioError::NoSamples,
        });
    }
    if lossless {
        if let Some(declared) = declared_frames {
            if (mono.len() as u64) < declared {
                return Err(AudioError::Truncated(format!(
                    "the header declares {declared} frames but the data ends after {}",
                    mono.len()
                )));
            }
        }
    }
    let rate = rate.ok_or(AudioError::NoSamples)?;
    Ok((mono, rate))
}

/// Resamples mono audio from `rate` to 16 kHz (see the module documentation).
fn resample_to_16k(mono: &[f32], rate: u32) -> Result<Vec<f32>, AudioError> {
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    use rubato::{Fft, FixedSync, Resampler};
    if rate == SAMPLE_RATE {
        return Ok(mono.to_vec());
    }
    let err =
        |e: String| AudioError::Corrupt(format!("resampling {rate} Hz -> 16 kHz failed: {e}"));
    let mut rs = Fft::<f32>::new(
        rate as usize,
        SAMPLE_RATE as usize,
        1024,
        1,
        FixedSync::Input,
    )
    .map_err(|e| err(e.to_string()))?;
    let input = InterleavedSlice::new(mono, 1, mono.len()).map_err(|e| err(e.to_string()))?;
    let out = rs
        .process_all(&input, mono.len(), None)
        .map_err(|e| err(e.to_string()))?;
    let mut samples = out.take_data();
    let expected = (mono.len() as u64 * SAMPLE_RATE as u64).div_ceil(rate as u64) as usize;
    samples.truncate(expected);
    Ok(samples)
}
