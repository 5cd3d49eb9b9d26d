//! The MobileNet-V5 encoder (spec/multimodal.md §1.2-§1.6): stem, edge-residual, universal
//! inverted residual and multi-query attention blocks, the multi-scale fusion adapter and its
//! norm. Activations are channels-last f32 (`[h, w, c]`), so a 1×1 convolution is a plain
//! matmul and the output `[16·16, 2048]` is already the soft tokens in raster order.

use gemma3n_compute::cpu::conv::{
    avg_pool, multi_query_attention, resize_bilinear, upsample_nearest, Conv2d, DepthwiseConv2d,
};
use gemma3n_compute::cpu::{matmul, ops};
use gemma3n_compute::Matrix;

use super::arch::{make_divisible, Block, VisionArch};
use crate::checkpoint::TensorSource;
use crate::error::{ModelError, Result};

/// Every norm of the tower (RmsNorm2d) uses this epsilon.
const EPS: f32 = 1e-6;

/// An activation map: `h × w` pixels of `c` channels, channels-last.
pub struct Map {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

/// Observer of intermediate maps (`"stem"`, `"block.S.I"`), for tests against the reference.
pub type MapHook<'a> = &'a mut dyn FnMut(&str, &Map);

/// Where a block's weights come from: the source and the block's name prefix.
struct Loader<'a> {
    src: &'a dyn TensorSource,
    prefix: String,
}

impl Loader<'_> {
    fn name(&self, n: &str) -> String {
        format!("{}{}", self.prefix, n)
    }
    fn norm(&self, n: &str, c: usize) -> Result<Vec<f32>> {
        self.src.vector(&self.name(n), c)
    }
    /// A 1×1 convolution `[cout, cin, 1, 1]` as a `cout × cin` matrix.
    fn pointwise(&self, n: &str, cout: usize, cin: usize) -> Result<Pointwise> {
        let v = self.src.f32_tensor(&self.name(n), &[cout, cin, 1, 1])?;
        Ok(Pointwise {
            w: Matrix::from_f32(&v, cout, cin),
        })
    }
    fn depthwise(&self, n: &str, c: usize, k: usize, stride: usize) -> Result<DepthwiseConv2d> {
        let v = self.src.f32_tensor(&self.name(n), &[c, 1, k, k])?;
        Ok(DepthwiseConv2d::new(&v, c, k, stride))
    }
}

struct Pointwise {
    w: Matrix,
}

impl Pointwise {
    fn cout(&self) -> usize {
        self.w.rows()
    }
    fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * self.cout()];
        matmul(x, n, &self.w, &mut out);
        out
    }
}

/// RMS norm over channels (per pixel), then optionally GELU (tanh).
fn norm_act(x: &mut [f32], c: usize, w: &[f32], gelu: bool) {
    ops::rms_norm_rows(x, c, Some(w), EPS);
    if gelu {
        ops::gelu_tanh(x);
    }
}

struct EdgeResidual {
    conv_exp: Conv2d,
    bn1: Vec<f32>,
    conv_pwl: Pointwise,
    bn2: Vec<f32>,
    skip: bool,
}

struct InvertedResidual {
    dw_start: Option<(DepthwiseConv2d, Vec<f32>)>,
    pw_exp: Pointwise,
    pw_exp_bn: Vec<f32>,
    dw_mid: Option<(DepthwiseConv2d, Vec<f32>)>,
    pw_proj: Pointwise,
    pw_proj_bn: Vec<f32>,
    gamma: Option<Vec<f32>>,
    skip: bool,
}

struct KvPath {
    down: Option<(DepthwiseConv2d, Vec<f32>)>,
    proj: Pointwise,
}

struct Attention {
    norm: Vec<f32>,
    query: Pointwise,
    key: KvPath,
    value: KvPath,
    output: Pointwise,
    gamma: Vec<f32>,
    heads: usize,
    key_dim: usize,
}

enum Layer {
    Er(EdgeResidual),
    Uir(InvertedResidual),
    Mqa(Attention),
}

/// The loaded encoder.
pub struct VisionTower {
    arch: VisionArch,
    stem: Conv2d,
    stem_bn: Vec<f32>,
    stages: Vec<Vec<Layer>>,
    msfa: InvertedResidual,
    msfa_norm: Vec<f32>,
    out_channels: usize,
}

