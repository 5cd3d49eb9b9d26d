//! The audio encoder (spec/multimodal.md §4): the sub-sampling convolutions with their
//! cumulative group norms (4× in time), the input projection, the conformer blocks
//! (half-step feed-forwards, local attention with relative positions, light convolution) and
//! the output decimation.
//!
//! Everything in the tower is causal except the sub-sampling convolutions, which look two
//! input rows ahead (their time padding is at the end). So the tower is written as a stream
//! ([`AudioStream`]): mel frames go in piece by piece, each layer keeps what the next piece
//! needs (the group norms' running sums, the convolutions' pending rows, the attention's past
//! keys and values, the light convolution's past rows), and a clip encoded whole
//! ([`AudioTower::forward`]) is the same stream fed once and finished.

use gemma3n_compute::cpu::conformer::{
    causal_depthwise_conv1d, cumulative_group_norm, CumulativeStats, LocalAttention,
};
use gemma3n_compute::cpu::conv::Conv2d;
use gemma3n_compute::cpu::{matmul, ops, GemmWeight};
use gemma3n_compute::Matrix;

use crate::checkpoint::TensorSource;
use crate::config::AudioConfig;
use crate::error::{ModelError, Result};

/// Observer of intermediate outputs (`"sscp"`, `"block.I"`: `[frames, width]` of the frames
/// computed by one call; the last block gives only the frames the decimation keeps), for
/// tests against the reference.
pub type AudioHook<'a> = dyn FnMut(&str, &[f32]) + 'a;

fn clamp(x: &mut [f32], bound: f32) {
    x.iter_mut().for_each(|v| *v = v.clamp(-bound, bound));
}

fn project(x: &[f32], n: usize, w: &GemmWeight) -> Vec<f32> {
    let mut out = vec![0f32; n * w.rows()];
    w.matmul(x, n, &mut out);
    out
}

/// One sub-sampling convolution: conv (no bias), cumulative group norm, ReLU.
struct SscpConv {
    conv: Conv2d,
    norm: Vec<f32>,
    k: usize,
    stride: usize,
}

struct FeedForward {
    pre_norm: Vec<f32>,
    up: GemmWeight,
    down: GemmWeight,
    post_norm: Vec<f32>,
}

struct Attention {
    pre_norm: Vec<f32>,
    /// `q_proj`, `k_proj` and `v_proj` stacked: `[3·width, width]`, one matmul.
    qkv: GemmWeight,
    /// Per-dimension query factor `q_scale · softplus(per_dim_scale)`, repeated per head.
    q_factor: Vec<f32>,
    /// `[left + 1, width]`: row `d` is the projected sinusoid of distance `d`.
    rel: Vec<f32>,
    post: GemmWeight,
    post_norm: Vec<f32>,
}

struct LightConv {
    pre_norm: Vec<f32>,
    start: GemmWeight,
    /// PyTorch layout `[width, 1, k]`.
    depthwise: Vec<f32>,
    conv_norm: Vec<f32>,
    end: GemmWeight,
}

struct Conformer {
    ffw_start: FeedForward,
    attention: Attention,
    lconv: LightConv,
    ffw_end: FeedForward,
    norm: Vec<f32>,
}

pub struct AudioTower {
    pub cfg: AudioConfig,
    sscp: [SscpConv; 2],
    /// Frequency bins after each sub-sampling convolution.
    freq: [usize; 2],
    input_proj: GemmWeight,
    layers: Vec<Conformer>,
}

/// The sinusoid of relative distance `d` (spec §4.3): `sin(d·ω_i)` then `cos(d·ω_i)`,
/// `ω_i = exp(−i·ln(10⁴)/(width/2 − 1))`.
fn sinusoid(d: usize, width: usize) -> Vec<f32> {
    let half = width / 2;
    // As the reference computes it in f32: the exponent is rounded before `exp`.
    let inc = -((1e4f64).ln() / (half.max(2) - 1) as f64) as f32;
    let mut s = vec![0f32; width];
    for i in 0..half {
        let w = (i as f32 * inc).exp();
        let a = d as f32 * w;
        s[i] = a.sin();
        s[half + i] = a.cos();
    }
    s
}

