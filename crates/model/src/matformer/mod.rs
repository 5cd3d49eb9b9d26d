//! MatFormer slices (spec/text.md §6): a kept-layer list plus one FFN width per kept
//! layer. A slice is a run-time value: [`SlicePlan`] derives, for a loaded model, what
//! every kept layer does (its width, KV source and sparsity) exactly as the sliced
//! checkpoint made by the MatFormer Lab procedure would, and the decoder runs it on the
//! stored weights (prefixes of the FFN matrices, no copies).

use std::path::Path;

mod export;
pub use export::export;

use serde_json::Value;

use crate::config::{KvSource, LayerType, TextConfig};
use crate::error::{ModelError, Result};

/// The official slicing table (Google's configs.csv; spec §6.3).
const OFFICIAL_CSV: &str = include_str!("../../data/matformer_slicing_configs.csv");

/// A slice of a model: which layers run and how wide each one's FFN is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// A display name (`E2B`, `custom`, ...).
    pub name: String,
    /// Original indices of the layers to skip, ascending.
    pub layers_to_skip: Vec<usize>,
    /// FFN width of each kept layer, in order.
    pub ffn_hidden_dims: Vec<usize>,
}

/// One row of the official table.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedSlice {
    /// Short name: `E4B`, `E2B`, `E2.54B`, or with `-block` for the block-level variants
    /// whose size collides with a layer-level one (`E2.98B-block`, `E3.79B-block`).
    pub short: String,
    /// The name in Google's table (`Config for E2.54B (layer-level)`).
    pub official: String,
    pub num_layers: usize,
    /// Effective parameters as published (billions).
    pub effective_b: f64,
    /// MMLU (pre-trained) accuracy as published, in percent.
    pub mmlu: f64,
    pub slice: Slice,
}

/// The 16 official slices of E4B.
pub fn official_slices() -> Vec<NamedSlice> {
    let mut out: Vec<NamedSlice> = Vec::new();
    for line in OFFICIAL_CSV
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
    {
        let fields = split_csv(line);
        assert_eq!(fields.len(), 6, "official slicing table row: {line}");
        let official = fields[0].clone();
        let dims = parse_list(&fields[4]);
        let skip = parse_list(&fields[5]);
        let effective_b: f64 = fields[2].parse().expect("table: effective params");
        let mmlu: f64 = fields[3]
            .trim_end_matches('%')
            .parse()
            .expect("table: MMLU");
        let short = if official == "Main model" {
            "E4B".to_string()
        } else if official.contains("official E2B") {
            "E2B".to_string()
        } else {
            // "Config for E2.98B (block-level)" -> "E2.98B" (+ "-block" on a collision).
            let size = official
                .trim_start_matches("Config for ")
                .split_whitespace()
                .next()
                .expect("table: name")
                .to_string();
            if official.contains("block-level") && out.iter().any(|s| s.short == size) {
                format!("{size}-block")
            } else {
                size
            }
        };
        out.push(NamedSlice {
            short: short.clone(),
            official,
            num_layers: fields[1].parse().expect("table: layers"),
            effective_b,
            mmlu,
            slice: Slice {
                name: short,
                layers_to_skip: skip,
                ffn_hidden_dims: dims,
            },
        });
    }
    out
}

/// Splits one CSV line (quoted fields may hold commas).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    out
}

/// `[2_048 * 8, 2_048 * 4]` or `[20, 21]` or empty -> numbers.
fn parse_list(s: &str) -> Vec<usize> {
    s.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            t.split('*')
                .map(|f| {
                    f.trim()
                        .replace('_', "")
                        .parse::<usize>()
                        .expect("table: number")
                })
                .product()
        })
        .collect()
}

impl Slice {
    /// Every layer at its stored width.
    pub fn full(cfg: &TextConfig) -> Slice {
        Slice {
            name: "full".into(),
            layers_to_skip: Vec::new(),
            ffn_hidden_dims: cfg.intermediate_size.clone(),
        }
    }

