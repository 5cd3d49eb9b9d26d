//! The sampler against a naive implementation written straight from HF's logits-processor
//! definitions (full sorts, f64), and statistical and structural properties.

use gemma3n_engine::{GenerationConfig, Sampler, SamplingParams};
use gemma3n_model::text::TopScores;
/// Small deterministic generator for test inputs (independent of the sampler's RNG).
struct Lcg(u64);
impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / ((1u64 << 24) as f32)
    }
}

fn random_logits(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut g = Lcg(seed);
    (0..n).map(|_| (g.next_f32() - 0.5) * scale).collect()
}

/// The distribution written straight from HF's definitions, with full sorts.
fn naive(logits: &[f32], previous: &[u32], p: &SamplingParams, vocab: usize) -> Vec<(u32, f64)> {
    let mut s: Vec<f64> = logits.iter().take(vocab).map(|&x| f64::from(x)).collect();
    for &id in previous {
        let id = id as usize;
        if id < s.len() {
            let l = f64::from(logits[id]);
            let r = f64::from(p.repetition_penalty);
            s[id] = if l > 0.0 { l / r } else { l * r };
        }
    }
    for &id in &p.banned_ids {
        if (id as usize) < s.len() {
            s[id as usize] = f64::NEG_INFINITY;
        }
    }
    let t = f64::from(p.temperature);
    let mut v: Vec<(u32, f64)> = s
        .iter()
        .enumerate()
        .filter(|(_, x)| x.is_finite())
        .map(|(i, &x)| (i as u32, x / t))
        .collect();
    v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    if p.top_k > 0 && p.top_k < v.len() {
        let kth = v[p.top_k - 1].1;
        v.retain(|x| x.1 >= kth);
    }
    let softmax = |v: &mut Vec<(u32, f64)>| {
        let m = v[0].1;
        let z: f64 = v.iter().map(|x| (x.1 - m).exp()).sum();
        v.iter()
            .map(|x| ((x.1 - m).exp()) / z)
            .collect::<Vec<f64>>()
    };
    let probs = softmax(&mut v);
    let mut kept = Vec::new();
    let mut cum = 0.0;
    for (i, &pr) in probs.iter().enumerate() {
        if cum >= f64::from(p.top_p) && !kept.is_empty() {
            break;
        }
        kept.push((v[i].0, pr));
        cum += pr;
    }
    let top = kept[0].1;
    kept.retain(|x| x.1 >= f64::from(p.min_p) * top);
    let z: f64 = kept.iter().map(|x| x.1).sum();
    kept.iter().map(|&(id, pr)| (id, pr / z)).collect()
}

fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32, rep: f32) -> SamplingParams {
    SamplingParams {
        do_sample: true,
        temperature,
        top_k,
        top_p,
        min_p,
        repetition_penalty: rep,
        seed: Some(7),
        banned_ids: vec![3, 17],
    }
}

#[test]
fn distribution_matches_naive_reference() {
    let vocab = 5000;
    let logits = random_logits(vocab + 100, 1, 12.0);
    let previous = [5u32, 9, 9, 40, 4999, 5050];
    for p in [
        params(1.0, 64, 0.95, 0.0, 1.0),
        params(0.7, 0, 0.9, 0.0, 1.3),
        params(1.3, 0, 1.0, 0.05, 1.0),
        params(1.0, 10, 1.0, 0.0, 1.1),
        params(0.5, 200, 0.5, 0.1, 1.0),
        params(2.0, 0, 0.999, 0.0, 1.0),
    ] {
        let mut s = Sampler::new(p.clone(), vocab).unwrap();
        let got = s.distribution(&logits, &previous).unwrap();
        let want = naive(&logits, &previous, &p, vocab);
        assert_eq!(got.len(), want.len(), "{p:?}");
        for ((gi, gp), (wi, wp)) in got.iter().zip(&want) {
            assert_eq!(gi, wi, "{p:?}");
            assert!((gp - wp).abs() < 1e-9, "{p:?}: {gp} vs {wp}");
        }
    }
}

