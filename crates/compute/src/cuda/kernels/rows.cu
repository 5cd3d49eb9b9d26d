// Per-row fused ops of the Gemma 3n decoder (one block per token row unless noted).
// Streams are stored as A blocks of [rows, D] at a stride of `ss` floats.

#define ALTUP_A 4
#define SQRT1_2 0.70710678118654752f
// Values per thread of the register-resident row kernels: a row of d values lives in the
// registers of one block (blockDim.x * RPT >= d, chosen by the host), so the phases of a
// kernel (norms, router, updates) re-read nothing from memory.
#define RPT 8
// The AltUp row kernels come twice: as NAME for a decode step (registers unbounded: one
// block per row, and the fewest steps after the wait), and as NAME_rows for a prefill's
// many rows, with registers bounded so that ROWS_MIN_BLOCKS blocks of 256 threads fit on
// a multiprocessor (one leaves 8 warps there).
#ifndef ROWS_MIN_BLOCKS
#define ROWS_MIN_BLOCKS 2
#endif
#define ROW_KERNEL_PAIR(NAME, PARAMS, ARGS)                                                \
    extern "C" __global__ void NAME PARAMS { NAME##_body ARGS; }                            \
    extern "C" __global__ void __launch_bounds__(256, ROWS_MIN_BLOCKS) NAME##_rows PARAMS { \
        NAME##_body ARGS;                                                                   \
    }
// Kernels with outputs x0, x1, x2 also write that output as the bf16 parts of the next
// prefill GEMM's activations (split_bf16_at; rows of d values, packed; x0 null: not at all,
// x1 / x2 null: fewer parts).
#define FOR_ROW(j, i, d) _Pragma("unroll") for (int j = 0, i = threadIdx.x; j < RPT; j++, i += blockDim.x) if (i < (d))

// Embedding rows: out[b] = table[ids[b]] * scale, or over[b] where flag[b] != 0
// (multimodal soft embeddings computed on the host).
extern "C" __global__ void embed_rows(const u32* ids, const void* table, const void* tsc,
                                      int fmt, int d, float scale, const float* over,
                                      const int* flag, float* out) {
    pdl_start();
    int b = blockIdx.x;
    bool o = flag != 0 && flag[b] != 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        out[(size_t)b * d + i] =
            o ? over[(size_t)b * d + i] : weight_at(fmt, table, tsc, ids[b], d, i) * scale;
}

// Per-layer inputs (spec §3.2): for row b and layer l, item b * L + l of `items` (one warp
// each, PLE_WARPS a block; a block per item, summing over the block, took 123 us for 2048
// E4B rows): pi = (RMSNorm(proj / sqrt(D)) * w + table_row * sqrt(P)) / sqrt(2), rows of
// P values at item * P. The table rows arrive as f32, or as bf16 when `rows_bf16` (a bf16
// table, copied raw).
#define PLE_WARPS 8
extern "C" __global__ void __launch_bounds__(PLE_WARPS * 32)
ple_combine(const float* proj, const void* rows, int rows_bf16, const float* w, float* out,
            int items, int p, float inv_sqrt_d, float sqrt_p, float eps) {
    pdl_start();
    const int item = blockIdx.x * PLE_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (item >= items) return;
    const size_t base = (size_t)item * p;
    float s = 0.0f;
    for (int i = lane; i < p; i += 32) {
        float v = proj[base + i] * inv_sqrt_d;
        s += v * v;
    }
    float inv = 1.0f / sqrtf(warp_sum(s) / (float)p + eps);
    for (int i = lane; i < p; i += 32) {
        float v = proj[base + i] * inv_sqrt_d * inv * w[i];
        float t = rows_bf16 ? bf16_to_f32(((const bf16_t*)rows)[base + i])
                            : ((const float*)rows)[base + i];
        out[base + i] = (v + t * sqrt_p) * SQRT1_2;
    }
}

