// Decode matrix-vector products: y[b, r] = sum_k x[b, k] * W[r, k] for a few rows b of
// activations (f32) against a bf16 weight matrix, one warp per output row. Several
// independent products ("segments", each with its own x, W and y) run in one launch.

#define GEMV_WARPS 8
#define GEMV_MAX_BATCH 8
#define GEMV_MAX_SEGS 4

// Epilogues: what is written for row r of batch row b, with acc = x . W[r].
#define EPI_PLAIN 0       // acc (soft-capped when cap > 0)
#define EPI_PAIR 1        // gelu(acc) * (x . W2[r]): gate and up of a dense FFN at once
#define EPI_GELU_AUX 2    // gelu(aux[b, r]) * acc: up after the sparse gate
#define EPI_GELU_ACC 3    // gelu(acc) * aux[b, r]: the per-layer input gate

struct GemvSeg {
    const bf16_t* w;      // [rows, ldw]
    const bf16_t* w2;     // EPI_PAIR: the second matrix (same shape and stride)
    const float* x;       // [batch, ldx]
    float* y;             // [batch, ldy]
    const float* mask;    // optional [batch, ldm]: row r is skipped (y = 0) when every
                          // mask[b, r] <= 0 (the exact sparse FFN's up projection)
    const float* aux;     // EPI_GELU_AUX / EPI_GELU_ACC: [batch, ldaux]
    int rows, k, ldw, ldx, ldy, ldm, ldaux, epi;
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

// The body, for at most MAXB activation rows (instantiated below for 1, 2, 4 and 8: the
// single-row decode step keeps few registers, so more warps fit on each multiprocessor).
template <int MAXB>
__device__ __forceinline__ void gemv_body(const GemvArgs& a) {
    int s = 0;
    #pragma unroll
    for (int i = 1; i < GEMV_MAX_SEGS; i++)
        if (i < a.nseg && (int)blockIdx.x >= a.seg[i].block_start) s = i;
    const GemvSeg g = a.seg[s];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = ((int)blockIdx.x - g.block_start) * GEMV_WARPS + warp;
    // The weights do not depend on the kernel before: fetch them while it finishes.
    if (row < g.rows && !g.mask) {
        prefetch_l2(g.w + (size_t)row * g.ldw, g.k * 2, lane);
        if (g.epi == EPI_PAIR) prefetch_l2(g.w2 + (size_t)row * g.ldw, g.k * 2, lane);
    }
    pdl_start();
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
    const bool pair = g.epi == EPI_PAIR;
    float acc[MAXB], acc2[MAXB];
    #pragma unroll
    for (int b = 0; b < MAXB; b++) { acc[b] = 0.0f; acc2[b] = 0.0f; }
    const bf16_t* wr = g.w + (size_t)row * g.ldw;
    const bf16_t* wr2 = pair ? g.w2 + (size_t)row * g.ldw : wr;
    const bool vec = ((g.k | g.ldw) & 7) == 0 && (g.ldx & 3) == 0 &&
                     (((size_t)g.w | (size_t)g.x | (size_t)(pair ? g.w2 : g.w)) & 15) == 0;
    if (vec) {
        #pragma unroll 4
        for (int i = lane * 8; i < g.k; i += 256) {
            uint4 wv = __ldg(reinterpret_cast<const uint4*>(wr + i));
            uint4 wv2 = pair ? __ldg(reinterpret_cast<const uint4*>(wr2 + i)) : wv;
            float wf[8], wf2[8];
            unpack_bf16x8(wv, wf);
            unpack_bf16x8(wv2, wf2);
            #pragma unroll
            for (int b = 0; b < MAXB; b++) {
                if (b < B) {
                    const float4* xp = reinterpret_cast<const float4*>(g.x + (size_t)b * g.ldx + i);
                    float4 x0 = xp[0], x1 = xp[1];
                    acc[b] += wf[0] * x0.x + wf[1] * x0.y + wf[2] * x0.z + wf[3] * x0.w
                            + wf[4] * x1.x + wf[5] * x1.y + wf[6] * x1.z + wf[7] * x1.w;
                    if (pair)
                        acc2[b] += wf2[0] * x0.x + wf2[1] * x0.y + wf2[2] * x0.z + wf2[3] * x0.w
                                 + wf2[4] * x1.x + wf2[5] * x1.y + wf2[6] * x1.z + wf2[7] * x1.w;
                }
            }
        }
    } else {
        for (int i = lane; i < g.k; i += 32) {
            float wf = bf16_to_f32(wr[i]);
            float wf2 = bf16_to_f32(wr2[i]);
            #pragma unroll
            for (int b = 0; b < MAXB; b++)
                if (b < B) {
                    float xv = g.x[(size_t)b * g.ldx + i];
                    acc[b] += wf * xv;
                    acc2[b] += wf2 * xv;
                }
        }
    }
    #pragma unroll
    for (int b = 0; b < MAXB; b++) {
        if (b < B) {
            float v = warp_sum(acc[b]);
            float v2 = pair ? warp_sum(acc2[b]) : 0.0f;
            if (lane == 0) {
                if (g.epi == EPI_PAIR) v = gelu_tanh(v) * v2;
                else if (g.epi == EPI_GELU_AUX) v = gelu_tanh(g.aux[(size_t)b * g.ldaux + row]) * v;
                else if (g.epi == EPI_GELU_ACC) v = gelu_tanh(v) * g.aux[(size_t)b * g.ldaux + row];
                else if (a.cap > 0.0f) v = tanhf(v / a.cap) * a.cap;
                g.y[(size_t)b * g.ldy + row] = v;
            }
        }
    }
}

#define GEMV_KERNEL(B)                                                                  \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_bf16_b##B(     \
        const GemvArgs a) {                                                             \
        gemv_body<B>(a);                                                                \
    }