    /// A named official slice (short or official name, case-insensitive).
    pub fn named(name: &str) -> Result<Slice> {
        let all = official_slices();
        let lower = name.to_ascii_lowercase();
        all.iter()
            .find(|s| {
                s.short.to_ascii_lowercase() == lower || s.official.to_ascii_lowercase() == lower
            })
            .map(|s| s.slice.clone())
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|s| s.short.as_str()).collect();
                ModelError::Invalid(format!(
                    "unknown slice `{name}`; named slices: {}",
                    names.join(", ")
                ))
            })
    }

    /// A custom slice from a JSON file `{"layers_to_skip": [...], "ffn_hidden_dims": [...]}`.
    pub fn from_file(path: &Path) -> Result<Slice> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::file(path, format!("malformed JSON: {e}")))?;
        let list = |k: &str, required: bool| -> Result<Vec<usize>> {
            match v.get(k) {
                None | Some(Value::Null) if !required => Ok(Vec::new()),
                None | Some(Value::Null) => {
                    Err(ModelError::file(path, format!("missing field `{k}`")))
                }
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| x.as_u64().map(|n| n as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ModelError::file(
                            path,
                            format!("field `{k}` must be a list of non-negative integers"),
                        )
                    }),
                Some(_) => Err(ModelError::file(
                    path,
                    format!("field `{k}` must be a list"),
                )),
            }
        };
        Ok(Slice {
            name: path
                .file_stem()
                .map_or("custom".into(), |s| s.to_string_lossy().into_owned()),
            layers_to_skip: list("layers_to_skip", false)?,
            ffn_hidden_dims: list("ffn_hidden_dims", true)?,
        })
    }

    /// Original indices of the kept layers.
    pub fn kept_layers(&self, num_layers: usize) -> Vec<usize> {
        (0..num_layers)
            .filter(|l| !self.layers_to_skip.contains(l))
            .collect()
    }
}

/// What one kept layer does under a slice.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceLayer {
    /// Index of the layer in the stored model.
    pub layer: usize,
    pub ffn_width: usize,
    pub kind: LayerType,
    /// `Shared(p)` names the stored index of the producer.
    pub kv: KvSource,
    /// Sparsity of this layer in the sliced model (0 = dense).
    pub sparsity: f32,
    /// Φ⁻¹(sparsity) for the Gaussian top-k, `None` for a dense layer.
    pub sparsity_z: Option<f32>,
}

/// A slice checked against a model's config, ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct SlicePlan {
    pub name: String,
    pub layers: Vec<SliceLayer>,
    /// Number of KV-shared layers of the sliced model.
    pub num_kv_shared_layers: usize,
}

/// FFN widths must be multiples of this (the SIMD kernels' block).
pub const WIDTH_MULTIPLE: usize = 32;