// y * rms(ref) / sqrt(max(mean(y^2), 1e-5)) in place; grid (streams, rows), y of stream k
// at y + k * ys.
extern "C" __global__ void match_magnitude(float* y, size_t ys, const float* ref, int d) {
    pdl_start();
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

// Router outputs m = tanh(RMSNorm(x) * w_norm / D . R^T) (A = 4 of them), with x, the norm
// weight and the router rows already in registers.
__device__ __forceinline__ void altup_router_regs(const float xv[RPT], const float nw[RPT],
                                                  const float rw[ALTUP_A][RPT], int d,
                                                  float eps, float m[ALTUP_A]) {
    float sq = 0.0f;
    FOR_ROW(j, i, d) sq += xv[j] * xv[j];
    float inv = 1.0f / sqrtf(block_sum(sq) / (float)d + eps);
    float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    FOR_ROW(j, i, d) {
        float v = xv[j] * inv * nw[j] * (1.0f / (float)d);
        #pragma unroll
        for (int q = 0; q < ALTUP_A; q++) part[q] += v * rw[q][j];
    }
    block_sum4(part);
    #pragma unroll
    for (int q = 0; q < ALTUP_A; q++) m[q] = tanhf(part[q]);
}

// The router's weights of this thread's values.
#define LOAD_ROUTER(nw, rw, norm_w, router, d)                                        \
    float nw[RPT], rw[ALTUP_A][RPT];                                                  \
    FOR_ROW(j, i, d) {                                                                \
        nw[j] = norm_w[i];                                                            \
        _Pragma("unroll") for (int q = 0; q < ALTUP_A; q++) rw[q][j] = router[(size_t)q * d + i]; \
    }

// AltUp prediction i of value jj of the streams sv: sv_i + sum_j ci[j] sv_j, ci = C[i]
// (one expression for altup_predict and post_ffn_correct, so both round alike).
__device__ __forceinline__ float altup_prediction(const float* ci, const float (&sv)[ALTUP_A][RPT],
                                                  int jj, int i) {
    float v = sv[i][jj];
    #pragma unroll
    for (int j = 0; j < ALTUP_A; j++) v += ci[j] * sv[j][jj];
    return v;
}

// [Optional: the previous layer's PLE injection, s_k += RMSNorm(inj) * w_inj for k >= 1,
// written back.] AltUp predict (spec §3.4 a) and the layer's input norm:
// pred_i = s_i + sum_j C[i][j] s_j with C = W_p . m(s_0); x = RMSNorm(pred_0) * w_in.
// Only pred_0 is written (to pred's stream 0), and C (to rc, A x A values a row):
// post_ffn_correct makes the other predictions again from the streams, which it reads
// anyway, so they never go to memory.
// Every input is loaded first, in one round, then the reductions run on registers. With an
// injection the kernel before is the injection's product, and the streams were written
// before that one (common.cu: the kernel two back has finished when this one starts), so
// they are loaded and the router (stream 0 only, which the injection leaves alone) is
// computed while that product finishes.
__device__ __forceinline__ void altup_predict_body(float* s, size_t ss, const float* inj,
                                                  const float* w_inj, const float* norm_w,
                                                  const float* router, const float* coefs,
                                                  const float* in_w, float* pred, float* rc,
                                                  float* x, bf16_t* x0, bf16_t* x1, bf16_t* x2,
                                                  int d, float eps) {
    __shared__ float cf[ALTUP_A * ALTUP_A * ALTUP_A];
    size_t r = (size_t)blockIdx.x * d;
    LOAD_ROUTER(nw, rw, norm_w, router, d)
    float iw[RPT], qv[RPT], qw[RPT];
    FOR_ROW(j, i, d) iw[j] = in_w[i];
    for (int t = threadIdx.x; t < ALTUP_A * ALTUP_A * ALTUP_A; t += blockDim.x) cf[t] = coefs[t];
    float sv[ALTUP_A][RPT], m[ALTUP_A];
    // The streams and the router's outputs.
    auto route = [&]() {
        #pragma unroll
        for (int k = 0; k < ALTUP_A; k++) FOR_ROW(j, i, d) sv[k][j] = s[k * ss + r + i];
        altup_router_regs(sv[0], nw, rw, d, eps, m);
    };
    if (inj) {
        FOR_ROW(j, i, d) qw[j] = w_inj[i];
        route();
    }
    pdl_start();
    if (!inj) route();
    if (inj) {
        float sq = 0.0f;
        FOR_ROW(j, i, d) { qv[j] = inj[r + i]; sq += qv[j] * qv[j]; }
        float inv = 1.0f / sqrtf(block_sum(sq) / (float)d + eps);
        FOR_ROW(j, i, d) {
            float v = qv[j] * inv * qw[j];
            #pragma unroll
            for (int k = 1; k < ALTUP_A; k++) {
                sv[k][j] += v;
                s[k * ss + r + i] = sv[k][j];
            }
        }
    }
    float c[ALTUP_A][ALTUP_A];
    #pragma unroll
    for (int i = 0; i < ALTUP_A; i++)
        #pragma unroll
        for (int j = 0; j < ALTUP_A; j++) {
            float v = 0.0f;
            #pragma unroll
            for (int q = 0; q < ALTUP_A; q++) v += cf[(i * ALTUP_A + j) * ALTUP_A + q] * m[q];
            c[i][j] = v;
        }
    if (threadIdx.x < ALTUP_A * ALTUP_A)
        rc[blockIdx.x * ALTUP_A * ALTUP_A + threadIdx.x] =
            c[threadIdx.x / ALTUP_A][threadIdx.x % ALTUP_A];
    float p0[RPT], sq = 0.0f;
    FOR_ROW(jj, k, d) {
        const float v = altup_prediction(c[0], sv, jj, 0);
        pred[r + k] = v;
        p0[jj] = v;
        sq += v * v;
    }
    float inv = 1.0f / sqrtf(block_sum(sq) / (float)d + eps);
    FOR_ROW(j, k, d) {
        const float xv = p0[j] * inv * iw[j];
        x[r + k] = xv;
        if (x0) split_bf16_at(xv, r + k, x0, x1, x2);
    }
}
ROW_KERNEL_PAIR(altup_predict,
                (float* s, size_t ss, const float* inj, const float* w_inj,
                 const float* norm_w, const float* router, const float* coefs,
                 const float* in_w, float* pred, float* rc, float* x, bf16_t* x0, bf16_t* x1,
                 bf16_t* x2, int d, float eps),
                (s, ss, inj, w_inj, norm_w, router, coefs, in_w, pred, rc, x, x0, x1, x2, d, eps))

// After attention: laurel = x + RMSNorm(lr) * w_laurel (LAuReL's output, lr its low-rank
// product); h = (a + RMSNorm(o) * w_post_attn + laurel) / sqrt(2); y = RMSNorm(h) * w_pre_ffn.
// One form for decode and prefill: at 104 registers two blocks fit already (a form bounded
// like the AltUp kernels' took 59 us against 42 for a 2048-row E4B prefill).
extern "C" __global__ void post_attention(const float* a, const float* o, int ldo,
                                          const float* w_pa, const float* lr,
                                          const float* w_lau, const float* x,
                                          const float* w_pf, float* h, float* y, bf16_t* y0,
                                          bf16_t* y1, bf16_t* y2, int d, float eps) {
    size_t r = (size_t)blockIdx.x * d;
    float pa[RPT], pl[RPT], pf[RPT];
    FOR_ROW(j, i, d) { pa[j] = w_pa[i]; pl[j] = w_lau[i]; pf[j] = w_pf[i]; }
    // a and x come from the AltUp prediction, launches before the products this kernel
    // follows: loaded before the wait.
    float ov[RPT], lv[RPT], av[RPT], xv[RPT];
    FOR_ROW(j, i, d) { av[j] = a[r + i]; xv[j] = x[r + i]; }
    pdl_start();
    const float* orow = o + (size_t)blockIdx.x * ldo;
    float sums[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    FOR_ROW(j, i, d) {
        ov[j] = orow[i];
        lv[j] = lr[r + i];
        sums[0] += ov[j] * ov[j];
        sums[1] += lv[j] * lv[j];
    }
    block_sum4(sums);
    float inv_o = 1.0f / sqrtf(sums[0] / (float)d + eps);
    float inv_l = 1.0f / sqrtf(sums[1] / (float)d + eps);
    float hv[RPT], sq = 0.0f;
    FOR_ROW(j, i, d) {
        float lau = lv[j] * inv_l * pl[j] + xv[j];
        float v = (av[j] + ov[j] * inv_o * pa[j] + lau) * SQRT1_2;
        hv[j] = v;
        h[r + i] = v;
        sq += v * v;
    }
    float inv2 = 1.0f / sqrtf(block_sum(sq) / (float)d + eps);
    FOR_ROW(j, i, d) {
        const float yv = hv[j] * inv2 * pf[j];
        y[r + i] = yv;
        if (y0) split_bf16_at(yv, r + i, y0, y1, y2);
    }
}

// Gaussian top-k of the gate (spec §3.4 g): g = max(g - (mean + std * z), 0), in place.
// Rows of up to 16 * blockDim.x values are held in registers.
extern "C" __global__ void __launch_bounds__(1024) sparsity_cutoff(float* g, int ldg, int f, float z) {
    pdl_start();
    float* row = g + (size_t)blockIdx.x * ldg;
    float v[16], s = 0.0f;
    #pragma unroll
    for (int j = 0, i = threadIdx.x; j < 16; j++, i += blockDim.x)
        if (i < f) { v[j] = row[i]; s += v[j]; }
    float mean = block_sum(s) / (float)f;
    float q = 0.0f;
    #pragma unroll
    for (int j = 0, i = threadIdx.x; j < 16; j++, i += blockDim.x)
        if (i < f) q += (v[j] - mean) * (v[j] - mean);
    float var = block_sum(q) / (float)f;
    float cut = mean + sqrtf(var) * z;
    #pragma unroll
    for (int j = 0, i = threadIdx.x; j < 16; j++, i += blockDim.x)
        if (i < f) row[i] = fmaxf(v[j] - cut, 0.0f);
}

// out = gelu(g) * u, rows of f values. Grid (column blocks, rows): 4 values per thread, with
// 16-byte accesses where the row allows them.
extern "C" __global__ void gelu_mul(const float* g, int ldg, const float* u, int ldu,
                                    float* out, int ldo, int rows, int f) {
    pdl_start();
    const int r = blockIdx.y;
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (r >= rows || c >= f) return;
    const float* gr = g + (size_t)r * ldg + c;
    const float* ur = u + (size_t)r * ldu + c;
    float* o = out + (size_t)r * ldo + c;
    if (c + 4 <= f && ((((size_t)gr | (size_t)ur | (size_t)o) & 15) == 0)) {
        const float4 a = *reinterpret_cast<const float4*>(gr);
        const float4 b = *reinterpret_cast<const float4*>(ur);
        *reinterpret_cast<float4*>(o) = make_float4(gelu_tanh(a.x) * b.x, gelu_tanh(a.y) * b.y,
                                                    gelu_tanh(a.z) * b.z, gelu_tanh(a.w) * b.w);
    } else {
        for (int j = 0; j < 4 && c + j < f; j++) o[j] = gelu_tanh(gr[j]) * ur[j];
    }
}

// Four values of a gate or up row at i: f32, or bf16 (the gate/up GEMM's bf16 output).
template <typename T>
__device__ __forceinline__ float4 load4(const T* row, int i);
template <>
__device__ __forceinline__ float4 load4<float>(const float* row, int i) {
    return *reinterpret_cast<const float4*>(row + i);
}
template <>
__device__ __forceinline__ float4 load4<bf16_t>(const bf16_t* row, int i) {
    const uint2 w = *reinterpret_cast<const uint2*>(row + i);
    return make_float4(__uint_as_float(w.x << 16), __uint_as_float(w.x & 0xffff0000u),
                       __uint_as_float(w.y << 16), __uint_as_float(w.y & 0xffff0000u));
}

// f32 values that other blocks of the same kernel wrote (the persistent decode kernel's
// gate row): read through L2 (`__ldcg`), past this multiprocessor's L1.
struct f32_l2 {
    float v;
};
template <>
__device__ __forceinline__ float4 load4<f32_l2>(const f32_l2* row, int i) {
    return __ldcg(reinterpret_cast<const float4*>(row + i));
}

// The Gaussian top-k cut-off of a gate row of f values, mean(g) + std(g) * z, in one read
// of the row: each thread sums its values (4 at 4 * threadIdx.x, then every 4 * blockDim.x)
// about its first one, and the threads' means and squared deviations are merged as in
// Chan's pairwise formula, so a row far from zero loses no digits.
template <typename T>
__device__ __forceinline__ float topk_cut(const T* gr, int f, float z) {
    const int i0 = 4 * threadIdx.x, step = 4 * blockDim.x;
    const float x0 = i0 < f ? load4(gr, i0).x : 0.0f;
    float s = 0.0f, q = 0.0f;
    int n = 0;
    #pragma unroll 4
    for (int i = i0; i < f; i += step) {
        const float4 v = load4(gr, i);
        const float a = v.x - x0, b = v.y - x0, c = v.z - x0, d = v.w - x0;
        s += (a + b) + (c + d);
        q += (a * a + b * b) + (c * c + d * d);
        n += 4;
    }
    // The mean about the row's first value x, so that its rounding is that of the spread.
    const float x = load4(gr, 0).x, nf = (float)n;
    const float mean = block_sum(nf * (x0 - x) + s) / (float)f;
    float m2 = 0.0f;
    if (n) {
        const float dm = (x0 - x) + s / nf - mean;
        m2 = (q - s * s / nf) + nf * dm * dm;
    }
    return x + (mean + sqrtf(fmaxf(block_sum(m2), 0.0f) / (float)f) * z);
}

// One activation row of a sparse layer's up product with the Gaussian top-k folded in (the
// decode step: one launch where sparsity_cutoff and the masked up GEMV were two, the GEMV
// with a block for every 8 units). Every block computes the gate row's cut-off itself
// (topk_cut; the row comes from L2), lists the kept units of its group of SU_UNITS (gate >
// cut) in unit order, and computes act[u] = gelu(gate[u] - cut) * (up[u] . y) for each of
// them, one warp a unit; its other units get 0. Grid ceil(f / SU_UNITS). Needs f a multiple
// of 4 and a 16-byte-aligned gate row (topk_cut), k <= SU_MAX_K and ldw multiples of 8, and
// 16-byte-aligned up rows and y (the launcher checks).
#define SU_UNITS 128
#define SU_THREADS 256
#define SU_MAX_K 4096

extern "C" __global__ void __launch_bounds__(SU_THREADS)
sparse_up_rows_bf16(const float* gate, const bf16_t* up, int ldw, const float* y, int k,
                    float* act, int f, float z) {
    __shared__ __align__(16) float ys[SU_MAX_K];
    __shared__ int list[SU_UNITS];
    __shared__ int wcount[SU_UNITS / 32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int u0 = blockIdx.x * SU_UNITS;
    pdl_start();
    for (int i = 4 * threadIdx.x; i < k; i += 4 * SU_THREADS)
        *reinterpret_cast<float4*>(ys + i) = *reinterpret_cast<const float4*>(y + i);
    const float cut = topk_cut(gate, f, z);
    // Warps 0..SU_UNITS/32-1 look at one unit a lane.
    bool kept = false;
    int pos = 0;
    if (threadIdx.x < SU_UNITS) {
        const int u = u0 + threadIdx.x;
        if (u < f) {
            kept = gate[u] > cut;
            if (!kept) act[u] = 0.0f;
        }
        const unsigned b = __ballot_sync(0xffffffffu, kept);
        pos = __popc(b & ((1u << lane) - 1u));
        if (lane == 0) wcount[warp] = __popc(b);
    }
    __syncthreads();
    int total = 0;
    #pragma unroll
    for (int w = 0; w < SU_UNITS / 32; w++) {
        if (w < warp) pos += wcount[w];
        total += wcount[w];
    }
    if (kept) list[pos] = threadIdx.x;
    __syncthreads();
    for (int e = warp; e < total; e += SU_THREADS / 32) {
        const int u = u0 + list[e];
        const bf16_t* wr = up + (size_t)u * ldw;
        float acc = 0.0f, wf[8];
        #pragma unroll 4
        for (int i = lane * 8; i < k; i += 256) {
            unpack_bf16x8(__ldg(reinterpret_cast<const uint4*>(wr + i)), wf);
            const float4 a = *reinterpret_cast<const float4*>(ys + i);
            const float4 c = *reinterpret_cast<const float4*>(ys + i + 4);
            acc += ((wf[0] * a.x + wf[1] * a.y) + (wf[2] * a.z + wf[3] * a.w)) +
                   ((wf[4] * c.x + wf[5] * c.y) + (wf[6] * c.z + wf[7] * c.w));
        }
        acc = warp_sum(acc);
        if (lane == 0) act[u] = gelu_tanh(gate[u] - cut) * acc;
    }
}

// The FFN activation of prefill rows, written as the down product's bf16 parts: a =
// gelu(g') * u with g' = max(g - cut, 0), cut = mean(g) + std(g) * z over the row (the
// Gaussian top-k of the sparse layers; z_on = 0: g' = g), split as split_bf16_rows splits
// (p1, p2 may be null; rows of ldp values): what sparsity_cutoff, gelu_mul and
// split_bf16_rows do, in one kernel. grid (rows), block FFN_ACT_THREADS; f a multiple of 4,
// rows of g and u aligned for 4-value loads. A block walks its row in steps of 4 values a
// thread: with the cut-off, once over g for its mean and variance (`topk_cut`), then once
// over both for the result (the gate mostly from L2 then). Small blocks, so that many rows
// are in flight on each multiprocessor (a block of f / 16 threads holding the row in
// registers fitted one row per multiprocessor and spent its time waiting: 131 us for E4B's
// 2048 x 16384).
#define FFN_ACT_THREADS 256
template <typename T>
__device__ __forceinline__ void ffn_act_split_body(const T* g, int ldg, const T* u, int ldu,
                                                   bf16_t* p0, bf16_t* p1, bf16_t* p2,
                                                   int ldp, int f, int z_on, float z) {
    pdl_start();
    const T* gr = g + (size_t)blockIdx.x * ldg;
    const T* ur = u + (size_t)blockIdx.x * ldu;
    const int step = 4 * blockDim.x;
    const float cut = z_on ? topk_cut(gr, f, z) : 0.0f;
    bf16_t* parts[3] = {p0, p1, p2};
    const size_t o = (size_t)blockIdx.x * ldp;
    #pragma unroll 4
    for (int i = 4 * threadIdx.x; i < f; i += step) {
        float4 gv = load4(gr, i);
        const float4 uv = load4(ur, i);
        if (z_on) {
            gv.x = fmaxf(gv.x - cut, 0.0f);
            gv.y = fmaxf(gv.y - cut, 0.0f);
            gv.z = fmaxf(gv.z - cut, 0.0f);
            gv.w = fmaxf(gv.w - cut, 0.0f);
        }
        float v[4] = {gelu_tanh(gv.x) * uv.x, gelu_tanh(gv.y) * uv.y, gelu_tanh(gv.z) * uv.z,
                      gelu_tanh(gv.w) * uv.w};
        #pragma unroll
        for (int p = 0; p < 3; p++) {
            if (!parts[p]) break;
            const u32 w0 = take_bf16_pair(v[0], v[1]), w1 = take_bf16_pair(v[2], v[3]);
            *reinterpret_cast<uint2*>(parts[p] + o + i) = make_uint2(w0, w1);
        }
    }
}

extern "C" __global__ void __launch_bounds__(FFN_ACT_THREADS)
ffn_act_split(const float* g, int ldg, const float* u, int ldu, bf16_t* p0, bf16_t* p1,
              bf16_t* p2, int ldp, int f, int z_on, float z) {
    ffn_act_split_body(g, ldg, u, ldu, p0, p1, p2, ldp, f, z_on, z);
}
// The same from a bf16 gate and up (rows 8-byte aligned).
extern "C" __global__ void __launch_bounds__(FFN_ACT_THREADS)
ffn_act_split_bf16(const bf16_t* g, int ldg, const bf16_t* u, int ldu, bf16_t* p0, bf16_t* p1,
                   bf16_t* p2, int ldp, int f, int z_on, float z) {
    ffn_act_split_body(g, ldg, u, ldu, p0, p1, p2, ldp, f, z_on, z);
}

// After the FFN: h2 = h + RMSNorm(f) * w_post_ffn; AltUp correct (spec §3.4 h):
// p_i += (1 + W_c . m(h2))_i * (h2 - p_0), with the predictions p_i made again from the
// streams s and the prediction coefficients rc of altup_predict, written to p (ss apart);
// then v = p_0 * scale (the PLE gate's input). Every input is loaded first, in one round.
__device__ __forceinline__ void post_ffn_correct_body(const float* h, const float* f,
                                                     const float* w_pf, const float* s,
                                                     const float* rc, float* p, size_t ss,
                                                     const float* norm_w, const float* router,
                                                     const float* coefs, const float* out_scale,
                                                     float* h2, float* v, bf16_t* v0,
                                                     bf16_t* v1, bf16_t* v2, int d, float eps) {
    __shared__ float cf[ALTUP_A * ALTUP_A], pc[ALTUP_A * ALTUP_A];
    size_t r = (size_t)blockIdx.x * d;
    LOAD_ROUTER(nw, rw, norm_w, router, d)
    float wf[RPT], sc[RPT];
    FOR_ROW(j, i, d) { wf[j] = w_pf[i]; sc[j] = out_scale ? out_scale[i] : 1.0f; }
    // h, the streams and the prediction coefficients were written before the FFN's
    // products (two launches at least): loaded, and the predictions made, before the wait.
    for (int t = threadIdx.x; t < ALTUP_A * ALTUP_A; t += blockDim.x) {
        cf[t] = coefs[t];
        pc[t] = rc[blockIdx.x * ALTUP_A * ALTUP_A + t];
    }
    float fv[RPT], hv[RPT], pv[ALTUP_A][RPT], sf = 0.0f;
    FOR_ROW(j, i, d) {
        hv[j] = h[r + i];
        #pragma unroll
        for (int k = 0; k < ALTUP_A; k++) pv[k][j] = s[k * ss + r + i];
    }
    __syncthreads();
    FOR_ROW(j, i, d) {
        float np[ALTUP_A];
        #pragma unroll
        for (int k = 0; k < ALTUP_A; k++) np[k] = altup_prediction(pc + k * ALTUP_A, pv, j, k);
        #pragma unroll
        for (int k = 0; k < ALTUP_A; k++) pv[k][j] = np[k];
    }
    pdl_start();
    FOR_ROW(j, i, d) {
        fv[j] = f[r + i];
        sf += fv[j] * fv[j];
    }
    float inv = 1.0f / sqrtf(block_sum(sf) / (float)d + eps);
    FOR_ROW(j, i, d) hv[j] = hv[j] + fv[j] * inv * wf[j];
    float m[ALTUP_A];
    altup_router_regs(hv, nw, rw, d, eps, m);
    float beta[ALTUP_A];
    #pragma unroll
    for (int i = 0; i < ALTUP_A; i++) {
        float s = 0.0f;
        #pragma unroll
        for (int q = 0; q < ALTUP_A; q++) s += cf[i * ALTUP_A + q] * m[q];
        beta[i] = s + 1.0f;
    }
    FOR_ROW(j, k, d) {
        float delta = hv[j] - pv[0][j];
        #pragma unroll
        for (int i = 0; i < ALTUP_A; i++) p[i * ss + r + k] = pv[i][j] + beta[i] * delta;
        float np0 = pv[0][j] + beta[0] * delta;
        const float vv = out_scale ? np0 * sc[j] : np0;
        v[r + k] = vv;
        if (v0) split_bf16_at(vv, r + k, v0, v1, v2);
        if (h2) h2[r + k] = hv[j];
    }
}
ROW_KERNEL_PAIR(post_ffn_correct,
                (const float* h, const float* f, const float* w_pf, const float* s,
                 const float* rc, float* p, size_t ss,
                 const float* norm_w, const float* router, const float* coefs,
                 const float* out_scale, float* h2, float* v, bf16_t* v0, bf16_t* v1,
                 bf16_t* v2, int d, float eps),
                (h, f, w_pf, s, rc, p, ss, norm_w, router, coefs, out_scale, h2, v, v0, v1, v2, d,
                 eps))

// PLE gate: g = gelu(g) * pi[row, layer], rows of p values; also as bf16 parts of rows of
// p values when g0 is not null (g1, g2 may be).
extern "C" __global__ void ple_gate(float* g, const float* pi, int lp, int off, int p, int rows,
                                    bf16_t* g0, bf16_t* g1, bf16_t* g2) {
    pdl_start();
    int n = rows * p;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += gridDim.x * blockDim.x) {
        int r = idx / p, c = idx % p;
        const float v = gelu_tanh(g[idx]) * pi[(size_t)r * lp + off + c];
        g[idx] = v;
        if (g0) split_bf16_at(v, idx, g0, g1, g2);
    }
}

// PLE injection: streams 1.. += RMSNorm(q) * w.
extern "C" __global__ void ple_inject(const float* q, const float* w, float* s, size_t ss,
                                      int nstreams, int d, float eps) {
    pdl_start();
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
    pdl_start();
    size_t r = (size_t)blockIdx.x * d;
    float sv[RPT], yv[ALTUP_A - 1][RPT], wv[RPT];
    float a = 0.0f, c[ALTUP_A - 1] = {0.0f, 0.0f, 0.0f};
    FOR_ROW(j, i, d) {
        sv[j] = s0[r + i];
        wv[j] = w[i];
        a += sv[j] * sv[j];
        #pragma unroll
        for (int k = 0; k < ALTUP_A - 1; k++) {
            yv[k][j] = k < ny ? y[k * ys + r + i] : 0.0f;
            c[k] += yv[k][j] * yv[k][j];
        }
    }
    float target = sqrtf(block_sum(a) / (float)d);
    float scale[ALTUP_A - 1];
    #pragma unroll
    for (int k = 0; k < ALTUP_A - 1; k++) scale[k] = sqrtf(fmaxf(block_sum(c[k]) / (float)d, 1e-5f));
    float mv[RPT], sq = 0.0f;
    FOR_ROW(j, i, d) {
        float v = sv[j];
        #pragma unroll
        for (int k = 0; k < ALTUP_A - 1; k++)
            if (k < ny) v += yv[k][j] * target / scale[k];
        v = v / (float)(ny + 1);
        mv[j] = v;
        sq += v * v;
    }
    float inv = 1.0f / sqrtf(block_sum(sq) / (float)d + eps);
    FOR_ROW(j, i, d) out[r + i] = mv[j] * inv * wv[j];
}

// Copies row `src` of each of n streams to row 0 (fast prefill keeps the last position).
extern "C" __global__ void keep_row(float* s, size_t ss, int n, int src, int d) {
    pdl_start();
    for (int k = 0; k < n; k++)
        for (int i = threadIdx.x; i < d; i += blockDim.x)
            s[k * ss + i] = s[k * ss + (size_t)src * d + i];
}

// A value's bits made orderable as an unsigned integer (a larger value gives a larger
// key); 0 for NaN and -inf, which are never candidates (no finite value maps to 0).
__device__ __forceinline__ u32 order_key(float v) {
    if (v != v || v == -INFINITY) return 0u;
    const u32 b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// The largest of x[0..n) as a 64-bit key: order_key(value) in the upper half, n - 1 -
// index in the lower, so the largest key holds the largest value and, among equal values,
// the lowest index (torch.argmax's choice). NaN and -inf never win; a key of 0 means
// nothing could be chosen.
__device__ __forceinline__ unsigned long long argmax_key(float v, int i, int n) {
    const u32 k = order_key(v);
    return k == 0u ? 0ull : ((unsigned long long)k << 32) | (u32)(n - 1 - i);
}

__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long k) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        unsigned long long t = __shfl_xor_sync(0xffffffffu, k, o);
        k = t > k ? t : k;
    }
    return k;
}