impl VisionTower {
    /// Loads the tower from `src`; tensor names are `prefix` + timm names
    /// (`model.vision_tower.timm_model.` in the checkpoints).
    pub fn load(src: &dyn TensorSource, prefix: &str, arch: &VisionArch) -> Result<VisionTower> {
        let at = |p: &str| Loader {
            src,
            prefix: format!("{prefix}{p}"),
        };
        let stem_l = at("conv_stem.");
        let stem_w = src.f32_tensor(&stem_l.name("conv.weight"), &[arch.stem, 3, 3, 3])?;
        let bias_name = stem_l.name("conv.bias");
        // The first hub upload had no stem bias and wrong tower weights (spec §1.8).
        let bias = src.vector(&bias_name, arch.stem).map_err(|e| {
            ModelError::Invalid(format!(
                "{bias_name}: {e} (checkpoints without the stem bias are the broken first upload \
                 of Gemma 3n's vision tower; download the current files)"
            ))
        })?;
        let stem = Conv2d::new(&stem_w, arch.stem, 3, 3, 2, Some(bias));
        let stem_bn = stem_l.norm("bn.weight", arch.stem)?;
        let mut cin = arch.stem;
        let mut stages = Vec::new();
        let mut stage_out = Vec::new();
        for (si, stage) in arch.stages.iter().enumerate() {
            let mut layers = Vec::new();
            for (bi, b) in stage.iter().enumerate() {
                let l = at(&format!("blocks.{si}.{bi}."));
                layers.push(load_block(&l, b, cin)?);
                cin = b.out();
            }
            stages.push(layers);
            stage_out.push(cin);
        }
        let n = stage_out.len();
        let fused = stage_out[n - 2] + stage_out[n - 1];
        let m = at("msfa.ffn.");
        let exp = make_divisible(fused as f64 * arch.msfa_expansion);
        let pw_exp = m.pointwise("pw_exp.conv.weight", exp, fused)?;
        let out_channels = arch.out_channels;
        let msfa = InvertedResidual {
            dw_start: None,
            pw_exp_bn: m.norm("pw_exp.bn.weight", exp)?,
            pw_exp,
            dw_mid: None,
            pw_proj: m.pointwise("pw_proj.conv.weight", out_channels, exp)?,
            pw_proj_bn: m.norm("pw_proj.bn.weight", out_channels)?,
            gamma: None,
            skip: false,
        };
        let msfa_norm = at("msfa.").norm("norm.weight", out_channels)?;
        Ok(VisionTower {
            arch: arch.clone(),
            stem,
            stem_bn,
            stages,
            msfa,
            msfa_norm,
            out_channels,
        })
    }

    /// Channels of the output (2048).
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// Soft tokens per image (`resolution²`, 256).
    pub fn tokens(&self) -> usize {
        self.arch.msfa_resolution * self.arch.msfa_resolution
    }

    /// Runs one image (`3 × size × size` planar RGB) and returns `[tokens, out_channels]`.
    pub fn forward(&self, pixels: &[f32], size: usize) -> Result<Vec<f32>> {
        self.forward_with_hook(pixels, size, None)
    }

    pub fn forward_with_hook(
        &self,
        pixels: &[f32],
        size: usize,
        mut hook: Option<MapHook<'_>>,
    ) -> Result<Vec<f32>> {
        if pixels.len() != 3 * size * size || size == 0 {
            return Err(ModelError::Invalid(format!(
                "vision tower: expected 3 x {size} x {size} pixel values, got {}",
                pixels.len()
            )));
        }
        // Planar RGB to channels-last.
        let plane = size * size;
        let mut x = vec![0f32; 3 * plane];
        for (p, px) in x.chunks_exact_mut(3).enumerate() {
            for (c, v) in px.iter_mut().enumerate() {
                *v = pixels[c * plane + p];
            }
        }
        let (h, w) = self.stem.out_size(size, size);
        let mut data = self.stem.forward(&x, size, size);
        norm_act(&mut data, self.arch.stem, &self.stem_bn, true);
        let mut m = Map {
            h,
            w,
            c: self.arch.stem,
            data,
        };
        if let Some(f) = hook.as_mut() {
            f("stem", &m);
        }
        // The fusion adapter takes the last two stages' outputs: keep a copy of the
        // second-to-last one, the last one is `m` itself.
        let mut hi: Option<Map> = None;
        let n_stages = self.stages.len();
        for (si, stage) in self.stages.iter().enumerate() {
            for (bi, layer) in stage.iter().enumerate() {
                m = run_layer(layer, m);
                if let Some(f) = hook.as_mut() {
                    f(&format!("block.{si}.{bi}"), &m);
                }
            }
            if si + 2 == n_stages {
                hi = Some(Map {
                    h: m.h,
                    w: m.w,
                    c: m.c,
                    data: m.data.clone(),
                });
            }
        }
        let hi = hi.expect("architectures have at least two stages");
        Ok(self.fuse(hi, m))
    }