impl SlicePlan {
    /// Checks `slice` against `cfg` and derives every kept layer's role (spec §6.2).
    pub fn new(cfg: &TextConfig, slice: &Slice) -> Result<SlicePlan> {
        let l = cfg.num_hidden_layers;
        let bad = |msg: String| ModelError::Invalid(format!("slice `{}`: {msg}", slice.name));
        for (i, &s) in slice.layers_to_skip.iter().enumerate() {
            if s >= l {
                return Err(bad(format!(
                    "layers_to_skip has layer {s}, but the model has {l} layers (0..{})",
                    l - 1
                )));
            }
            if slice.layers_to_skip[..i].contains(&s) {
                return Err(bad(format!("layers_to_skip lists layer {s} twice")));
            }
        }
        let kept = slice.kept_layers(l);
        if kept.is_empty() {
            return Err(bad("it skips every layer".into()));
        }
        if slice.ffn_hidden_dims.len() != kept.len() {
            return Err(bad(format!(
                "ffn_hidden_dims has {} entries, but the slice keeps {} layers (one width per kept layer)",
                slice.ffn_hidden_dims.len(),
                kept.len()
            )));
        }
        let first_shared = cfg.first_kv_shared_layer();
        for t in [LayerType::Sliding, LayerType::Full] {
            if let Some(p) = cfg.kv_producer(t) {
                let consumers =
                    (first_shared..l).any(|c| cfg.layer_types[c] == t && kept.contains(&c));
                if slice.layers_to_skip.contains(&p) && consumers {
                    return Err(bad(format!(
                        "layer {p} cannot be skipped: it produces the {} K/V that layers {first_shared}.. reuse",
                        if t == LayerType::Full { "full-attention" } else { "sliding-window" }
                    )));
                }
            }
        }
        // Sparsity: the sparse prefix keeps its values for the kept layers (the MatFormer
        // Lab rule `[s] * (sparse − skipped sparse) + [0] * rest`).
        let mut layers = Vec::with_capacity(kept.len());
        for (&layer, &w) in kept.iter().zip(&slice.ffn_hidden_dims) {
            let stored = cfg.intermediate_size[layer];
            if w == 0 || w > stored {
                return Err(bad(format!(
                    "layer {layer}: FFN width {w} is not in 1..={stored} (the stored width)"
                )));
            }
            if w != stored && w % WIDTH_MULTIPLE != 0 {
                return Err(bad(format!(
                    "layer {layer}: FFN width {w} is not a multiple of {WIDTH_MULTIPLE}"
                )));
            }
            layers.push(SliceLayer {
                layer,
                ffn_width: w,
                kind: cfg.layer_types[layer],
                kv: cfg.kv_source(layer),
                sparsity: cfg.activation_sparsity_pattern[layer],
                sparsity_z: {
                    let s = cfg.activation_sparsity_pattern[layer];
                    (s > 0.0).then(|| crate::text::ffn::normal_icdf_f32(s))
                },
            });
        }
        let num_kv_shared_layers = kept.iter().filter(|&&k| k >= first_shared).count();
        Ok(SlicePlan {
            name: slice.name.clone(),
            layers,
            num_kv_shared_layers,
        })
    }

    /// The plan that runs every layer at its stored width.
    pub fn full(cfg: &TextConfig) -> SlicePlan {
        Self::new(cfg, &Slice::full(cfg)).expect("the full slice is valid")
    }

    /// The config of the sliced model (what `gemma3n slice` writes and HF loads).
    pub fn sliced_config(&self, cfg: &TextConfig) -> TextConfig {
        let mut c = cfg.clone();
        c.num_hidden_layers = self.layers.len();
        c.intermediate_size = self.layers.iter().map(|l| l.ffn_width).collect();
        c.layer_types = self.layers.iter().map(|l| l.kind).collect();
        c.activation_sparsity_pattern = self.layers.iter().map(|l| l.sparsity).collect();
        c.num_kv_shared_layers = self.num_kv_shared_layers;
        c
    }