// The block's largest key (blockDim.x a multiple of 32); thread 0 gets it.
__device__ unsigned long long block_max_u64(unsigned long long k) {
    __shared__ unsigned long long part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    k = warp_max_u64(k);
    if (lane == 0) part[warp] = k;
    __syncthreads();
    if (warp == 0) {
        k = lane < (int)(blockDim.x >> 5) ? part[lane] : 0ull;
        k = warp_max_u64(k);
    }
    return k;
}

// Greedy decoding on the device: out[0] = the index of the largest of x[0..n) (see
// argmax_key), or -1 when every value is NaN or -inf. Each block reduces a grid-strided
// share to partial[block]; the last block to finish (done counts them; it is reset for the
// next launch) reduces the partials.
extern "C" __global__ void argmax_f32(const float* x, int n, unsigned long long* partial,
                                      u32* done, int* out) {
    pdl_start();
    unsigned long long best = 0ull;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const unsigned long long k = argmax_key(x[i], i, n);
        best = k > best ? k : best;
    }
    best = block_max_u64(best);
    __shared__ bool last;
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = best;
        __threadfence();
        last = atomicAdd(done, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    best = 0ull;
    for (int b = threadIdx.x; b < (int)gridDim.x; b += blockDim.x) {
        const unsigned long long k = ((volatile unsigned long long*)partial)[b];
        best = k > best ? k : best;
    }
    best = block_max_u64(best);
    if (threadIdx.x == 0) {
        out[0] = best == 0ull ? -1 : n - 1 - (int)(u32)best;
        *done = 0u;
    }
}

