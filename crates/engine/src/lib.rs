//! gemma3n-engine: tokenizer, chat template, sampling and the generation loop.

pub mod backend;
pub mod chat;
pub mod error;
pub mod generate;
pub mod sampling;
pub mod stream;
pub mod tokenizer;

pub use backend::{AnyDecoder, Decoder, DecoderCache, SeqCache};
pub use chat::{
    expand_audio_placeholders, expand_image_placeholders, ChatMessage, ChatTemplate, ContentPart,
    Conversation, MessageContent, Prompt, TurnInput, AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER,
};
pub use error::{Error, Result};
pub use generate::{Generation, Pick, Session, StopReason};
pub use sampling::{GenerationConfig, Sampler, SamplingParams};
pub use stream::TokenStream;
pub use tokenizer::{SpecialTokens, Tokenizer};