GEMV_KERNEL(1)
GEMV_KERNEL(2)
GEMV_KERNEL(4)
GEMV_KERNEL(8)

// Sparse product with a transposed matrix: y[b, n] += sum_i a[b, i] * Wt[i, n] over the
// hidden units i with a[b, i] != 0 (the exact sparse FFN's down projection; Wt = down^T,
// [F, N]). Grid: (column blocks, ceil(units / SPT_UNITS)); y must be zeroed first (atomic
// adds).
#define SPT_THREADS 256
#define SPT_MAX_BATCH 8
#define SPT_UNITS 512  // hidden units per block (grid.y = units / 512)

extern "C" __global__ void __launch_bounds__(SPT_THREADS)
sparse_t_bf16(const bf16_t* wt, int ldw, const float* a, int lda, float* y, int ldy,
              int batch, int units, int ncols) {
    pdl_start();
    // The block's activations first (one load each, in parallel), then only the weight
    // rows of the active units.
    __shared__ float as[SPT_MAX_BATCH][SPT_UNITS];
    __shared__ int active[SPT_UNITS];
    __shared__ int nactive;
    const int i0 = blockIdx.y * SPT_UNITS;
    const int i1 = min(units, i0 + SPT_UNITS);
    if (threadIdx.x == 0) nactive = 0;
    __syncthreads();
    for (int u = threadIdx.x; u < SPT_UNITS; u += blockDim.x) {
        bool any = false;
        for (int b = 0; b < batch; b++) {
            float v = i0 + u < i1 ? a[(size_t)b * lda + i0 + u] : 0.0f;
            as[b][u] = v;
            any |= v != 0.0f;
        }
        if (any) active[atomicAdd(&nactive, 1)] = u;
    }
    __syncthreads();
    const int na = nactive;
    if (na == 0) return;
    const bool vec = ((ncols | ldw) & 7) == 0 && ((size_t)wt & 15) == 0;
    if (vec) {
        const int c = (blockIdx.x * SPT_THREADS + threadIdx.x) * 8;
        if (c >= ncols) return;
        float acc[SPT_MAX_BATCH][8];
        #pragma unroll
        for (int b = 0; b < SPT_MAX_BATCH; b++)
            #pragma unroll
            for (int j = 0; j < 8; j++) acc[b][j] = 0.0f;
        #pragma unroll 4
        for (int t = 0; t < na; t++) {
            const int u = active[t];
            uint4 wv = __ldg(reinterpret_cast<const uint4*>(wt + (size_t)(i0 + u) * ldw + c));
            float wf[8];
            unpack_bf16x8(wv, wf);
            #pragma unroll
            for (int b = 0; b < SPT_MAX_BATCH; b++) {
                if (b < batch) {
                    float av = as[b][u];
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
            for (int t = 0; t < na; t++) {
                const int u = active[t];
                acc += as[b][u] * bf16_to_f32(wt[(size_t)(i0 + u) * ldw + c]);
            }
            atomicAdd(&y[(size_t)b * ldy + c], acc);
        }
    }
}

// Activations to bf16 split in up to three parts, p0 = bf16(x), p1 = bf16(x - p0),
// p2 = bf16(x - p0 - p1) (p1, p2 may be null), for GEMMs that need more than bf16's
// 8 bits of precision: the sum of the parts' products is near-f32.
extern "C" __global__ void split_bf16_rows(const float* x, int ldx, bf16_t* p0, bf16_t* p1,
                                           bf16_t* p2, int ldy, int rows, int n) {
    pdl_start();
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)rows * n) return;
    int r = idx / n, c = idx % n;
    size_t o = (size_t)r * ldy + c;
    float v = x[(size_t)r * ldx + c];
    bf16_t h = f32_to_bf16(v);
    p0[o] = h;
    if (!p1) return;
    v -= bf16_to_f32(h);
    h = f32_to_bf16(v);
    p1[o] = h;
    if (p2) p2[o] = f32_to_bf16(v - bf16_to_f32(h));
}