// Sampling on the device: the candidates of a top-k draw. TOPK_* must match ops.rs.
#define TOPK_THREADS 512
#define TOPK_PER_THREAD 8
#define TOPK_SPAN (TOPK_THREADS * TOPK_PER_THREAD)
#define TOPK_LOCAL 128
#define TOPK_MERGE_PER_THREAD 20
#define TOPK_OUT 256

// How many of the block's keys (N per thread) are >= t; every thread gets it.
template <int N>
__device__ int topk_count_ge(const u32 (&keys)[N], u32 t) {
    __shared__ int part[TOPK_THREADS / 32];
    int c = 0;
    #pragma unroll
    for (int j = 0; j < N; j++) c += keys[j] >= t ? 1 : 0;
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = c;
    __syncthreads();
    int total = 0;
    #pragma unroll
    for (int w = 0; w < TOPK_THREADS / 32; w++) total += part[w];
    return total;
}

// The largest key t with at least k of the block's keys >= t, or 1 when fewer than k keys
// are candidates (then every candidate is kept): keys >= t are the k largest values and
// every value tied with the k-th.
template <int N>
__device__ u32 topk_threshold(const u32 (&keys)[N], int k) {
    u32 t = 0u;
    for (int bit = 31; bit >= 0; bit--) {
        const u32 c = t | (1u << bit);
        if (topk_count_ge(keys, c) >= k) t = c;
    }
    return t == 0u ? 1u : t;
}

