// Per-row fused ops of the Gemma 3n decoder (one block per token row unless noted).
// Streams are stored as A blocks of [rows, D] at a stride of `ss` floats.

#define ALTUP_A 4
#define SQRT1_2 0.70710678118654752f

// Embedding rows: out[b] = table[ids[b]] * scale, or over[b] where flag[b] != 0
// (multimodal soft embeddings computed on the host).
extern "C" __global__ void embed_rows(const u32* ids, const bf16_t* table, int d, float scale,
                                      const float* over, const int* flag, float* out) {
    int b = blockIdx.x;
    const bf16_t* row = table + (size_t)ids[b] * d;
    bool o = flag != 0 && flag[b] != 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        out[(size_t)b * d + i] = o ? over[(size_t)b * d + i] : bf16_to_f32(row[i]) * scale;
}

// Per-layer inputs (spec §3.2): for row b and layer l (grid (L, rows)):
// pi = (RMSNorm(proj / sqrt(D)) * w + table_row * sqrt(P)) / sqrt(2).
extern "C" __global__ void ple_combine(const float* proj, const float* rows, const float* w,
                                       float* out, int lp, int p, float inv_sqrt_d,
                                       float sqrt_p, float eps) {
    size_t base = (size_t)blockIdx.y * lp + (size_t)blockIdx.x * p;
    float s = 0.0f;
    for (int i = threadIdx.x; i < p; i += blockDim.x) {
        float v = proj[base + i] * inv_sqrt_d;
        s += v * v;
    }
    s = block_sum(s);
    float inv = 1.0f / sqrtf(s / (float)p + eps);
    for (int i = threadIdx.x; i < p; i += blockDim.x) {
        float v = proj[base + i] * inv_sqrt_d * inv * w[i];
        out[base + i] = (v + rows[base + i] * sqrt_p) * SQRT1_2;
    }
}

// y * rms(ref) / sqrt(max(mean(y^2), 1e-5)) in place; grid (streams, rows), y of stream k
// at y + k * ys.
extern "C" __global__ void match_magnitude(float* y, size_t ys, const float* ref, int d) {
    float* yr = y + blockIdx.x * ys + (size_t)blockIdx.y * d;
    const float* rr = ref + (size_t)blockIdx.y * d;
    float a = 0.0f, c = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        a += rr[i] * rr[i];
        c += yr[i] * yr[i];
    }
    a = block_sum(a);
    c = block_sum(c);
    float target = sqrtf(a / (float)d);
    float now = sqrtf(fmaxf(c / (float)d, 1e-5f));
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = yr[i] * target / now;
}

// Router outputs m = tanh(RMSNorm(x) * w_norm / D . R^T) (A = 4 of them).
__device__ void altup_router(const float* x, const float* norm_w, const float* router, int d,
                             float eps, float m[ALTUP_A]) {
    float inv = rms_inv(x, d, eps);
    float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = x[i] * inv * norm_w[i] * (1.0f / (float)d);
        #pragma unroll
        for (int q = 0; q < ALTUP_A; q++) part[q] += v * router[(size_t)q * d + i];
    }
    block_sum4(part);
    #pragma unroll
    for (int q = 0; q < ALTUP_A; q++) m[q] = tanhf(part[q]);
}

