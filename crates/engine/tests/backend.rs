//! `Session` over a backend other than the CPU `TextModel`: a toy decoder whose next token
//! is always the last id + 1 runs the same generation loop, cache bookkeeping and context
//! checks (what the GPU backend relies on), and the server's run-time-chosen decoder
//! (`AnyDecoder`) batches it and refuses a cache of another decoder.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gemma3n_engine::{AnyDecoder, Decoder, DecoderCache, Pick, Session, StopReason};
use gemma3n_model::text::EmbedFn;
use gemma3n_model::{KvCache, Logits, ModelError, SlicePlan, TextConfig};

const VOCAB: usize = 64;

struct Toy {
    cfg: TextConfig,
    /// Positions handed to the embed callback.
    embedded: AtomicUsize,
}

impl Toy {
    fn new(context: usize) -> Toy {
        let mut cfg = TextConfig::e2b();
        cfg.max_position_embeddings = context;
        Toy {
            cfg,
            embedded: AtomicUsize::new(0),
        }
    }
}

struct ToyCache {
    ids: Vec<u32>,
    can_truncate: bool,
    plan: Arc<SlicePlan>,
}

impl ToyCache {
    fn new(can_truncate: bool) -> ToyCache {
        ToyCache {
            ids: vec![99; 3], // stale content: a session starts by clearing its cache
            can_truncate,
            plan: Arc::new(SlicePlan::full(&TextConfig::e2b())),
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
    fn plan(&self) -> &Arc<SlicePlan> {
        &self.plan
    }
}

impl Decoder for Toy {
    type Cache = ToyCache;

    fn config(&self) -> &TextConfig {
        &self.cfg
    }

    fn new_cache_with_plan(&self, plan: Arc<SlicePlan>) -> Result<ToyCache, ModelError> {
        Ok(ToyCache {
            ids: Vec::new(),
            can_truncate: true,
            plan,
        })
    }

    fn forward_batch(
        &self,
        ids: &[u32],
        caches: &mut [&mut ToyCache],
    ) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::new();
        for (&id, c) in ids.iter().zip(caches.iter_mut()) {
            out.extend(self.forward_embedded(&[id], c, Logits::Last, None)?);
        }
        Ok(out)
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
                self.embedded.fetch_add(1, Ordering::Relaxed);
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
        .generate(&[1, 2, 3], 10, &[7], Pick::With(&mut argmax), &mut |id| {
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
    s.generate(&[1, 2, 3], 2, &[], Pick::With(&mut argmax), &mut |_| true)
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
        .generate_embedded(
            &[1, 2],
            Some(&f),
            10,
            &[],
            Pick::With(&mut argmax),
            &mut |_| true,
        )
        .unwrap();
    assert_eq!(
        toy.embedded.load(Ordering::Relaxed),
        2,
        "only the prompt goes through embed"
    );
    assert_eq!(g.stop, StopReason::ContextFull);
    assert_eq!(s.tokens().len(), 6);
    assert_eq!(s.room(), 0);
    let err = s
        .generate(&[1], 1, &[], Pick::With(&mut argmax), &mut |_| true)
        .unwrap_err();
    assert!(err.to_string().contains("context length of 6"), "{err}");
}

#[test]
fn a_decoder_chosen_at_run_time_batches_and_checks_its_caches() {
    let toy = Toy::new(100);
    let dec: &dyn AnyDecoder = &toy;
    let plan = Arc::new(SlicePlan::full(&toy.cfg));
    let mut a = dec.new_cache(plan.clone()).unwrap();
    let mut b = dec.new_cache(plan.clone()).unwrap();
    dec.forward_sequence(&[1, 2], &mut *a, Logits::Last, None)
        .unwrap();
    dec.forward_sequence(&[10], &mut *b, Logits::Last, None)
        .unwrap();
    // One step of both: each row is what the sequence alone gives (its last id + 1).
    let logits = dec
        .forward_sequences(&[5, 20], &mut [&mut *a, &mut *b])
        .unwrap();
    assert_eq!(logits.len(), 2 * VOCAB);
    assert_eq!(argmax(&logits[..VOCAB], &[]), 6);
    assert_eq!(argmax(&logits[VOCAB..], &[]), 21);
    assert!(Arc::ptr_eq(a.plan(), &plan));
    // A cache of another decoder (the CPU model's) is refused, not misread.
    let mut other: Box<dyn gemma3n_engine::SeqCache> = Box::new(KvCache::new(&toy.cfg, plan));
    let err = dec
        .forward_sequence(&[1], &mut *other, Logits::Last, None)
        .unwrap_err();
    assert!(err.to_string().contains("another decoder"), "{err}");
}

#[test]
fn greedy_pick_is_the_argmax_of_the_first_n_logits() {
    // Pick::Argmax decodes through Decoder::forward_argmax (here its default: the argmax
    // of the logits) and chooses what picking from the logits chooses.
    let toy = Toy::new(100);
    let mut a = Session::with_cache(&toy, ToyCache::new(true));
    let want = a
        .generate(&[1, 2, 3], 10, &[7], Pick::With(&mut argmax), &mut |_| true)
        .unwrap();
    let mut b = Session::with_cache(&toy, ToyCache::new(true));
    let got = b
        .generate(&[1, 2, 3], 10, &[7], Pick::Argmax(VOCAB), &mut |_| true)
        .unwrap();
    assert_eq!(got.tokens, want.tokens);
    assert_eq!(got.stop, want.stop);
    assert_eq!(got.decode_steps, want.decode_steps);
    assert_eq!(b.tokens(), a.tokens());
    // Only the first n ids can be chosen: the toy's one large logit is at last id + 1, so
    // after 4 it lies past n = 5 and id 0 (the first of the equal rest) wins.
    let mut c = Session::with_cache(&toy, ToyCache::new(true));
    let g = c
        .generate(&[2], 4, &[], Pick::Argmax(5), &mut |_| true)
        .unwrap();
    assert_eq!(g.tokens, vec![3, 4, 0, 1]);
}