/// Matrices `[d, d]` stacked by rows, kept in the first one's dtype (bf16 and f32 round-trip
/// exactly through f32).
fn stacked(src: &dyn TensorSource, names: &[String], d: usize) -> Result<Matrix> {
    let mut all = Vec::with_capacity(names.len() * d * d);
    let mut dtype = None;
    for n in names {
        let m = src.matrix(n, &[d, d])?;
        dtype.get_or_insert(m.dtype());
        all.extend(m.to_f32_vec());
    }
    let rows = names.len() * d;
    Ok(match dtype {
        Some(gemma3n_compute::DType::BF16) => {
            Matrix::from_f32_as(&all, rows, d, gemma3n_compute::DType::BF16)
        }
        _ => Matrix::from_f32(&all, rows, d),
    })
}

impl AudioTower {
    /// Loads the tower from `prefix` + the names of spec §4.5.
    pub fn load(src: &dyn TensorSource, prefix: &str, cfg: &AudioConfig) -> Result<AudioTower> {
        let n = |s: &str| format!("{prefix}{s}");
        let d = cfg.hidden_size;
        let mut freq = [0; 2];
        let mut f_in = cfg.input_feat_size;
        let mut c_in = 1;
        let mut convs = Vec::new();
        for (i, fi) in freq.iter_mut().enumerate() {
            let (k, s, c) = (cfg.sscp_kernel[i], cfg.sscp_stride[i], cfg.sscp_channels[i]);
            let w = src.f32_tensor(
                &n(&format!("subsample_conv_projection.conv_{i}.conv.weight")),
                &[c, c_in, k, k],
            )?;
            let norm = src.vector(
                &n(&format!("subsample_conv_projection.conv_{i}.norm.weight")),
                c,
            )?;
            // Frequency padding 1 on both sides (spec §4.1).
            if f_in + 2 < k {
                return Err(ModelError::Invalid(format!(
                    "audio tower: {f_in} frequency bins are too few for sub-sampling kernel {k}"
                )));
            }
            *fi = (f_in + 2 - k) / s + 1;
            convs.push(SscpConv {
                conv: Conv2d::new(&w, c, c_in, k, s, None),
                norm,
                k,
                stride: s,
            });
            f_in = *fi;
            c_in = c;
        }
        let input_proj = GemmWeight::new(src.matrix(
            &n("subsample_conv_projection.input_proj_linear.weight"),
            &[d, freq[1] * cfg.sscp_channels[1]],
        )?);
        let hd = cfg.head_dim();
        let left = cfg.context_left - 1;
        // q_scale = head_dim^(-1/2) / softplus(0) (spec §4.3), as the reference rounds it
        // in f32 (one ulp below the exact value for 192).
        let q_scale = ((hd as f64).powf(-0.5) as f32 * (1.0 / std::f32::consts::LN_2)) as f64;
        let sinusoids: Vec<f32> = (0..=left).flat_map(|dd| sinusoid(dd, d)).collect();
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let b = |s: &str| n(&format!("conformer.{i}.{s}"));
            let ffw = |which: &str| -> Result<FeedForward> {
                Ok(FeedForward {
                    pre_norm: src.vector(&b(&format!("{which}.pre_layer_norm.weight")), d)?,
                    up: GemmWeight::new(
                        src.matrix(&b(&format!("{which}.ffw_layer_1.weight")), &[4 * d, d])?,
                    ),
                    down: GemmWeight::new(
                        src.matrix(&b(&format!("{which}.ffw_layer_2.weight")), &[d, 4 * d])?,
                    ),
                    post_norm: src.vector(&b(&format!("{which}.post_layer_norm.weight")), d)?,
                })
            };
            let pds = src.vector(&b("attention.attn.per_dim_scale"), hd)?;
            let factor: Vec<f32> = pds
                .iter()
                .map(|&p| {
                    let sp = if p > 20.0 {
                        p as f64
                    } else {
                        (p as f64).exp().ln_1p()
                    };
                    (q_scale * sp) as f32
                })
                .collect();
            let pos_proj = src.matrix(
                &b("attention.attn.relative_position_embedding.pos_proj.weight"),
                &[d, d],
            )?;
            let attention = Attention {
                pre_norm: src.vector(&b("attention.pre_attn_norm.weight"), d)?,
                qkv: GemmWeight::new(stacked(
                    src,
                    &["q_proj", "k_proj", "v_proj"]
                        .map(|m| b(&format!("attention.attn.{m}.weight"))),
                    d,
                )?),
                q_factor: factor.iter().cycle().take(d).copied().collect(),
                rel: {
                    let mut rel = vec![0f32; (left + 1) * d];
                    matmul(&sinusoids, left + 1, &pos_proj, &mut rel);
                    rel
                },
                post: GemmWeight::new(src.matrix(&b("attention.post.weight"), &[d, d])?),
                post_norm: src.vector(&b("attention.post_norm.weight"), d)?,
            };
            let kk = cfg.conv_kernel_size;
            let lconv = LightConv {
                pre_norm: src.vector(&b("lconv1d.pre_layer_norm.weight"), d)?,
                start: GemmWeight::new(src.matrix(&b("lconv1d.linear_start.weight"), &[2 * d, d])?),
                depthwise: src.f32_tensor(&b("lconv1d.depthwise_conv1d.weight"), &[d, 1, kk])?,
                conv_norm: src.vector(&b("lconv1d.conv_norm.weight"), d)?,
                end: GemmWeight::new(src.matrix(&b("lconv1d.linear_end.weight"), &[d, d])?),
            };
            layers.push(Conformer {
                ffw_start: ffw("ffw_layer_start")?,
                attention,
                lconv,
                ffw_end: ffw("ffw_layer_end")?,
                norm: src.vector(&b("norm.weight"), d)?,
            });
        }
        let [c0, c1] = convs
            .try_into()
            .map_err(|_| ModelError::Invalid("two convs".into()))?;
        Ok(AudioTower {
            cfg: cfg.clone(),
            sscp: [c0, c1],
            freq,
            input_proj,
            layers,
        })
    }

    /// Conformer width.
    pub fn width(&self) -> usize {
        self.cfg.hidden_size
    }

    /// A new stream (nothing seen yet).
    pub fn stream(&self) -> AudioStream<'_> {
        let d = self.cfg.hidden_size;
        let left = self.cfg.context_left - 1;
        AudioStream {
            tower: self,
            mel: Vec::new(),
            mel_valid: Vec::new(),
            rows0: Vec::new(),
            stats: Default::default(),
            layers: self
                .layers
                .iter()
                .map(|_| LayerState {
                    k: Vec::new(),
                    v: Vec::new(),
                    valid: Vec::new(),
                    conv: vec![0.0; (self.cfg.conv_kernel_size - 1) * d],
                    left,
                })
                .collect(),
            frames: 0,
            finished: false,
        }
    }

    /// Encodes one clip: `mel` is `frames × input_feat_size`, `valid` its frame mask (spec §3;
    /// padding frames false, at the end). Returns the decimated encodings `[n, width]` with
    /// padded frames zeroed and their validity (spec §4.4).
    pub fn forward(
        &self,
        mel: &[f32],
        valid: &[bool],
        hook: Option<&mut AudioHook<'_>>,
    ) -> Result<(Vec<f32>, Vec<bool>)> {
        let mut s = self.stream();
        let mut noop = |_: &str, _: &[f32]| {};
        let hook: &mut AudioHook<'_> = match hook {
            Some(h) => h,
            None => &mut noop,
        };
        // One pass over the whole clip: the same as pushing it and finishing, without a
        // second pass for the last frames.
        s.append(mel, valid)?;
        s.finished = true;
        s.step(true, hook)
    }
}