#[test]
fn top_p_without_top_k_on_a_real_size_vocab() {
    // Flat logits: the nucleus needs far more than the first selection of 1024.
    let vocab = 262_144;
    let logits = random_logits(262_400, 3, 2.0);
    let p = params(1.0, 0, 0.9, 0.0, 1.0);
    let got = Sampler::new(p.clone(), vocab)
        .unwrap()
        .distribution(&logits, &[])
        .unwrap();
    let want = naive(&logits, &[], &p, vocab);
    assert!(want.len() > 100_000);
    assert_eq!(got.len(), want.len());
    assert!(got
        .iter()
        .zip(&want)
        .all(|(g, w)| g.0 == w.0 && (g.1 - w.1).abs() < 1e-12));
}

#[test]
fn top_k_one_and_greedy_are_argmax() {
    let vocab = 262_144;
    for seed in 0..5 {
        let logits = random_logits(262_400, seed, 30.0);
        let argmax = logits[..vocab]
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
            )
            .0 as u32;
        let mut k1 = Sampler::new(params(1.0, 1, 1.0, 0.0, 1.0), vocab).unwrap();
        let mut greedy = Sampler::new(SamplingParams::greedy(), vocab).unwrap();
        let mut t0 = Sampler::new(params(0.0, 0, 1.0, 0.0, 1.0), vocab).unwrap();
        for _ in 0..3 {
            assert_eq!(k1.sample(&logits, &[]).unwrap(), argmax);
            assert_eq!(greedy.sample(&logits, &[]).unwrap(), argmax);
            assert_eq!(t0.sample(&logits, &[]).unwrap(), argmax);
        }
    }
}

#[test]
fn greedy_ties_take_the_lowest_id() {
    let mut s = Sampler::new(SamplingParams::greedy(), 8).unwrap();
    assert_eq!(s.sample(&[0.0, 2.0, 1.0, 2.0, 2.0], &[]).unwrap(), 1);
}

#[test]
fn top_k_keeps_ties_at_the_boundary() {
    let p = SamplingParams {
        top_k: 2,
        top_p: 1.0,
        ..params(1.0, 2, 1.0, 0.0, 1.0)
    };
    let p = SamplingParams {
        banned_ids: vec![],
        ..p
    };
    let mut s = Sampler::new(p, 8).unwrap();
    let d = s.distribution(&[3.0, 1.0, 1.0, 1.0, 0.0], &[]).unwrap();
    assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
}

#[test]
fn top_k_on_all_equal_logits_keeps_every_tie() {
    let p = SamplingParams {
        top_k: 5,
        top_p: 1.0,
        ..SamplingParams::default()
    };
    let d = Sampler::new(p, 1000)
        .unwrap()
        .distribution(&[0.5; 1000], &[])
        .unwrap();
    assert_eq!(d.len(), 1000);
    assert!(d.iter().all(|x| (x.1 - 1e-3).abs() < 1e-12));
}

#[test]
fn seeded_frequencies_follow_the_distribution() {
    // probabilities 0.5, 0.25, 0.125, 0.125 (log-probs as logits), vocab of 4
    let logits: Vec<f32> = [0.5f32, 0.25, 0.125, 0.125]
        .iter()
        .map(|p| p.ln())
        .collect();
    let p = SamplingParams {
        top_k: 0,
        top_p: 1.0,
        seed: Some(42),
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(p, 4).unwrap();
    let n = 200_000;
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[s.sample(&logits, &[]).unwrap() as usize] += 1;
    }
    for (c, want) in counts.iter().zip([0.5, 0.25, 0.125, 0.125]) {
        let f = *c as f64 / n as f64;
        let sigma = (want * (1.0 - want) / n as f64).sqrt();
        assert!((f - want).abs() < 5.0 * sigma, "{counts:?}");
    }
}

