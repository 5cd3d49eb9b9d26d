//! Parameter counts and weights read per decoded token (spec §8), from the config's shapes.

use crate::config::{KvSource, TextConfig};

/// Sizes of a text decoder, in parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextStats {
    /// `embed_tokens` (= the tied LM head).
    pub embed_params: usize,
    /// The per-layer embedding table.
    pub ple_params: usize,
    /// All decoder layers as loaded (the unused k/v of KV-shared layers are not loaded).
    pub layer_params: usize,
    /// The unused k_proj/v_proj/k_norm of KV-shared layers that checkpoints carry.
    pub unused_shared_kv_params: usize,
    /// PLE projection and norm, AltUp (un)embedding projections, final norm.
    pub other_params: usize,
    /// Parameters read to decode one token: every loaded layer weight, the PLE projection,
    /// the AltUp projections, the norms, the whole LM head and one row of each table.
    pub params_per_token: usize,
    /// The same with the exact sparse FFN: in a layer of sparsity s only a fraction
    /// 1 − s of the `up` and `down` rows is read (in expectation: the Gaussian top-k
    /// keeps the units above the s-quantile).
    pub sparse_params_per_token: usize,
}

impl TextStats {
    /// Google's "effective" count: everything but the two embedding tables (the unused
    /// shared k/v included, as HF counts them).
    pub fn effective_params(&self) -> usize {
        self.layer_params + self.unused_shared_kv_params + self.other_params
    }
    /// Every text parameter of a checkpoint (LM head tied).
    pub fn total_params(&self) -> usize {
        self.effective_params() + self.embed_params + self.ple_params
    }
}

impl TextConfig {
    /// Parameter counts of this config (FFN widths as given).
    pub fn stats(&self) -> TextStats {
        let (d, p, a, r) = (
            self.hidden_size,
            self.hidden_size_per_layer_input,
            self.altup_num_inputs,
            self.laurel_rank,
        );
        let (q, kv, hd) = (
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
            self.head_dim,
        );
        let mut s = TextStats::default();
        for l in 0..self.num_hidden_layers {
            let f = self.intermediate_size[l];
            let kv_params = 2 * kv * d + hd;
            let mut n = 2 * q * d + hd; // q, o, q_norm
            if self.kv_source(l) == KvSource::Own {
                n += kv_params;
            } else {
                s.unused_shared_kv_params += kv_params;
            }
            n += 3 * f * d; // gate, up, down
            n += 5 * d; // input, post-attn, pre-ffw, post-ffw, post-PLE norms
            n += 2 * r * d + d; // LAuReL + its norm
            n += a * d + d + a * a * a + a * a + d; // router, router norm, coefs, scale
            n += 2 * p * d; // PLE gate and projection
            s.layer_params += n;
        }
        s.embed_params = self.vocab_size * d;
        s.ple_params = self.vocab_size_per_layer_input * self.num_hidden_layers * p;
        s.other_params = self.num_hidden_layers * p * d + p + 2 * (a - 1) * d * d + d;
        s.params_per_token =
            s.layer_params + s.other_params + s.embed_params + d + self.num_hidden_layers * p;
        let skipped: f64 = (0..self.num_hidden_layers)
            .map(|l| {
                self.activation_sparsity_pattern[l] as f64
                    * (2 * self.intermediate_size[l] * d) as f64
            })
            .sum();
        s.sparse_params_per_token = s.params_per_token - skipped.round() as usize;
        s
    }
}

#[cfg(test)]
mod tests {
    use crate::config::TextConfig;

    /// The spec's §8 figures (which reproduce Google's published counts).
    #[test]
    fn counts_match_the_spec() {
        let e2b = TextConfig::e2b().stats();
        assert_eq!(e2b.embed_params, 537_395_200);
        assert_eq!(e2b.ple_params, 2_013_265_920);
        assert_eq!(e2b.effective_params(), 1_905_495_648);
        assert_eq!(e2b.total_params(), 4_456_156_768);
        assert_eq!(e2b.unused_shared_kv_params, 20_974_080);
        assert_eq!(e2b.params_per_token, 2_421_926_496);
        let e4b = TextConfig::e4b().stats();
        assert_eq!(e4b.effective_params(), 3_980_491_248);
        assert_eq!(e4b.total_params(), 6_866_696_688);
        assert_eq!(e4b.unused_shared_kv_params, 31_461_120);
        assert_eq!(e4b.params_per_token, 4_486_436_336);
    }
}