/// What one conformer layer keeps between pieces of a stream.
struct LayerState {
    /// Keys and values of the last `left` frames (`[≤ left, width]`) and their validity.
    k: Vec<f32>,
    v: Vec<f32>,
    valid: Vec<bool>,
    /// The light convolution's input rows of the last `kernel − 1` frames.
    conv: Vec<f32>,
    left: usize,
}

/// An audio encoder fed piece by piece: [`AudioStream::push`] takes mel frames and returns the
/// decimated encodings that are complete, [`AudioStream::finish`] ends the stream (the
/// sub-sampling convolutions' end padding) and returns the rest. The concatenated outputs equal
/// [`AudioTower::forward`] on the whole input.
pub struct AudioStream<'a> {
    tower: &'a AudioTower,
    /// Mel rows not yet consumed by the first convolution.
    mel: Vec<f32>,
    /// Validity of every mel frame seen (indexed from the start of the stream).
    mel_valid: Vec<bool>,
    /// Rows of the first convolution's output not yet consumed by the second.
    rows0: Vec<f32>,
    stats: [CumulativeStats; 2],
    layers: Vec<LayerState>,
    /// Conformer frames produced so far.
    frames: usize,
    finished: bool,
}

impl AudioStream<'_> {
    /// Feeds `mel` (`frames × input_feat_size`) with its validity; returns the encodings (and
    /// their validity) that these frames complete.
    pub fn push(&mut self, mel: &[f32], valid: &[bool]) -> Result<(Vec<f32>, Vec<bool>)> {
        self.append(mel, valid)?;
        self.step(false, &mut |_, _| {})
    }

    /// Ends the stream; returns the last encodings.
    pub fn finish(&mut self) -> Result<(Vec<f32>, Vec<bool>)> {
        if self.finished {
            return Ok((Vec::new(), Vec::new()));
        }
        self.finished = true;
        self.step(true, &mut |_, _| {})
    }

    /// Checks and stores input frames.
    fn append(&mut self, mel: &[f32], valid: &[bool]) -> Result<()> {
        let fdim = self.tower.cfg.input_feat_size;
        if self.finished {
            return Err(ModelError::Invalid(
                "audio stream: input after finish".into(),
            ));
        }
        if !mel.len().is_multiple_of(fdim) || mel.len() / fdim != valid.len() {
            return Err(ModelError::Invalid(format!(
                "audio features: {} values and {} mask entries are not frames of {fdim} mel bins",
                mel.len(),
                valid.len()
            )));
        }
        if let Some(i) = mel.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::Invalid(format!(
                "audio features: value {i} is not finite"
            )));
        }
        self.mel.extend_from_slice(mel);
        self.mel_valid.extend_from_slice(valid);
        Ok(())
    }

    /// Runs the sub-sampling convolution `i` over the rows `input` (`[rows, freq_in, c_in]`)
    /// as far as they allow (all of them, with the end padding, when `last`); consumed rows are
    /// removed from `input`. Returns the normalized, rectified output rows.
    fn sscp(&mut self, i: usize, input_is_mel: bool, last: bool) -> Vec<f32> {
        let t = self.tower;
        let conv = &t.sscp[i];
        let (f_in, c_in) = if i == 0 {
            (t.cfg.input_feat_size, 1)
        } else {
            (t.freq[0], t.cfg.sscp_channels[0])
        };
        let row = f_in * c_in;
        let input = if input_is_mel {
            &mut self.mel
        } else {
            &mut self.rows0
        };
        let rows = input.len() / row;
        let pad_end = if last { conv.k - 1 } else { 0 };
        let (mut y, ho, _) = conv
            .conv
            .forward_padded(input, rows, f_in, [0, pad_end, 1, 1]);
        let consumed = (ho * conv.stride).min(rows);
        input.drain(..consumed * row);
        if last {
            input.clear();
        }
        let group = t.freq[i] * t.cfg.sscp_channels[i];
        cumulative_group_norm(
            &mut y,
            group,
            &conv.norm,
            t.cfg.sscp_eps,
            true,
            &mut self.stats[i],
        );
        y
    }

    fn step(&mut self, last: bool, hook: &mut AudioHook<'_>) -> Result<(Vec<f32>, Vec<bool>)> {
        let t = self.tower;
        let d = t.cfg.hidden_size;
        let y0 = self.sscp(0, true, last);
        self.rows0.extend_from_slice(&y0);
        let y1 = self.sscp(1, false, last);
        let n = y1.len() / (t.freq[1] * t.cfg.sscp_channels[1]);
        if n == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        // Frequency-major flatten is the channels-last layout already (spec §4.1).
        let mut x = project(&y1, n, &t.input_proj);
        hook("sscp", &x);
        // Validity at the conformer rate: the mel frame at the start of the receptive field.
        let stride = t.cfg.sscp_stride[0] * t.cfg.sscp_stride[1];
        let last_mel = self.mel_valid.len().saturating_sub(1);
        let valid: Vec<bool> = (self.frames..self.frames + n)
            .map(|f| {
                self.mel_valid
                    .get((f * stride).min(last_mel))
                    .copied()
                    .unwrap_or(false)
            })
            .collect();
        // Decimation: frames 0, r, 2r, … of the whole stream are kept. The last layer computes
        // the parts after its light convolution's depthwise step only for them.
        let r = t.cfg.reduction_factor;
        let keep: Vec<usize> = (0..n)
            .filter(|j| (self.frames + j).is_multiple_of(r))
            .collect();
        let layers = t.layers.len();
        for (i, (layer, state)) in t.layers.iter().zip(&mut self.layers).enumerate() {
            let rows = (i + 1 == layers).then_some(keep.as_slice());
            x = layer.forward(&t.cfg, x, &valid, state, rows);
            hook(&format!("block.{i}"), &x);
        }
        if layers == 0 {
            x = gather(&x, d, &keep);
        }
        // Padding frames zeroed.
        let mut out_valid = Vec::with_capacity(keep.len());
        for (row, &j) in x.chunks_exact_mut(d).zip(&keep) {
            if !valid[j] {
                row.fill(0.0);
            }
            out_valid.push(valid[j]);
        }
        self.frames += n;
        Ok((x, out_valid))
    }
}

