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
    const void* w;        // [rows, ldw] in format fmt (common.cu)
    const void* w2;       // EPI_PAIR: the second matrix (same shape, stride and format)
    const void* sc;       // W_Q8 / W_Q4K: the scales of w
    const void* sc2;      // ... and of w2
    const float* x;       // [batch, ldx]
    float* y;             // [batch, ldy]
    const float* mask;    // optional [batch, ldm]: row r is skipped (y = 0) when every
                          // mask[b, r] <= 0 (the exact sparse FFN's up projection)
    const float* aux;     // EPI_GELU_AUX / EPI_GELU_ACC: [batch, ldaux]
    int rows, k, ldw, ldx, ldy, ldm, ldaux, epi;
    int block_start;      // first block of this segment
    int fmt;              // W_BF16, W_Q8 or W_Q4K (for the W_ANY kernels)
};

struct GemvArgs {
    GemvSeg seg[GEMV_MAX_SEGS];
    int nseg;
    int batch;
    float cap;            // > 0: y = tanh(y / cap) * cap (final logit soft-cap)
    int pad;
};

// x[b, i..i+8) . w[0..8) accumulated into acc[b] for the batch rows.
template <int MAXB>
__device__ __forceinline__ void dot8(const float* x, int ldx, int B, int i, const float w[8],
                                     float acc[MAXB]) {
    #pragma unroll
    for (int b = 0; b < MAXB; b++) {
        if (b < B) {
            const float4* xp = reinterpret_cast<const float4*>(x + (size_t)b * ldx + i);
            float4 x0 = xp[0], x1 = xp[1];
            acc[b] += w[0] * x0.x + w[1] * x0.y + w[2] * x0.z + w[3] * x0.w
                    + w[4] * x1.x + w[5] * x1.y + w[6] * x1.z + w[7] * x1.w;
        }
    }
}

// Sixteen int8 values (one 16-byte load) to f32.
__device__ __forceinline__ void unpack_i8x16(uint4 v, float f[16]) {
    const u32 u[4] = {v.x, v.y, v.z, v.w};
    #pragma unroll
    for (int j = 0; j < 4; j++) {
        #pragma unroll
        for (int t = 0; t < 4; t++) f[4 * j + t] = (float)(signed char)(u[j] >> (8 * t));
    }
}

// Whether a segment's weights and activations allow the 16-byte loads of gemv_row: bf16
// rows of multiples of 8 values, quantized rows of whole 32-value blocks, 16-byte-aligned
// pointers and activation rows of multiples of 4 floats.
__device__ __forceinline__ bool gemv_aligned(const GemvSeg& g) {
    const bool pair = g.epi == EPI_PAIR;
    if ((g.ldx & 3) != 0 || ((size_t)g.x & 15) != 0) return false;
    if (g.fmt != W_BF16) return (g.k & 31) == 0;
    return ((g.k | g.ldw) & 7) == 0 &&
           (((size_t)g.w | (size_t)(pair ? g.w2 : g.w)) & 15) == 0;
}

