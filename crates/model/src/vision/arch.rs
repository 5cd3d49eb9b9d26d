//! The MobileNet-V5 block definition as data (spec/multimodal.md §1.4-§1.5): stages of blocks
//! written as timm architecture strings (`er_r1_k3_s2_e4_c128`, `uir_r1_a3_k5_s2_e6_c256`,
//! `mqa_r1_k3_h12_v2_s1_d64_c640`). The real `mobilenetv5_300m_enc` and small test variants
//! go through the same parser and the same tower code.

use crate::error::{ModelError, Result};

/// One block of the network.
#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    /// Edge residual (fused inverted bottleneck): full `kernel`×`kernel` conv with `stride`,
    /// norm + GELU, 1×1 projection to `out`, norm.
    EdgeResidual {
        kernel: usize,
        stride: usize,
        exp: f64,
        out: usize,
    },
    /// Universal inverted residual: optional depthwise `start` kernel, 1×1 expansion,
    /// optional depthwise `mid` kernel (0 = absent), 1×1 projection to `out`, layer scale.
    InvertedResidual {
        start: usize,
        mid: usize,
        stride: usize,
        exp: f64,
        out: usize,
    },
    /// Multi-query attention: `heads` query heads of `key_dim`, one K/V head, K/V optionally
    /// down-sampled by a depthwise `kernel` conv with `kv_stride`.
    MultiQueryAttention {
        heads: usize,
        key_dim: usize,
        kernel: usize,
        kv_stride: usize,
        out: usize,
    },
}

impl Block {
    /// Output channels.
    pub fn out(&self) -> usize {
        match *self {
            Block::EdgeResidual { out, .. }
            | Block::InvertedResidual { out, .. }
            | Block::MultiQueryAttention { out, .. } => out,
        }
    }

    /// Spatial stride of the block.
    pub fn stride(&self) -> usize {
        match *self {
            Block::EdgeResidual { stride, .. } | Block::InvertedResidual { stride, .. } => stride,
            Block::MultiQueryAttention { .. } => 1,
        }
    }
}

/// The whole encoder: stem width, stages of blocks, fusion adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionArch {
    /// Channels of the stem convolution (3×3, stride 2, with bias).
    pub stem: usize,
    pub stages: Vec<Vec<Block>>,
    /// Side of the fusion adapter's square output (16 → 256 soft tokens).
    pub msfa_resolution: usize,
    /// Channels of the output (the vision config's `hidden_size`, 2048).
    pub out_channels: usize,
    /// Expansion ratio of the fusion adapter's FFN (2).
    pub msfa_expansion: f64,
}

/// timm's `make_divisible(v, 8)`: the nearest multiple of 8 (at least 8), one step up if
/// rounding lost more than 10%.
pub fn make_divisible(v: f64) -> usize {
    let d = 8.0;
    let mut n = (((v + d / 2.0) as usize) / 8 * 8).max(8);
    if (n as f64) < 0.9 * v {
        n += 8;
    }
    n
}

/// The real encoder's stages (timm `mobilenetv5_300m_enc`).
fn mnv5_300m_stages() -> Vec<Vec<String>> {
    let mut s2: Vec<String> = vec!["uir_r1_a5_k5_s2_e6_c640".into()];
    s2.extend((0..7).map(|_| "uir_r1_a5_k0_s1_e4_c640".to_string()));
    s2.push("uir_r1_a0_k0_s1_e1_c640".into());
    for _ in 0..14 {
        s2.push("mqa_r1_k3_h12_v2_s1_d64_c640".into());
        s2.push("uir_r1_a0_k0_s1_e2_c640".into());
    }
    let mut s3: Vec<String> = vec!["uir_r1_a5_k5_s2_e6_c1280".into()];
    for _ in 0..19 {
        s3.push("mqa_r1_k3_h16_s1_d96_c1280".into());
        s3.push("uir_r1_a0_k0_s1_e2_c1280".into());
    }
    vec![
        vec![
            "er_r1_k3_s2_e4_c128".into(),
            "er_r1_k3_s1_e4_c128".into(),
            "er_r1_k3_s1_e4_c128".into(),
        ],
        vec![
            "uir_r1_a3_k5_s2_e6_c256".into(),
            "uir_r1_a5_k0_s1_e4_c256".into(),
            "uir_r1_a3_k0_s1_e4_c256".into(),
            "uir_r1_a5_k0_s1_e4_c256".into(),
            "uir_r1_a3_k0_s1_e4_c256".into(),
        ],
        s2,
        s3,
    ]
}