// AltUp predict (spec §3.4 a) and the layer's input norm:
// pred_i = s_i + sum_j C[i][j] s_j with C = W_p . m(s_0); x = RMSNorm(pred_0) * w_in.
extern "C" __global__ void altup_predict(const float* s, size_t ss, const float* norm_w,
                                         const float* router, const float* coefs,
                                         const float* in_w, float* pred, float* x, int d,
                                         float eps) {
    size_t r = (size_t)blockIdx.x * d;
    float m[ALTUP_A];
    altup_router(s + r, norm_w, router, d, eps, m);
    float c[ALTUP_A][ALTUP_A];
    #pragma unroll
    for (int i = 0; i < ALTUP_A; i++)
        #pragma unroll
        for (int j = 0; j < ALTUP_A; j++) {
            float v = 0.0f;
            #pragma unroll
            for (int q = 0; q < ALTUP_A; q++) v += coefs[(i * ALTUP_A + j) * ALTUP_A + q] * m[q];
            c[i][j] = v;
        }
    float sq = 0.0f;
    for (int k = threadIdx.x; k < d; k += blockDim.x) {
        float sv[ALTUP_A];
        #pragma unroll
        for (int j = 0; j < ALTUP_A; j++) sv[j] = s[j * ss + r + k];
        #pragma unroll
        for (int i = 0; i < ALTUP_A; i++) {
            float v = sv[i];
            #pragma unroll
            for (int j = 0; j < ALTUP_A; j++) v += c[i][j] * sv[j];
            pred[i * ss + r + k] = v;
            if (i == 0) sq += v * v;
        }
    }
    sq = block_sum(sq);
    float inv = 1.0f / sqrtf(sq / (float)d + eps);
    for (int k = threadIdx.x; k < d; k += blockDim.x) x[r + k] = pred[r + k] * inv * in_w[k];
}

// out = add + RMSNorm(x) * w (LAuReL: x = the low-rank product, add = its input).
extern "C" __global__ void rms_norm_add(const float* x, int ldx, const float* w,
                                        const float* add, float* out, int d, float eps) {
    const float* xr = x + (size_t)blockIdx.x * ldx;
    size_t r = (size_t)blockIdx.x * d;
    float inv = rms_inv(xr, d, eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        out[r + i] = add[r + i] + xr[i] * inv * w[i];
}

// After attention: h = (a + RMSNorm(o) * w_post_attn + laurel) / sqrt(2);
// y = RMSNorm(h) * w_pre_ffn.
extern "C" __global__ void post_attention(const float* a, const float* o, int ldo,
                                          const float* w_pa, const float* lau,
                                          const float* w_pf, float* h, float* y, int d,
                                          float eps) {
    size_t r = (size_t)blockIdx.x * d;
    const float* orow = o + (size_t)blockIdx.x * ldo;
    float inv = rms_inv(orow, d, eps);
    float sq = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = (a[r + i] + orow[i] * inv * w_pa[i] + lau[r + i]) * SQRT1_2;
        h[r + i] = v;
        sq += v * v;
    }
    sq = block_sum(sq);
    float inv2 = 1.0f / sqrtf(sq / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) y[r + i] = h[r + i] * inv2 * w_pf[i];
}

// Gaussian top-k of the gate (spec §3.4 g): g = max(g - (mean + std * z), 0), in place.
extern "C" __global__ void sparsity_cutoff(float* g, int ldg, int f, float z) {
    float* row = g + (size_t)blockIdx.x * ldg;
    float s = 0.0f;
    for (int i = threadIdx.x; i < f; i += blockDim.x) s += row[i];
    float mean = block_sum(s) / (float)f;
    float v = 0.0f;
    for (int i = threadIdx.x; i < f; i += blockDim.x) v += (row[i] - mean) * (row[i] - mean);
    float var = block_sum(v) / (float)f;
    float cut = mean + sqrtf(var) * z;
    for (int i = threadIdx.x; i < f; i += blockDim.x) row[i] = fmaxf(row[i] - cut, 0.0f);
}

// out = gelu(g) * u, rows of f values (grid-stride over rows * f).
extern "C" __global__ void gelu_mul(const float* g, int ldg, const float* u, int ldu,
                                    float* out, int ldo, int rows, int f) {
    size_t n = (size_t)rows * f;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        int r = idx / f, c = idx % f;
        out[(size_t)r * ldo + c] = gelu_tanh(g[(size_t)r * ldg + c]) * u[(size_t)r * ldu + c];
    }
}