impl FeedForward {
    /// `x ← x + w · RMSNorm_post(clip(W2 · silu(W1 · RMSNorm_pre(clip(x)))))`.
    fn forward(&self, cfg: &AudioConfig, x: &mut [f32], n: usize, w: f32) {
        let d = cfg.hidden_size;
        let mut h = x.to_vec();
        clamp(&mut h, cfg.gradient_clipping);
        ops::rms_norm_rows(&mut h, d, Some(&self.pre_norm), cfg.rms_norm_eps);
        let mut u = project(&h, n, &self.up);
        ops::silu(&mut u);
        let mut y = project(&u, n, &self.down);
        clamp(&mut y, cfg.gradient_clipping);
        ops::rms_norm_rows(&mut y, d, Some(&self.post_norm), cfg.rms_norm_eps);
        x.iter_mut().zip(&y).for_each(|(a, b)| *a += w * b);
    }
}

/// Rows `rows` of `x` (`d` wide).
fn gather(x: &[f32], d: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter()
        .flat_map(|&j| &x[j * d..(j + 1) * d])
        .copied()
        .collect()
}

impl Conformer {
    /// One block over the `n` frames of `x` (`[n, width]`). With `rows`, only those frames'
    /// outputs are computed and returned (the layer's state still advances over every frame).
    fn forward(
        &self,
        cfg: &AudioConfig,
        mut x: Vec<f32>,
        valid: &[bool],
        st: &mut LayerState,
        rows: Option<&[usize]>,
    ) -> Vec<f32> {
        let d = cfg.hidden_size;
        let n = valid.len();
        let eps = cfg.rms_norm_eps;
        self.ffw_start.forward(cfg, &mut x, n, cfg.residual_weight);

        // Local self-attention (the residual is the unclamped input).
        let a = &self.attention;
        let mut h = x.to_vec();
        clamp(&mut h, cfg.gradient_clipping);
        ops::rms_norm_rows(&mut h, d, Some(&a.pre_norm), eps);
        let qkv = project(&h, n, &a.qkv);
        let mut q = Vec::with_capacity(n * d);
        for row in qkv.chunks_exact(3 * d) {
            q.extend(row[..d].iter().zip(&a.q_factor).map(|(v, f)| v * f));
            st.k.extend_from_slice(&row[d..2 * d]);
            st.v.extend_from_slice(&row[2 * d..]);
        }
        st.valid.extend_from_slice(valid);
        let att = LocalAttention {
            heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
            left: st.left,
            softcap: cfg.logit_cap,
        };
        let o = att.forward(&q, &st.k, &st.v, &st.valid, &a.rel);
        let keep = st.valid.len().min(st.left);
        let drop = st.valid.len() - keep;
        st.k.drain(..drop * d);
        st.v.drain(..drop * d);
        st.valid.drain(..drop);
        let mut y = project(&o, n, &a.post);
        clamp(&mut y, cfg.gradient_clipping);
        ops::rms_norm_rows(&mut y, d, Some(&a.post_norm), eps);
        x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);