// One warp's share of row `row` of a segment: acc[b] += x[b] . W[row] (and acc2 with W2
// for a pair), lanes splitting the row in 16-byte loads (the segment is gemv_aligned).
template <int MAXB, int FMT>
__device__ __forceinline__ void gemv_row(const GemvSeg& g, int row, int B, int lane,
                                         float acc[MAXB], float acc2[MAXB]) {
    // Loop steps unrolled: fewer with more activation rows (registers).
    constexpr int UNROLL_BF16 = MAXB <= 2 ? 4 : 1;
    constexpr int UNROLL_Q = MAXB <= 2 ? 2 : 1;
    const bool pair = g.epi == EPI_PAIR;
    if (FMT == W_BF16) {
        const bf16_t* wr = (const bf16_t*)g.w + (size_t)row * g.ldw;
        const bf16_t* wr2 = pair ? (const bf16_t*)g.w2 + (size_t)row * g.ldw : wr;
        #pragma unroll UNROLL_BF16
        for (int i = lane * 8; i < g.k; i += 256) {
            uint4 wv = __ldg(reinterpret_cast<const uint4*>(wr + i));
            uint4 wv2 = pair ? __ldg(reinterpret_cast<const uint4*>(wr2 + i)) : wv;
            float wf[8], wf2[8];
            unpack_bf16x8(wv, wf);
            dot8<MAXB>(g.x, g.ldx, B, i, wf, acc);
            if (pair) {
                unpack_bf16x8(wv2, wf2);
                dot8<MAXB>(g.x, g.ldx, B, i, wf2, acc2);
            }
        }
    } else if (FMT == W_Q8) {
        // 16 values per lane and step; the scale of their 32-value block factored out.
        const size_t ro = (size_t)row * g.ldw, so = (size_t)row * (g.ldw / 32);
        #pragma unroll UNROLL_Q
        for (int i = lane * 16; i < g.k; i += 512) {
            #pragma unroll
            for (int m = 0; m < (pair ? 2 : 1); m++) {
                const signed char* w = (const signed char*)(m ? g.w2 : g.w) + ro;
                const unsigned short* sc = (const unsigned short*)(m ? g.sc2 : g.sc) + so;
                float wf[16];
                unpack_i8x16(__ldg(reinterpret_cast<const uint4*>(w + i)), wf);
                const float d = f16_to_f32(__ldg(sc + i / 32));
                float part[MAXB];
                #pragma unroll
                for (int b = 0; b < MAXB; b++) part[b] = 0.0f;
                dot8<MAXB>(g.x, g.ldx, B, i, wf, part);
                dot8<MAXB>(g.x, g.ldx, B, i + 8, wf + 8, part);
                #pragma unroll
                for (int b = 0; b < MAXB; b++) {
                    if (m) acc2[b] += d * part[b];
                    else acc[b] += d * part[b];
                }
            }
        }
    } else {
        // One 32-value sub-block per lane and step: value = ds * q - dm, so
        // x . w = ds * (x . q) - dm * sum(x).
        const size_t ro = (size_t)row * (g.ldw / 2), mo = (size_t)row * (g.ldw / 256);
        #pragma unroll UNROLL_Q
        for (int blk = lane; blk < g.k / 32; blk += 32) {
            float xs[MAXB];
            #pragma unroll
            for (int b = 0; b < MAXB; b++) {
                xs[b] = 0.0f;
                if (b < B) {
                    const float4* xp =
                        reinterpret_cast<const float4*>(g.x + (size_t)b * g.ldx + blk * 32);
                    #pragma unroll
                    for (int t = 0; t < 8; t++) {
                        float4 v = xp[t];
                        xs[b] += (v.x + v.y) + (v.z + v.w);
                    }
                }
            }
            #pragma unroll
            for (int m = 0; m < (pair ? 2 : 1); m++) {
                const unsigned char* w = (const unsigned char*)(m ? g.w2 : g.w) + ro;
                const Q4KMeta& mt = ((const Q4KMeta*)(m ? g.sc2 : g.sc))[mo + blk / 8];
                uint4 qv = __ldg(reinterpret_cast<const uint4*>(w + blk * 16));
                const u32 u[4] = {qv.x, qv.y, qv.z, qv.w};
                float lo[16], hi[16];
                #pragma unroll
                for (int j = 0; j < 4; j++) {
                    #pragma unroll
                    for (int t = 0; t < 4; t++) {
                        u32 byte = (u[j] >> (8 * t)) & 0xffu;
                        lo[4 * j + t] = (float)(byte & 15u);
                        hi[4 * j + t] = (float)(byte >> 4);
                    }
                }
                const int sub = blk % 8;
                const float ds = f16_to_f32(mt.d) * (float)mt.sc[sub];
                const float dm = f16_to_f32(mt.dmin) * (float)mt.m[sub];
                float part[MAXB];
                #pragma unroll
                for (int b = 0; b < MAXB; b++) part[b] = 0.0f;
                const int i = blk * 32;
                dot8<MAXB>(g.x, g.ldx, B, i, lo, part);
                dot8<MAXB>(g.x, g.ldx, B, i + 8, lo + 8, part);
                dot8<MAXB>(g.x, g.ldx, B, i + 16, hi, part);
                dot8<MAXB>(g.x, g.ldx, B, i + 24, hi + 8, part);
                #pragma unroll
                for (int b = 0; b < MAXB; b++) {
                    const float v = ds * part[b] - dm * xs[b];
                    if (m) acc2[b] += v;
                    else acc[b] += v;
                }
            }
        }
    }
}

// Format parameter of the kernels that read each segment's format at run time.
#define W_ANY (-1)