// After the FFN: h2 = h + RMSNorm(f) * w_post_ffn; AltUp correct (spec §3.4 h):
// p_i += (1 + W_c . m(h2))_i * (h2 - p_0); then v = p_0 * scale (the PLE gate's input).
extern "C" __global__ void post_ffn_correct(const float* h, const float* f, const float* w_pf,
                                            float* p, size_t ss, const float* norm_w,
                                            const float* router, const float* coefs,
                                            const float* out_scale, float* h2, float* v,
                                            int d, float eps) {
    size_t r = (size_t)blockIdx.x * d;
    float inv = rms_inv(f + r, d, eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) h2[r + i] = h[r + i] + f[r + i] * inv * w_pf[i];
    __syncthreads();
    float m[ALTUP_A];
    altup_router(h2 + r, norm_w, router, d, eps, m);
    float beta[ALTUP_A];
    #pragma unroll
    for (int i = 0; i < ALTUP_A; i++) {
        float s = 0.0f;
        #pragma unroll
        for (int q = 0; q < ALTUP_A; q++) s += coefs[i * ALTUP_A + q] * m[q];
        beta[i] = s + 1.0f;
    }
    for (int k = threadIdx.x; k < d; k += blockDim.x) {
        float delta = h2[r + k] - p[r + k];
        #pragma unroll
        for (int i = 0; i < ALTUP_A; i++) p[i * ss + r + k] += beta[i] * delta;
        float p0 = p[r + k];
        v[r + k] = out_scale ? p0 * out_scale[k] : p0;
    }
}

// PLE gate: g = gelu(g) * pi[row, layer], rows of p values.
extern "C" __global__ void ple_gate(float* g, const float* pi, int lp, int off, int p, int rows) {
    int n = rows * p;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += gridDim.x * blockDim.x) {
        int r = idx / p, c = idx % p;
        g[idx] = gelu_tanh(g[idx]) * pi[(size_t)r * lp + off + c];
    }
}

// PLE injection: streams 1.. += RMSNorm(q) * w.
extern "C" __global__ void ple_inject(const float* q, const float* w, float* s, size_t ss,
                                      int nstreams, int d, float eps) {
    size_t r = (size_t)blockIdx.x * d;
    float inv = rms_inv(q + r, d, eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = q[r + i] * inv * w[i];
        for (int k = 1; k < nstreams; k++) s[k * ss + r + i] += v;
    }
}

// Final merge (spec §3.5): the projected streams y_k (k = 1..A-1, at y + (k-1) * ys) are
// matched to stream 0's magnitude and averaged with it; out = RMSNorm(mean) * w.
extern "C" __global__ void unembed_merge(const float* s0, const float* y, size_t ys, int ny,
                                         const float* w, float* out, int d, float eps) {
    size_t r = (size_t)blockIdx.x * d;
    float a = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) a += s0[r + i] * s0[r + i];
    float target = sqrtf(block_sum(a) / (float)d);
    for (int i = threadIdx.x; i < d; i += blockDim.x) out[r + i] = s0[r + i];
    for (int k = 0; k < ny; k++) {
        const float* yr = y + k * ys + r;
        float c = 0.0f;
        for (int i = threadIdx.x; i < d; i += blockDim.x) c += yr[i] * yr[i];
        float now = sqrtf(fmaxf(block_sum(c) / (float)d, 1e-5f));
        for (int i = threadIdx.x; i < d; i += blockDim.x) out[r + i] += yr[i] * target / now;
    }
    float sq = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = out[r + i] / (float)(ny + 1);
        out[r + i] = v;
        sq += v * v;
    }
    float inv = 1.0f / sqrtf(block_sum(sq) / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) out[r + i] = out[r + i] * inv * w[i];
}

// Copies row `src` of each of n streams to row 0 (fast prefill keeps the last position).
extern "C" __global__ void keep_row(float* s, size_t ss, int n, int src, int d) {
    for (int k = 0; k < n; k++)
        for (int i = threadIdx.x; i < d; i += blockDim.x)
            s[k * ss + i] = s[k * ss + (size_t)src * d + i];
}