    /// The multi-scale fusion adapter: the last stage brought to the previous one's
    /// resolution (nearest), channels concatenated `[previous, last]`, the FFN, pooled to the
    /// output resolution, normed.
    fn fuse(&self, hi: Map, lo: Map) -> Vec<f32> {
        let lo_data = if lo.h < hi.h || lo.w < hi.w {
            upsample_nearest(&lo.data, lo.h, lo.w, lo.c, hi.h, hi.w)
        } else {
            lo.data
        };
        let c = hi.c + lo.c;
        let n = hi.h * hi.w;
        let mut cat = vec![0f32; n * c];
        for (p, row) in cat.chunks_exact_mut(c).enumerate() {
            row[..hi.c].copy_from_slice(&hi.data[p * hi.c..(p + 1) * hi.c]);
            row[hi.c..].copy_from_slice(&lo_data[p * lo.c..(p + 1) * lo.c]);
        }
        let y = run_uir(
            &self.msfa,
            Map {
                h: hi.h,
                w: hi.w,
                c,
                data: cat,
            },
        );
        let r = self.arch.msfa_resolution;
        let oc = self.out_channels;
        let mut out = if y.h == r && y.w == r {
            y.data
        } else if y.h.is_multiple_of(r) && y.w.is_multiple_of(r) {
            avg_pool(&y.data, y.h, y.w, oc, y.h / r, y.w / r)
        } else {
            resize_bilinear(&y.data, y.h, y.w, oc, r, r)
        };
        ops::rms_norm_rows(&mut out, oc, Some(&self.msfa_norm), EPS);
        out
    }
}

fn load_block(l: &Loader<'_>, b: &Block, cin: usize) -> Result<Layer> {
    Ok(match *b {
        Block::EdgeResidual {
            kernel,
            stride,
            exp,
            out,
        } => {
            let mid = make_divisible(cin as f64 * exp);
            let w = l
                .src
                .f32_tensor(&l.name("conv_exp.weight"), &[mid, cin, kernel, kernel])?;
            Layer::Er(EdgeResidual {
                conv_exp: Conv2d::new(&w, mid, cin, kernel, stride, None),
                bn1: l.norm("bn1.weight", mid)?,
                conv_pwl: l.pointwise("conv_pwl.weight", out, mid)?,
                bn2: l.norm("bn2.weight", out)?,
                skip: cin == out && stride == 1,
            })
        }
        Block::InvertedResidual {
            start,
            mid: mid_k,
            stride,
            exp,
            out,
        } => {
            let start_stride = if mid_k > 0 { 1 } else { stride };
            let dw_start = if start > 0 {
                Some((
                    l.depthwise("dw_start.conv.weight", cin, start, start_stride)?,
                    l.norm("dw_start.bn.weight", cin)?,
                ))
            } else {
                None
            };
            let mid = make_divisible(cin as f64 * exp);
            let dw_mid = if mid_k > 0 {
                Some((
                    l.depthwise("dw_mid.conv.weight", mid, mid_k, stride)?,
                    l.norm("dw_mid.bn.weight", mid)?,
                ))
            } else {
                None
            };
            Layer::Uir(InvertedResidual {
                dw_start,
                pw_exp: l.pointwise("pw_exp.conv.weight", mid, cin)?,
                pw_exp_bn: l.norm("pw_exp.bn.weight", mid)?,
                dw_mid,
                pw_proj: l.pointwise("pw_proj.conv.weight", out, mid)?,
                pw_proj_bn: l.norm("pw_proj.bn.weight", out)?,
                gamma: Some(l.norm("layer_scale.gamma", out)?),
                skip: cin == out && stride == 1,
            })
        }
        Block::MultiQueryAttention {
            heads,
            key_dim,
            kernel,
            kv_stride,
            out,
        } => {
            if cin != out {
                return Err(ModelError::Invalid(format!(
                    "{}: attention block from {cin} to {out} channels (must keep the width)",
                    l.prefix
                )));
            }
            let kv = |which: &str| -> Result<KvPath> {
                let down = if kv_stride > 1 {
                    Some((
                        l.depthwise(
                            &format!("attn.{which}.down_conv.weight"),
                            cin,
                            kernel,
                            kv_stride,
                        )?,
                        l.norm(&format!("attn.{which}.norm.weight"), cin)?,
                    ))
                } else {
                    None
                };
                Ok(KvPath {
                    down,
                    proj: l.pointwise(&format!("attn.{which}.proj.weight"), key_dim, cin)?,
                })
            };
            Layer::Mqa(Attention {
                norm: l.norm("norm.weight", cin)?,
                query: l.pointwise("attn.query.proj.weight", heads * key_dim, cin)?,
                key: kv("key")?,
                value: kv("value")?,
                output: l.pointwise("attn.output.proj.weight", out, heads * key_dim)?,
                gamma: l.norm("layer_scale.gamma", out)?,
                heads,
                key_dim,
            })
        }
    })
}

