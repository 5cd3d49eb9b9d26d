// Decode matrix-vector products: y[b, r] = sum_k x[b, k] * W[r, k] for a few rows b of
// activations (f32) against a bf16 weight matrix, one warp per output row. Several
// independent products ("segments", each with its own x, W and y) run in one launch.

#define GEMV_WARPS 8
#define GEMV_MAX_BATCH 8
#define GEMV_MAX_SEGS 4

struct GemvSeg {
    const bf16_t* w;      // [rows, ldw]
    const float* x;       // [batch, ldx]
    float* y;             // [batch, ldy]
    const float* mask;    // optional [batch, ldm]: row r is skipped (y = 0) when every
                          // mask[b, r] <= 0 (the exact sparse FFN's up projection)
    int rows, k, ldw, ldx, ldy, ldm;
    int block_start;      // first block of this segment
    int pad;
};

struct GemvArgs {
    GemvSeg seg[GEMV_MAX_SEGS];
    int nseg;
    int batch;
    float cap;            // > 0: y = tanh(y / cap) * cap (final logit soft-cap)
    int pad;
};

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_bf16(const GemvArgs a) {
    int s = 0;
    #pragma unroll
    for (int i = 1; i < GEMV_MAX_SEGS; i++)
        if (i < a.nseg && (int)blockIdx.x >= a.seg[i].block_start) s = i;
    const GemvSeg g = a.seg[s];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = ((int)blockIdx.x - g.block_start) * GEMV_WARPS + warp;
    if (row >= g.rows) return;
    const int B = a.batch;
    if (g.mask) {
        bool any = false;
        for (int b = 0; b < B; b++) any |= g.mask[(size_t)b * g.ldm + row] > 0.0f;
        if (!any) {
            if (lane < B) g.y[(size_t)lane * g.ldy + row] = 0.0f;
            return;
        }
    }
    float acc[GEMV_MAX_BATCH];
    #pragma unroll
    for (int b = 0; b < GEMV_MAX_BATCH; b++) acc[b] = 0.0f;
    const bf16_t* wr = g.w + (size_t)row * g.ldw;
    const bool vec = ((g.k | g.ldw) & 7) == 0 && (g.ldx & 3) == 0 &&
                     (((size_t)g.w | (size_t)g.x) & 15) == 0;
    if (vec) {
        #pragma unroll 4
        for (int i = lane * 8; i < g.k; i += 256) {
            uint4 wv = __ldg(reinterpret_cast<const uint4*>(wr + i));
            float wf[8];
            wf[0] = __uint_as_float(wv.x << 16); wf[1] = __uint_as_float(wv.x & 0xffff0000u);
            wf[2] = __uint_as_float(wv.y << 16); wf[3] = __uint_as_float(wv.y & 0xffff0000u);
            wf[4] = __uint_as_float(wv.z << 16); wf[5] = __uint_as_float(wv.z & 0xffff0000u);
            wf[6] = __uint_as_float(wv.w << 16); wf[7] = __uint_as_float(wv.w & 0xffff0000u);
            #pragma unroll
            for (int b = 0; b < GEMV_MAX_BATCH; b++) {
                if (b < B) {
                    const float4* xp = reinterpret_cast<const float4*>(g.x + (size_t)b * g.ldx + i);
                    float4 x0 = xp[0], x1 = xp[1];
                    acc[b] += wf[0] * x0.x + wf[1] * x0.y + wf[2] * x0.z + wf[3] * x0.w
                            + wf[4] * x1.x + wf[5] * x1.y + wf[6] * x1.z + wf[7] * x1.w;
                }
            }
        }
    } else {
        for (int i = lane; i < g.k; i += 32) {
            float wf = bf16_to_f32(wr[i]);
            #pragma unroll
            for (int b = 0; b < GEMV_MAX_BATCH; b++)
                if (b < B) acc[b] += wf * g.x[(size_t)b * g.ldx + i];
        }
    }
    #pragma unroll
    for (int b = 0; b < GEMV_MAX_BATCH; b++) {
        if (b < B) {
            float v = warp_sum(acc[b]);
            if (lane == 0) {
                if (a.cap > 0.0f) v = tanhf(v / a.cap) * a.cap;
                g.y[(size_t)b * g.ldy + row] = v;
            }
        }
    }
}