    /// Whether this plan is the whole model.
    pub fn is_full(&self, cfg: &TextConfig) -> bool {
        self.layers.len() == cfg.num_hidden_layers
            && self
                .layers
                .iter()
                .all(|l| l.ffn_width == cfg.intermediate_size[l.layer])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table parses into 16 slices whose sliced configs have the effective parameter
    /// counts of spec §6.3's "computed" column (independently computed from the shapes).
    #[test]
    fn official_slices_have_the_spec_parameter_counts() {
        let e4b = TextConfig::e4b();
        let all = official_slices();
        assert_eq!(all.len(), 16);
        let want: [(&str, usize, usize); 16] = [
            ("E4B", 35, 3_980_491_248),
            ("E2B", 30, 1_905_495_648),
            ("E1.96B", 30, 1_955_827_296),
            ("E2.54B", 35, 2_520_873_456),
            ("E2.69B", 35, 2_671_868_400),
            ("E2.98B", 35, 2_973_858_288),
            ("E3.18B", 35, 3_175_184_880),
            ("E3.39B", 35, 3_376_511_472),
            ("E3.59B", 35, 3_577_838_064),
            ("E3.79B", 35, 3_779_164_656),
            ("E2.49B", 35, 2_470_541_808),
            ("E2.73B", 35, 2_722_200_048),
            ("E2.98B-block", 35, 2_973_858_288),
            ("E3.24B", 35, 3_225_516_528),
            ("E3.49B", 35, 3_477_174_768),
            ("E3.79B-block", 35, 3_728_833_008),
        ];
        for (named, (short, layers, params)) in all.iter().zip(want) {
            assert_eq!(named.short, short);
            assert_eq!(named.num_layers, layers, "{short}");
            let plan = SlicePlan::new(&e4b, &named.slice).unwrap();
            let cfg = plan.sliced_config(&e4b);
            assert_eq!(cfg.num_hidden_layers, layers, "{short}");
            assert_eq!(cfg.stats().effective_params(), params, "{short}");
            // Every name resolves, short and official, in any case.
            assert_eq!(Slice::named(short).unwrap(), named.slice);
            assert_eq!(
                Slice::named(&named.official.to_uppercase()).unwrap(),
                named.slice
            );
        }
    }

    /// The E2B slice of E4B has exactly the E2B config (spec §6.1): 30 layers, width 8192,
    /// 10 shared layers whose producers are 18 and 19, sparsity on the first 10 layers.
    #[test]
    fn e2b_slice_is_the_e2b_config() {
        let e4b = TextConfig::e4b();
        let plan = SlicePlan::new(&e4b, &Slice::named("e2b").unwrap()).unwrap();
        let sliced = plan.sliced_config(&e4b);
        let e2b = TextConfig::e2b();
        assert_eq!(sliced, e2b);
        // Consumers keep reading the stored producers 18 and 19.
        for (k, sl) in plan.layers.iter().enumerate() {
            let expect = match e2b.kv_source(k) {
                KvSource::Own => KvSource::Own,
                KvSource::Shared(p) => KvSource::Shared(plan.layers[p].layer),
            };
            assert_eq!(sl.kv, expect, "kept layer {k}");
        }
    }

    #[test]
    fn invalid_slices_are_refused() {
        let e4b = TextConfig::e4b();
        let mk = |skip: Vec<usize>, dims: Vec<usize>| Slice {
            name: "t".into(),
            layers_to_skip: skip,
            ffn_hidden_dims: dims,
        };
        let err = |s: Slice| SlicePlan::new(&e4b, &s).unwrap_err().to_string();
        let e = err(mk(vec![18], vec![8192; 34]));
        assert!(e.contains("layer 18 cannot be skipped"), "{e}");
        let e = err(mk(vec![19], vec![8192; 34]));
        assert!(e.contains("layer 19 cannot be skipped"), "{e}");
        let e = err(mk(vec![], vec![8192; 34]));
        assert!(e.contains("34 entries") && e.contains("35 layers"), "{e}");
        let mut dims = vec![8192; 35];
        dims[3] = 32768;
        let e = err(mk(vec![], dims.clone()));
        assert!(e.contains("layer 3") && e.contains("16384"), "{e}");
        dims[3] = 1000;
        let e = err(mk(vec![], dims));
        assert!(e.contains("multiple of 32"), "{e}");
        let e = err(mk(vec![40], vec![8192; 34]));
        assert!(e.contains("layer 40"), "{e}");
        let e = err(mk(vec![3, 3], vec![8192; 34]));
        assert!(e.contains("twice"), "{e}");
        let e = Slice::named("E9B").unwrap_err().to_string();
        assert!(e.contains("unknown slice") && e.contains("E2B"), "{e}");
    }
}