impl VisionArch {
    /// `mobilenetv5_300m_enc`, the tower of every released Gemma 3n checkpoint.
    pub fn mobilenetv5_300m_enc() -> VisionArch {
        VisionArch::from_strings(64, &mnv5_300m_stages(), 16, 2048)
            .expect("the built-in definition parses")
    }

    /// An architecture from timm block strings, one list per stage.
    pub fn from_strings(
        stem: usize,
        stages: &[Vec<String>],
        msfa_resolution: usize,
        out_channels: usize,
    ) -> Result<VisionArch> {
        if stages.len() < 2 {
            return Err(ModelError::Invalid(
                "vision architecture: at least two stages are needed (the fusion adapter takes the last two)"
                    .into(),
            ));
        }
        if stem == 0 || msfa_resolution == 0 || out_channels == 0 {
            return Err(ModelError::Invalid(
                "vision architecture: stem width, fusion resolution and output width must be positive"
                    .into(),
            ));
        }
        let mut out = Vec::with_capacity(stages.len());
        for (si, stage) in stages.iter().enumerate() {
            if stage.is_empty() {
                return Err(ModelError::Invalid(format!(
                    "vision architecture: stage {si} has no blocks"
                )));
            }
            let mut blocks = Vec::new();
            for s in stage {
                let (block, repeat) = parse_block(s)?;
                // timm repeats a block string; only the first copy keeps the stride.
                for r in 0..repeat {
                    let mut b = block.clone();
                    if r > 0 {
                        match &mut b {
                            Block::EdgeResidual { stride, .. }
                            | Block::InvertedResidual { stride, .. } => *stride = 1,
                            Block::MultiQueryAttention { .. } => {}
                        }
                    }
                    blocks.push(b);
                }
            }
            out.push(blocks);
        }
        Ok(VisionArch {
            stem,
            stages: out,
            msfa_resolution,
            out_channels,
            msfa_expansion: 2.0,
        })
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.stages.iter().map(Vec::len).sum()
    }
}