// The k largest of x[0..n) (1 <= k <= 64), with every value tied with the k-th: out[0] =
// their count, out[1] = 1 when they could not all be kept (more than TOPK_OUT, or more
// than TOPK_LOCAL from one block: the host then reads the logits), then (value, index)
// pairs from out + 2, in no particular order. NaN and -inf are never candidates. Each
// block of TOPK_THREADS keeps the candidates of its TOPK_SPAN values (its own k largest
// and their ties, a superset of its share of the result) in scratch; the last block to
// finish (done counts them) selects among those and resets done and the overflow flag.
// scratch: the flag, done, then gridDim.x * (TOPK_LOCAL + 1) words (the first two at
// fixed places, so that launches over different lengths share one zeroed buffer).
extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
topk_f32(const float* x, int n, int k, u32* scratch, int* out) {
    pdl_start();
    u32* flag = scratch;
    u32* done = scratch + 1;
    u32* part = scratch + 2;
    u32 keys[TOPK_PER_THREAD];
    const int base = blockIdx.x * TOPK_SPAN;
    #pragma unroll
    for (int j = 0; j < TOPK_PER_THREAD; j++) {
        const int i = base + j * TOPK_THREADS + threadIdx.x;
        keys[j] = i < n ? order_key(x[i]) : 0u;
    }
    const u32 t = topk_threshold(keys, k);
    // This block's candidates: count at part[b * (TOPK_LOCAL + 1)], then their indices.
    __shared__ int kept;
    u32* mine = part + blockIdx.x * (TOPK_LOCAL + 1);
    if (threadIdx.x == 0) kept = 0;
    __syncthreads();
    #pragma unroll
    for (int j = 0; j < TOPK_PER_THREAD; j++) {
        if (keys[j] >= t) {
            const int s = atomicAdd(&kept, 1);
            if (s < TOPK_LOCAL) mine[1 + s] = (u32)(base + j * TOPK_THREADS + threadIdx.x);
        }
    }
    __syncthreads();
    __shared__ bool last;
    if (threadIdx.x == 0) {
        mine[0] = (u32)min(kept, TOPK_LOCAL);
        if (kept > TOPK_LOCAL) atomicOr(flag, 1u);
        __threadfence();
        last = atomicAdd(done, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    // Every block's candidates, TOPK_MERGE_PER_THREAD slots a thread (the host bounds the
    // blocks so that they fit).
    const volatile u32* vp = part;
    u32 mk[TOPK_MERGE_PER_THREAD], mi[TOPK_MERGE_PER_THREAD];
    #pragma unroll
    for (int j = 0; j < TOPK_MERGE_PER_THREAD; j++) {
        const int slot = j * TOPK_THREADS + threadIdx.x;
        const int b = slot / TOPK_LOCAL, s = slot % TOPK_LOCAL;
        mk[j] = 0u;
        mi[j] = 0u;
        if (b < (int)gridDim.x && s < (int)vp[b * (TOPK_LOCAL + 1)]) {
            mi[j] = vp[b * (TOPK_LOCAL + 1) + 1 + s];
            mk[j] = order_key(x[mi[j]]);
        }
    }
    const u32 tg = topk_threshold(mk, k);
    if (threadIdx.x == 0) kept = 0;
    __syncthreads();
    #pragma unroll
    for (int j = 0; j < TOPK_MERGE_PER_THREAD; j++) {
        if (mk[j] >= tg) {
            const int s = atomicAdd(&kept, 1);
            if (s < TOPK_OUT) {
                out[2 + 2 * s] = __float_as_int(x[mi[j]]);
                out[3 + 2 * s] = (int)mi[j];
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        out[0] = min(kept, TOPK_OUT);
        out[1] = (kept > TOPK_OUT || *(volatile u32*)flag != 0u) ? 1 : 0;
        *flag = 0u;
        *done = 0u;
    }
}