        // Padding frames are zeroed before the light convolution.
        for (row, &ok) in x.chunks_exact_mut(d).zip(valid) {
            if !ok {
                row.fill(0.0);
            }
        }

        // Light convolution.
        let l = &self.lconv;
        let mut h = x.to_vec();
        ops::rms_norm_rows(&mut h, d, Some(&l.pre_norm), eps);
        let g = ops::glu_rows(&project(&h, n, &l.start), d);
        let k = cfg.conv_kernel_size;
        let c = causal_depthwise_conv1d(&g, d, &l.depthwise, k, &st.conv);
        let mut hist = std::mem::take(&mut st.conv);
        hist.extend_from_slice(&g);
        st.conv = hist.split_off(hist.len() - (k - 1) * d);
        // From here on every frame is on its own: compute only the wanted ones.
        let (mut c, mut x, n) = match rows {
            Some(r) => (gather(&c, d, r), gather(&x, d, r), r.len()),
            None => (c, x, n),
        };
        clamp(&mut c, cfg.gradient_clipping);
        ops::rms_norm_rows(&mut c, d, Some(&l.conv_norm), eps);
        ops::silu(&mut c);
        let e = project(&c, n, &l.end);
        x.iter_mut().zip(&e).for_each(|(a, b)| *a += b);

        self.ffw_end.forward(cfg, &mut x, n, cfg.residual_weight);
        clamp(&mut x, cfg.gradient_clipping);
        ops::rms_norm_rows(&mut x, d, Some(&self.norm), eps);
        x
    }
}