// The body, for at most MAXB activation rows (instantiated below for 1, 2, 4 and 8: the
// single-row decode step keeps few registers, so more warps fit on each multiprocessor), with
// weights of format FMT (W_ANY: each segment's own).
template <int MAXB, int FMT>
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
        const int fmt = FMT == W_ANY ? g.fmt : FMT;
        const int rb = weight_row_bytes(fmt, g.ldw);
        const int kb = weight_row_bytes(fmt, g.k);
        prefetch_l2((const char*)g.w + (size_t)row * rb, kb, lane);
        if (g.epi == EPI_PAIR) prefetch_l2((const char*)g.w2 + (size_t)row * rb, kb, lane);
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
    if (!gemv_aligned(g)) {
        // One value at a time, any format.
        for (int i = lane; i < g.k; i += 32) {
            const int fmt = FMT == W_ANY ? g.fmt : FMT;
            float wf = weight_at(fmt, g.w, g.sc, row, g.ldw, i);
            float wf2 = pair ? weight_at(fmt, g.w2, g.sc2, row, g.ldw, i) : 0.0f;
            #pragma unroll
            for (int b = 0; b < MAXB; b++)
                if (b < B) {
                    float xv = g.x[(size_t)b * g.ldx + i];
                    acc[b] += wf * xv;
                    acc2[b] += wf2 * xv;
                }
        }
    } else if (FMT != W_ANY) {
        gemv_row<MAXB, (FMT == W_ANY ? W_BF16 : FMT)>(g, row, B, lane, acc, acc2);
    } else if (g.fmt == W_Q8) {
        gemv_row<MAXB, W_Q8>(g, row, B, lane, acc, acc2);
    } else if (g.fmt == W_Q4K) {
        gemv_row<MAXB, W_Q4K>(g, row, B, lane, acc, acc2);
    } else {
        gemv_row<MAXB, W_BF16>(g, row, B, lane, acc, acc2);
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

// One or two activation rows: one kernel for every format (the products of a launch may
// mix formats, so a step of a quantized model needs no extra launches), which stays within
// its register bound. Four or eight rows: one kernel per format, so that each holds only its
// own loop's registers (all three loops in one spilled the 8-row accumulators to local
// memory); a launch then takes the products of one format. Blocks per multiprocessor the
// register budget must allow: a single resident block leaves too few loads in flight.
#define GEMV_MIN_BLOCKS(B) ((B) >= 4 ? 2 : 3)
#define GEMV_KERNEL(NAME, FMT, B)                                                       \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32, GEMV_MIN_BLOCKS(B))    \
    gemv_##NAME##_b##B(const GemvArgs a) {                                              \
        gemv_body<B, FMT>(a);                                                           \
    }
GEMV_KERNEL(any, W_ANY, 1)
GEMV_KERNEL(any, W_ANY, 2)
GEMV_KERNEL(bf16, W_BF16, 4)
GEMV_KERNEL(bf16, W_BF16, 8)
GEMV_KERNEL(q8, W_Q8, 4)
GEMV_KERNEL(q8, W_Q8, 8)
GEMV_KERNEL(q4k, W_Q4K, 4)
GEMV_KERNEL(q4k, W_Q4K, 8)

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

// v as up to three bf16 parts at index o: p0 = bf16(v), p1 = bf16(v - p0),
// p2 = bf16(v - p0 - p1) (p1, p2 may be null).
__device__ __forceinline__ void split_bf16_at(float v, size_t o, bf16_t* p0, bf16_t* p1,
                                              bf16_t* p2) {
    bf16_t h = f32_to_bf16(v);
    p0[o] = h;
    if (!p1) return;
    v -= bf16_to_f32(h);
    h = f32_to_bf16(v);
    p1[o] = h;
    if (p2) p2[o] = f32_to_bf16(v - bf16_to_f32(h));
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
    split_bf16_at(x[(size_t)r * ldx + c], (size_t)r * ldy + c, p0, p1, p2);
}

// Rows row0.. (rows of them) x columns [0, k) of a weight matrix (any format) to bf16
// parts as split_bf16_rows makes them (p1, p2 may be null), to rows 0.. of the outputs
// (ldo values each): the weights of a prefill GEMM on the tensor cores.
extern "C" __global__ void weights_to_bf16(int fmt, const void* w, const void* sc, int ldw,
                                           int rows, int k, bf16_t* p0, bf16_t* p1,
                                           bf16_t* p2, int ldo, int row0) {
    pdl_start();
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)rows * k) return;
    int r = idx / k, c = idx % k;
    split_bf16_at(weight_at(fmt, w, sc, (size_t)(row0 + r), ldw, c), (size_t)r * ldo + c, p0,
                  p1, p2);
}