fn run_layer(layer: &Layer, x: Map) -> Map {
    match layer {
        Layer::Er(b) => run_er(b, x),
        Layer::Uir(b) => run_uir(b, x),
        Layer::Mqa(b) => run_mqa(b, x),
    }
}

fn add_residual(y: &mut [f32], x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}

fn scale_channels(y: &mut [f32], gamma: &[f32]) {
    for row in y.chunks_exact_mut(gamma.len()) {
        row.iter_mut().zip(gamma).for_each(|(a, g)| *a *= g);
    }
}

fn run_er(b: &EdgeResidual, x: Map) -> Map {
    let (h, w) = b.conv_exp.out_size(x.h, x.w);
    let mut e = b.conv_exp.forward(&x.data, x.h, x.w);
    let mid = b.bn1.len();
    norm_act(&mut e, mid, &b.bn1, true);
    let mut y = b.conv_pwl.forward(&e, h * w);
    drop(e);
    let c = b.bn2.len();
    norm_act(&mut y, c, &b.bn2, false);
    if b.skip {
        add_residual(&mut y, &x.data);
    }
    Map { h, w, c, data: y }
}

fn run_uir(b: &InvertedResidual, x: Map) -> Map {
    let (mut h, mut w) = (x.h, x.w);
    let cin = x.c;
    let shortcut = if b.skip { Some(&x.data) } else { None };
    let started;
    let input: &[f32] = match &b.dw_start {
        Some((conv, bn)) => {
            let (h2, w2) = conv.out_size(h, w);
            let mut t = conv.forward(&x.data, h, w);
            norm_act(&mut t, cin, bn, false);
            (h, w) = (h2, w2);
            started = t;
            &started
        }
        None => &x.data,
    };
    let mid = b.pw_exp.cout();
    let mut e = b.pw_exp.forward(input, h * w);
    norm_act(&mut e, mid, &b.pw_exp_bn, true);
    if let Some((conv, bn)) = &b.dw_mid {
        let (h2, w2) = conv.out_size(h, w);
        e = conv.forward(&e, h, w);
        norm_act(&mut e, mid, bn, true);
        (h, w) = (h2, w2);
    }
    let c = b.pw_proj.cout();
    let mut y = b.pw_proj.forward(&e, h * w);
    drop(e);
    norm_act(&mut y, c, &b.pw_proj_bn, false);
    if let Some(g) = &b.gamma {
        scale_channels(&mut y, g);
    }
    if let Some(s) = shortcut {
        add_residual(&mut y, s);
    }
    Map { h, w, c, data: y }
}

fn run_mqa(b: &Attention, x: Map) -> Map {
    let (h, w, c) = (x.h, x.w, x.c);
    let n = h * w;
    let mut xn = x.data.clone();
    ops::rms_norm_rows(&mut xn, c, Some(&b.norm), EPS);
    let q = b.query.forward(&xn, n);
    let kv = |p: &KvPath| -> (Vec<f32>, usize) {
        match &p.down {
            Some((conv, bn)) => {
                let (h2, w2) = conv.out_size(h, w);
                let mut t = conv.forward(&xn, h, w);
                ops::rms_norm_rows(&mut t, c, Some(bn), EPS);
                (p.proj.forward(&t, h2 * w2), h2 * w2)
            }
            None => (p.proj.forward(&xn, n), n),
        }
    };
    let (k, m) = kv(&b.key);
    let (v, _) = kv(&b.value);
    let a = multi_query_attention(&q, &k, &v, n, m, b.heads, b.key_dim);
    let mut y = b.output.forward(&a, n);
    scale_channels(&mut y, &b.gamma);
    add_residual(&mut y, &x.data);
    Map { h, w, c, data: y }
}