#[test]
fn masked_ids_are_never_sampled() {
    // The masked ids have by far the largest logits.
    let vocab = 1000;
    let mut logits = random_logits(1256, 9, 1.0);
    for l in &mut logits[vocab..] {
        *l = 100.0;
    }
    logits[17] = 100.0;
    logits[3] = 100.0;
    for p in [
        params(1.0, 0, 1.0, 0.0, 1.0),
        params(1.0, 5, 0.9, 0.0, 1.0),
        SamplingParams {
            banned_ids: vec![3, 17],
            ..SamplingParams::greedy()
        },
    ] {
        let mut s = Sampler::new(p, vocab).unwrap();
        for _ in 0..2000 {
            let id = s.sample(&logits, &[]).unwrap();
            assert!(id < vocab as u32 && id != 3 && id != 17, "{id}");
        }
    }
    let mut s = Sampler::new(SamplingParams::default(), 4).unwrap();
    assert!(s
        .sample(
            &[f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY, f32::NAN],
            &[]
        )
        .is_err());
    assert!(s.sample(&[], &[]).is_err());
}

#[test]
fn greedy_takes_the_first_of_tied_maxima_and_never_nan() {
    let mut g = Sampler::new(SamplingParams::greedy(), 6).unwrap();
    let logits = [1.0, f32::NAN, 3.0, 3.0, f32::NEG_INFINITY, 2.0, 9.0];
    // The last value lies past the text vocabulary of 6 ids.
    assert_eq!(g.sample(&logits, &[]).unwrap(), 2);
    assert_eq!(g.sample(&[f32::NAN, -5.0, f32::NAN], &[]).unwrap(), 1);
    assert!(g.sample(&[f32::NAN, f32::NEG_INFINITY], &[]).is_err());
    assert!(g.sample(&[], &[]).is_err());
}

#[test]
fn same_seed_same_sequence() {
    let logits = random_logits(3000, 5, 4.0);
    let draw = |seed| {
        let p = SamplingParams {
            seed: Some(seed),
            top_k: 0,
            top_p: 1.0,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(p, 3000).unwrap();
        (0..64)
            .map(|_| s.sample(&logits, &[]).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(1), draw(1));
    assert_ne!(draw(1), draw(2));
}

#[test]
fn repetition_penalty_as_hf() {
    // HF: positive logits divided, negative multiplied, once per distinct id.
    let mut s = Sampler::new(
        SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        },
        8,
    )
    .unwrap();
    // id 0 (3.0) penalized to 1.5 < id 1 (2.0)
    assert_eq!(s.sample(&[3.0, 2.0, -1.0], &[0, 0, 0]).unwrap(), 1);
    // id 1 (-0.5 -> -1.0) vs id 2 (-0.8): 2 wins
    assert_eq!(s.sample(&[-5.0, -0.5, -0.8], &[1]).unwrap(), 2);
}

#[test]
fn invalid_params_are_errors() {
    for p in [
        SamplingParams {
            temperature: -1.0,
            ..Default::default()
        },
        SamplingParams {
            top_p: 0.0,
            ..Default::default()
        },
        SamplingParams {
            top_p: 1.5,
            ..Default::default()
        },
        SamplingParams {
            min_p: 2.0,
            ..Default::default()
        },
        SamplingParams {
            repetition_penalty: 0.0,
            ..Default::default()
        },
        SamplingParams {
            temperature: f32::NAN,
            ..Default::default()
        },
    ] {
        assert!(Sampler::new(p, 10).is_err());
    }
}

#[test]
fn generation_config_parsing() {
    let gemma = serde_json::json!({"bos_token_id": 2, "cache_implementation": "hybrid",
        "do_sample": true, "eos_token_id": [1, 106], "pad_token_id": 0, "top_k": 64,
        "top_p": 0.95, "transformers_version": "4.53.0"});
    let c = GenerationConfig::from_json(&gemma, "g.json").unwrap();
    assert_eq!(c.eos_token_ids, vec![1, 106]);
    assert_eq!((c.bos_token_id, c.pad_token_id), (Some(2), Some(0)));
    assert_eq!(c.sampling, SamplingParams::default());

    let single = serde_json::json!({"eos_token_id": 1});
    let c = GenerationConfig::from_json(&single, "g.json").unwrap();
    assert_eq!(c.eos_token_ids, vec![1]);
    // HF GenerationConfig defaults for absent keys
    assert!(!c.sampling.do_sample && c.sampling.top_k == 50 && c.sampling.top_p == 1.0);

    let bad = serde_json::json!({"eos_token_id": "x"});
    let e = GenerationConfig::from_json(&bad, "dir/generation_config.json").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("dir/generation_config.json") && msg.contains("eos_token_id"),
        "{msg}"
    );
    let bad = serde_json::json!({"top_p": 3.0});
    assert!(GenerationConfig::from_json(&bad, "g.json").is_err());
    assert!(
        GenerationConfig::from_file("/nonexistent/generation_config.json")
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/generation_config.json")
    );
}

