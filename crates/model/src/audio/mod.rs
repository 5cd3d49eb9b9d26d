//! Audio input front end: decoding any common audio file to 16 kHz mono `f32`
//! ([`decode`]) and the Gemma 3n log-mel features (spec/multimodal.md §3) that the
//! audio tower consumes ([`features`]).

pub mod decode;
pub mod features;
