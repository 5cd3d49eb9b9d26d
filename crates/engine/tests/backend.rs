//! `Session` over a backend other than the CPU `TextModel`: a toy decoder whose next token
//! is always the last id + 1 runs the same generation loop, cache bookkeeping and context
//! checks (what the GPU backend relies on).

use std::cell::Cell;

use gemma3n_engine::{Decoder, DecoderCache, Session, StopReason};
use gemma3n_model::text::EmbedFn;
use gemma3n_model::{Logits, ModelError, TextConfig};

const VOCAB: usize = 64;

struct Toy {
    cfg: TextConfig,
    /// Positions handed to the embed callback.
    embedded: Cell<usize>,
}

impl Toy {
    fn new(context: usize) -> Toy {
        let mut cfg = TextConfig::e2b();
        cfg.max_position_embeddings = context;
        Toy {
            cfg,
            embedded: Cell::new(0),
        }
    }
}

struct ToyCache {
    ids: Vec<u32>,
    can_truncate: bool,
}

impl ToyCache {
    fn new(can_truncate: bool) -> ToyCache {
        ToyCache {
            ids: vec![99; 3], // stale content: a session starts by clearing its cache
            can_truncate,
        }
    }
}

impl DecoderCache for ToyCache {
    fn pos(&self) -> usize {
        self.ids.len()
    }
    fn clear(&mut self) {
        self.ids.clear();
    }
    fn truncate(&mut self, n: usize) -> bool {
        if self.can_truncate && n <= self.ids.len() {
            self.ids.truncate(n);
            true
        } else {
            false
        }
    }
}

impl Decoder for Toy {
    type Cache = ToyCache;

    fn config(&self) -> &TextConfig {
        &self.cfg
    }

    fn forward_embedded(
        &self,
        ids: &[u32],
        cache: &mut ToyCache,
        want: Logits,
        embed: Option<EmbedFn<'_>>,
    ) -> Result<Vec<f32>, ModelError> {
        assert!(matches!(want, Logits::Last));
        if let Some(f) = embed {
            let mut row = [0f32; 4];
            for (i, &id) in ids.iter().enumerate() {
                f(cache.pos() + i, id, &mut row)?;
                self.embedded.set(self.embedded.get() + 1);
            }
        }
        cache.ids.extend_from_slice(ids);
        let mut logits = vec![0f32; VOCAB];
        logits[(*ids.last().unwrap() as usize + 1) % VOCAB] = 1.0;
        Ok(logits)
    }
}

fn argmax(logits: &[f32], _: &[u32]) -> u32 {
    (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap() as u32
}

#[test]
fn generates_on_any_backend() {
    let toy = Toy::new(100);
    let mut s = Session::with_cache(&toy, ToyCache::new(true));
    let mut streamed = Vec::new();
    let g = s
        .generate(&[1, 2, 3], 10, &[7], &mut argmax, &mut |id| {
            streamed.push(id);
            true
        })
        .unwrap();
    assert_eq!(g.tokens, vec![4, 5, 6]);
    assert_eq!(streamed, g.tokens);
    assert_eq!(g.stop, StopReason::Stop(7));
    assert_eq!(g.prompt_tokens, 3);
    assert_eq!(g.decode_steps, 3);
    assert_eq!(s.tokens(), &[1, 2, 3, 4, 5, 6]);
    assert_eq!(s.room(), 94);

    // The next turn extends the conversation; the cache keeps the shared prefix.
    assert_eq!(s.reuse_prefix(&[1, 2, 3, 4, 9, 10]), 4);
    assert_eq!(s.tokens(), &[1, 2, 3, 4]);
    s.reset();
    assert!(s.tokens().is_empty());
}

#[test]
fn a_cache_that_cannot_truncate_starts_over() {
    let toy = Toy::new(100);
    let mut s = Session::with_cache(&toy, ToyCache::new(false));
    s.generate(&[1, 2, 3], 2, &[], &mut argmax, &mut |_| true)
        .unwrap();
    assert_eq!(s.reuse_prefix(&[1, 2, 9]), 0);
    assert!(s.tokens().is_empty());
}

#[test]
fn embed_reaches_the_backend_and_the_context_is_enforced() {
    let toy = Toy::new(6);
    let mut s = Session::with_cache(&toy, ToyCache::new(true));
    let f = |_: usize, _: u32, _: &mut [f32]| Ok(());
    let g = s
        .generate_embedded(&[1, 2], Some(&f), 10, &[], &mut argmax, &mut |_| true)
        .unwrap();
    assert_eq!(toy.embedded.get(), 2, "only the prompt goes through embed");
    assert_eq!(g.stop, StopReason::ContextFull);
    assert_eq!(s.tokens().len(), 6);
    assert_eq!(s.room(), 0);
    let err = s
        .generate(&[1], 1, &[], &mut argmax, &mut |_| true)
        .unwrap_err();
    assert!(err.to_string().contains("context length of 6"), "{err}");
}