/// The candidates of a top-k draw written out plainly: every finite score among the first
/// `vocab` at least the k-th largest, in a scrambled order (as a device returns them).
fn top_k_candidates(logits: &[f32], vocab: usize, k: usize) -> Vec<(f32, u32)> {
    let mut finite: Vec<f32> = logits[..vocab]
        .iter()
        .copied()
        .filter(|s| *s > f32::NEG_INFINITY)
        .collect();
    finite.sort_by(|a, b| b.total_cmp(a));
    let threshold = finite[k.min(finite.len()) - 1];
    let mut c: Vec<(f32, u32)> = logits[..vocab]
        .iter()
        .enumerate()
        .filter(|(_, &s)| s >= threshold)
        .map(|(i, &s)| (s, i as u32))
        .collect();
    c.reverse();
    let third = c.len() / 3;
    c.rotate_left(third);
    c
}

#[test]
fn drawing_from_the_top_k_candidates_is_drawing_from_the_logits() {
    let vocab = 3000;
    let mut logits = random_logits(vocab + 50, 4, 10.0);
    // Ties at and around the k-th largest, NaN and -inf, a large logit past the vocabulary.
    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    for &i in &order[5..12] {
        logits[i] = logits[order[5]];
    }
    logits[order[0]] = f32::NAN;
    logits[order[1]] = f32::NEG_INFINITY;
    logits[vocab + 3] = 1e6;
    for p in [
        params(1.0, 64, 0.95, 0.0, 1.0),
        params(0.7, 6, 1.0, 0.0, 1.0),
        params(1.3, 8, 0.9, 0.05, 1.0),
        params(2.0, 1, 1.0, 0.0, 1.0),
        params(1.0, 200, 1.0, 0.0, 1.0),
    ] {
        let p = SamplingParams {
            banned_ids: Vec::new(),
            ..p
        };
        let mut all = Sampler::new(p.clone(), vocab).unwrap();
        let mut top = Sampler::new(p.clone(), vocab).unwrap();
        let (n, k) = top.top_k_request().expect("a top-k draw");
        assert_eq!((n, k), (vocab, p.top_k));
        let cands = TopScores::Top(top_k_candidates(&logits, n, k));
        for step in 0..200 {
            let want = all.sample(&logits, &[]).unwrap();
            let got = top.sample_scores(&cands, &[]).unwrap();
            assert_eq!(got, want, "{p:?}, draw {step}");
        }
        // All the logits through the same entry point draw the same.
        let mut again = Sampler::new(p.clone(), vocab).unwrap();
        let logits_too = TopScores::Logits(logits.clone());
        let mut first = Sampler::new(p.clone(), vocab).unwrap();
        assert_eq!(
            again.sample_scores(&logits_too, &[]).unwrap(),
            first.sample(&logits, &[]).unwrap()
        );
    }
    // No request (and candidates refused) when a draw needs every logit.
    for p in [
        params(1.0, 0, 0.9, 0.0, 1.0),
        params(1.0, 64, 0.9, 0.0, 1.2),
        params(1.0, 64, 0.9, 0.0, 1.0),
        SamplingParams::greedy(),
    ] {
        let mut s = Sampler::new(p.clone(), vocab).unwrap();
        assert_eq!(s.top_k_request(), None, "{p:?}");
        let c = TopScores::Top(vec![(1.0, 0)]);
        assert!(s.sample_scores(&c, &[]).is_err(), "{p:?}");
    }
}