// Sparse product with a transposed matrix: y[b, n] += sum_i a[b, i] * Wt[i, n] over the
// hidden units i with a[b, i] != 0 (the exact sparse FFN's down projection; Wt = down^T,
// [F, N]). Grid: (column blocks, unit splits); y must be zeroed first (atomic adds).
#define SPT_THREADS 256
#define SPT_MAX_BATCH 8

extern "C" __global__ void __launch_bounds__(SPT_THREADS)
sparse_t_bf16(const bf16_t* wt, int ldw, const float* a, int lda, float* y, int ldy,
              int batch, int units, int ncols) {
    const int per = (units + gridDim.y - 1) / gridDim.y;
    const int i0 = blockIdx.y * per;
    const int i1 = min(units, i0 + per);
    const bool vec = ((ncols | ldw) & 7) == 0 && ((size_t)wt & 15) == 0;
    if (vec) {
        const int c = (blockIdx.x * SPT_THREADS + threadIdx.x) * 8;
        if (c >= ncols) return;
        float acc[SPT_MAX_BATCH][8];
        #pragma unroll
        for (int b = 0; b < SPT_MAX_BATCH; b++)
            #pragma unroll
            for (int j = 0; j < 8; j++) acc[b][j] = 0.0f;
        for (int i = i0; i < i1; i++) {
            bool any = false;
            for (int b = 0; b < batch; b++) any |= a[(size_t)b * lda + i] != 0.0f;
            if (!any) continue;
            uint4 wv = __ldg(reinterpret_cast<const uint4*>(wt + (size_t)i * ldw + c));
            float wf[8];
            wf[0] = __uint_as_float(wv.x << 16); wf[1] = __uint_as_float(wv.x & 0xffff0000u);
            wf[2] = __uint_as_float(wv.y << 16); wf[3] = __uint_as_float(wv.y & 0xffff0000u);
            wf[4] = __uint_as_float(wv.z << 16); wf[5] = __uint_as_float(wv.z & 0xffff0000u);
            wf[6] = __uint_as_float(wv.w << 16); wf[7] = __uint_as_float(wv.w & 0xffff0000u);
            #pragma unroll
            for (int b = 0; b < SPT_MAX_BATCH; b++) {
                if (b < batch) {
                    float av = a[(size_t)b * lda + i];
                    #pragma unroll
                    for (int j = 0; j < 8; j++) acc[b][j] += av * wf[j];
                }
            }
        }
        #pragma unroll
        for (int b = 0; b < SPT_MAX_BATCH; b++)
            if (b < batch)
                #pragma unroll
                for (int j = 0; j < 8; j++) atomicAdd(&y[(size_t)b * ldy + c + j], acc[b][j]);
    } else {
        const int c = blockIdx.x * SPT_THREADS + threadIdx.x;
        if (c >= ncols) return;
        for (int b = 0; b < batch; b++) {
            float acc = 0.0f;
            for (int i = i0; i < i1; i++) {
                float av = a[(size_t)b * lda + i];
                if (av != 0.0f) acc += av * bf16_to_f32(wt[(size_t)i * ldw + c]);
            }
            atomicAdd(&y[(size_t)b * ldy + c], acc);
        }
    }
}

// Activations to bf16 split in two parts, hi = bf16(x) and lo = bf16(x - hi) (lo may be
// null), for GEMMs that need more than bf16's 8 bits of precision.
extern "C" __global__ void split_bf16_rows(const float* x, int ldx, bf16_t* hi, bf16_t* lo,
                                           int ldy, int rows, int n) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)rows * n) return;
    int r = idx / n, c = idx % n;
    float v = x[(size_t)r * ldx + c];
    bf16_t h = f32_to_bf16(v);
    hi[(size_t)r * ldy + c] = h;
    if (lo) lo[(size_t)r * ldy + c] = f32_to_bf16(v - bf16_to_f32(h));
}