/// Parses one timm block string: the block and its repeat count.
pub fn parse_block(s: &str) -> Result<(Block, usize)> {
    let bad = |msg: &str| ModelError::Invalid(format!("vision block `{s}`: {msg}"));
    let mut parts = s.split('_');
    let kind = parts.next().ok_or_else(|| bad("empty"))?;
    let mut opt = std::collections::HashMap::new();
    for p in parts {
        if p.is_empty() {
            return Err(bad("empty option"));
        }
        let (key, val) = p.split_at(1);
        let v: f64 = val
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| {
                bad(&format!(
                    "option `{p}` is not a letter followed by a number"
                ))
            })?;
        if opt.insert(key.to_string(), v).is_some() {
            return Err(bad(&format!("option `{key}` given twice")));
        }
    }
    let int = |key: &str, default: Option<usize>| -> Result<usize> {
        match opt.get(key) {
            Some(&v) if v >= 0.0 && v.fract() == 0.0 => Ok(v as usize),
            Some(_) => Err(bad(&format!(
                "option `{key}` must be a non-negative integer"
            ))),
            None => default.ok_or_else(|| bad(&format!("option `{key}` missing"))),
        }
    };
    let repeat = int("r", Some(1))?;
    let out = int("c", None)?;
    let stride = int("s", Some(1))?;
    if repeat == 0 || out == 0 || !(1..=2).contains(&stride) {
        return Err(bad("repeat and channels must be positive, stride 1 or 2"));
    }
    let odd = |k: usize| k == 0 || k % 2 == 1;
    let exp_ratio = || -> Result<f64> {
        match opt.get("e") {
            Some(&e) if e > 0.0 => Ok(e),
            Some(_) => Err(bad("expansion ratio must be positive")),
            None => Err(bad("option `e` missing")),
        }
    };
    let block = match kind {
        "er" => {
            let kernel = int("k", None)?;
            if kernel == 0 || !odd(kernel) {
                return Err(bad("kernel must be odd"));
            }
            Block::EdgeResidual {
                kernel,
                stride,
                exp: exp_ratio()?,
                out,
            }
        }
        "uir" => {
            let start = int("a", Some(0))?;
            let mid = int("k", Some(0))?;
            if !odd(start) || !odd(mid) {
                return Err(bad("depthwise kernels must be odd"));
            }
            if stride == 2 && start == 0 && mid == 0 {
                return Err(bad("a strided block needs a depthwise conv"));
            }
            Block::InvertedResidual {
                start,
                mid,
                stride,
                exp: exp_ratio()?,
                out,
            }
        }
        "mqa" => {
            let kv_stride = int("v", Some(1))?;
            let kernel = int("k", Some(3))?;
            if stride != 1 || !(1..=2).contains(&kv_stride) || kernel == 0 || !odd(kernel) {
                return Err(bad(
                    "attention blocks have stride 1, K/V stride 1 or 2, an odd kernel",
                ));
            }
            Block::MultiQueryAttention {
                heads: int("h", None)?,
                key_dim: int("d", None)?,
                kernel,
                kv_stride,
                out,
            }
        }
        other => return Err(bad(&format!("unknown block type `{other}`"))),
    };
    Ok((block, repeat))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_encoder_has_the_spec_block_counts() {
        // spec/multimodal.md §1.2: 3, 5, 37 and 39 blocks; 14 + 19 attention blocks.
        let a = VisionArch::mobilenetv5_300m_enc();
        let counts: Vec<usize> = a.stages.iter().map(Vec::len).collect();
        assert_eq!(counts, [3, 5, 37, 39]);
        assert_eq!(a.num_blocks(), 84);
        let mqa = |s: &[Block]| {
            s.iter()
                .filter(|b| matches!(b, Block::MultiQueryAttention { .. }))
                .count()
        };
        assert_eq!(mqa(&a.stages[2]), 14);
        assert_eq!(mqa(&a.stages[3]), 19);
        assert_eq!(
            a.stages[2][9],
            Block::MultiQueryAttention {
                heads: 12,
                key_dim: 64,
                kernel: 3,
                kv_stride: 2,
                out: 640
            }
        );
        let out: Vec<usize> = a.stages.iter().map(|s| s.last().unwrap().out()).collect();
        assert_eq!(out, [128, 256, 640, 1280]);
    }

    #[test]
    fn bad_block_strings_are_errors() {
        for s in [
            "xx_r1_c8",
            "er_r1_k3_s3_e4_c8",
            "er_r1_k2_s1_e4_c8",
            "uir_r1_a0_k0_s2_e4_c8",
            "mqa_r1_k3_s1_d8_c8",
            "uir_r1_a3_kx_c8",
            "uir__c8",
            "uir_r1_c8_c8",
        ] {
            assert!(parse_block(s).is_err(), "{s}");
        }
        let (b, r) = parse_block("uir_r2_a3_k0_s2_e4_c24").unwrap();
        assert!(parse_block("uir_r1_a3_k0_s1_e0_c24").is_err());
        assert_eq!(make_divisible(128.0 * 6.0), 768);
        assert_eq!(make_divisible(20.0), 24);
        assert_eq!(make_divisible(3.0), 8);
        assert_eq!(r, 2);
        assert_eq!(b.stride(), 2);
    }
}
