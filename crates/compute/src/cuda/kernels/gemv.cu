// Decode matrix-vector products: y[b, r] = sum_k x[b, k] * W[r, k] for a few rows b of
// activations (f32) against a bf16 weight matrix, one warp per output row. Several
// independent products ("segments", each with its own x, W and y) run in one launch.

#define GEMV_WARPS 8
// Loop steps of one row a lane keeps in flight (single-row kernel): bf16, block formats.
#ifndef GEMV_UNROLL_BF16
#define GEMV_UNROLL_BF16 4
#endif
#ifndef GEMV_UNROLL_Q
#define GEMV_UNROLL_Q 2
#endif
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
    int rows_per_block;   // gemv_rowblock_b1: output rows a block computes
};

// The segment of a launch this block works on (segments own consecutive blocks).
__device__ __forceinline__ int block_segment(const GemvArgs& a) {
    int s = 0;
    #pragma unroll
    for (int i = 1; i < GEMV_MAX_SEGS; i++)
        if (i < a.nseg && (int)blockIdx.x >= a.seg[i].block_start) s = i;
    return s;
}

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
    constexpr int UNROLL_BF16 = MAXB <= 2 ? GEMV_UNROLL_BF16 : 1;
    constexpr int UNROLL_Q = MAXB <= 2 ? GEMV_UNROLL_Q : 1;
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

// Writes output `row` of batch row b from its sums v = x . W[row] (and v2 = x . W2[row]
// for a pair), through the segment's epilogue.
__device__ __forceinline__ void gemv_store(const GemvSeg& g, float cap, int b, int row, float v,
                                           float v2) {
    if (g.epi == EPI_PAIR) v = gelu_tanh(v) * v2;
    else if (g.epi == EPI_GELU_AUX) v = gelu_tanh(g.aux[(size_t)b * g.ldaux + row]) * v;
    else if (g.epi == EPI_GELU_ACC) v = gelu_tanh(v) * g.aux[(size_t)b * g.ldaux + row];
    else if (cap > 0.0f) v = tanhf(v / cap) * cap;
    g.y[(size_t)b * g.ldy + row] = v;
}

// Format parameter of the kernels that read each segment's format at run time.
#define W_ANY (-1)

// The body, for at most MAXB activation rows (instantiated below for 1: the single-row
// decode step keeps few registers, so more warps fit on each multiprocessor), with weights of
// format FMT (W_ANY: each segment's own).
template <int MAXB, int FMT>
__device__ __forceinline__ void gemv_body(const GemvArgs& a) {
    const GemvSeg g = a.seg[block_segment(a)];
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
            if (lane == 0) gemv_store(g, a.cap, b, row, v, v2);
        }
    }
}

// One activation row: one kernel for every format (the products of a launch may mix
// formats, so a step of a quantized model needs no extra launches). Blocks per
// multiprocessor the register budget must allow: a single resident block leaves too few
// loads in flight.
#ifndef GEMV_MIN_BLOCKS_1
#define GEMV_MIN_BLOCKS_1 3
#endif
#define GEMV_MIN_BLOCKS(B) ((B) >= 4 ? 2 : GEMV_MIN_BLOCKS_1)
#define GEMV_KERNEL(NAME, FMT, B)                                                       \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32, GEMV_MIN_BLOCKS(B))    \
    gemv_##NAME##_b##B(const GemvArgs a) {                                              \
        gemv_body<B, FMT>(a);                                                           \
    }
GEMV_KERNEL(any, W_ANY, 1)

// One activation row, one bf16 product whose rows are too few (or too long) for one warp
// per row to keep enough loads in flight (the per-layer input gate: 256 rows of 2048; the
// FFN's down projection: 2048 rows of 8192 or 16384): each output row is split over
// GEMV_WARPS / a.rows_per_block warps of a block, each over a run of consecutive values,
// summed in shared memory. The host checks that each warp's run is a multiple of 8 values
// and that the pointers allow 16-byte loads. Each lane's first 8 weights are loaded before
// the wait.
#ifndef ROWBLOCK_UNROLL
#define ROWBLOCK_UNROLL 2
#endif
extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_rowblock_b1(const GemvArgs a) {
    const GemvSeg& g = a.seg[0];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rpb = a.rows_per_block, wpr = GEMV_WARPS / rpb;
    const int row = blockIdx.x * rpb + warp / wpr;
    const bool pair = g.epi == EPI_PAIR;
    const int kp = g.k / wpr, k0 = (warp % wpr) * kp;
    // A warp past the last row has nothing to read (but takes part in the barrier).
    const int kend = row < g.rows ? kp : 0;
    const bf16_t* wr = (const bf16_t*)g.w + (size_t)row * g.ldw + k0;
    const bf16_t* wr2 = pair ? (const bf16_t*)g.w2 + (size_t)row * g.ldw + k0 : wr;
    uint4 w0 = make_uint4(0, 0, 0, 0), w1 = w0;
    if (lane * 8 < kend) {
        w0 = __ldg(reinterpret_cast<const uint4*>(wr + lane * 8));
        if (pair) w1 = __ldg(reinterpret_cast<const uint4*>(wr2 + lane * 8));
    }
    if (kend > 256) {
        prefetch_l2(wr + 256, (kend - 256) * 2, lane);
        if (pair) prefetch_l2(wr2 + 256, (kend - 256) * 2, lane);
    }
    pdl_start();
    const float* x = g.x + k0;
    float acc[1] = {0.0f}, acc2[1] = {0.0f}, wf[8];
    // ROWBLOCK_UNROLL steps' loads issued together, then their products.
    for (int i0 = lane * 8; i0 < kend; i0 += ROWBLOCK_UNROLL * 256) {
        uint4 a[ROWBLOCK_UNROLL], b[ROWBLOCK_UNROLL];
        #pragma unroll
        for (int u = 0; u < ROWBLOCK_UNROLL; u++) {
            const int i = i0 + u * 256;
            a[u] = b[u] = w0;
            if (i == lane * 8) {
                b[u] = w1;
            } else if (i < kend) {
                a[u] = __ldg(reinterpret_cast<const uint4*>(wr + i));
                if (pair) b[u] = __ldg(reinterpret_cast<const uint4*>(wr2 + i));
            }
        }
        #pragma unroll
        for (int u = 0; u < ROWBLOCK_UNROLL; u++) {
            const int i = i0 + u * 256;
            if (i < kend) {
                unpack_bf16x8(a[u], wf);
                dot8<1>(x, 0, 1, i, wf, acc);
                if (pair) {
                    unpack_bf16x8(b[u], wf);
                    dot8<1>(x, 0, 1, i, wf, acc2);
                }
            }
        }
    }
    __shared__ float red[2][GEMV_WARPS];
    const float v = warp_sum(acc[0]), v2 = pair ? warp_sum(acc2[0]) : 0.0f;
    if (lane == 0) {
        red[0][warp] = v;
        red[1][warp] = v2;
    }
    __syncthreads();
    // Thread r sums the warps of the block's row r.
    const int r = threadIdx.x, out = blockIdx.x * rpb + r;
    if (r < rpb && out < g.rows) {
        float t = 0.0f, t2 = 0.0f;
        for (int w = r * wpr; w < (r + 1) * wpr; w++) {
            t += red[0][w];
            t2 += red[1][w];
        }
        gemv_store(g, a.cap, 0, out, t, t2);
    }
}

// Tensor-core GEMV for 2 to 16 activation rows. The kernel above reads each weight once,
// but with several activation rows each weight value costs one f32 multiply-add per row and
// every warp reloads all the activations, which keeps it far below the memory bandwidth
// (8 rows took 5x the time of one). Here the weights are the A operand of the tensor
// cores' m16n8k16 bf16 product (Q8_0's int8 and Q4_K's 4-bit values are exact in bf16;
// the block scales are applied to each 32-value step's result) and the activation rows are
// its 8 columns (two products for 9 to 16 rows), split into TC_PARTS bf16 parts
// x = p0 + p1 + p2 (p1 = bf16(x - p0), ...): the parts' products are exact in the f32
// accumulators, so three parts give about the precision of an f32 GEMV.
//
// A block computes 16 output rows; its TC_WARPS warps split k in steps of 32 values (warp w
// takes steps w, w + TC_WARPS, ...) and their results are summed in shared memory. Within a
// step, lane (g = lane / 4, t = lane % 4) holds 8 weights of rows g and g + 8 and the same
// 8 activations of activation row g (and g + 8): the first product takes values 0-3 of every
// lane, the second values 4-7 (a fixed permutation of k within the step, the same for both
// operands, so the sum is unchanged).
#define TC_WARPS 8
#define TC_ROWS 16
#ifndef TC_PARTS
#define TC_PARTS 3
#endif
#ifndef TC_UNROLL
#define TC_UNROLL 4
#endif

// c += A (16 x 16, rows g and g + 8 of a[0..4)) . B (16 x 8, b0, b1), f32 accumulators.
__device__ __forceinline__ void mma_bf16(float c[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                         u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Two activations (x0 at the lower k) as TC_PARTS packed bf16 pairs, into register q of
// each part's B fragment: xb[0][q] = bf16(x), xb[1][q] = bf16(x - xb[0][q]), ...
__device__ __forceinline__ void split_pair(float x0, float x1, u32 xb[TC_PARTS][4], int q) {
    #pragma unroll
    for (int i = 0; i < TC_PARTS; i++) xb[i][q] = take_bf16_pair(x0, x1);
}

// Int8 values i and i + 1 of v (bytes, offset by 128: v ^ 0x80808080) as a packed bf16
// pair, exactly: 2^23 + q + 128 is built from the bits, the offset subtracted in f32, and
// the upper halves of the two f32 values (integers of at most 8 significant bits: the lower
// halves are zero) are the bf16 values.
__device__ __forceinline__ u32 i8pair_bf16(u32 biased, int i) {
    const float f0 = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7440 | i)) - 8388736.0f;
    const float f1 =
        __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7440 | (i + 1))) - 8388736.0f;
    return __byte_perm(__float_as_uint(f0), __float_as_uint(f1), 0x7632);
}

// Four 4-bit values (bytes of v, already masked to their low nibbles) as two packed bf16
// pairs, exactly: 0x4300 | q is the bf16 value 128 + q, then 128 is subtracted.
__device__ __forceinline__ void u4x4_bf16(u32 v, u32& p01, u32& p23) {
    const u32 off = 0x43004300u;
    u32 a = __byte_perm(v, off, 0x5150), b = __byte_perm(v, off, 0x5352);
    asm("sub.rn.bf16x2 %0, %1, %2;" : "=r"(p01) : "r"(a), "r"(off));
    asm("sub.rn.bf16x2 %0, %1, %2;" : "=r"(p23) : "r"(b), "r"(off));
}

// The raw weights of one step for this lane: rows g and g + 8, 8 values each (bf16: the 16
// bytes at 8t..; Q8_0: the 8 bytes at 8t.. and the rows' scales of the step's block; Q4_K:
// the 4 bytes at 4t.. of the step's 32-value sub-block, holding values 4t..4t+3 and
// 16+4t..16+4t+3, with the super-block's d, dmin and the sub-block's scale and min).
struct TcRaw {
    uint4 a, b;
    u32 sa, sb;   // Q8_0: the f16 scale; Q4_K: d | dmin << 16
    u32 ma, mb;   // Q4_K: sc[sub] | m[sub] << 8
};

template <int FMT>
__device__ __forceinline__ TcRaw tc_load(const void* w, const void* sc, size_t ra, size_t rb,
                                         int ldw, int t, int step) {
    TcRaw r;
    r.sa = r.sb = r.ma = r.mb = 0;
    if (FMT == W_BF16) {
        const bf16_t* p = (const bf16_t*)w + step * 32 + 8 * t;
        r.a = __ldg(reinterpret_cast<const uint4*>(p + ra * ldw));
        r.b = __ldg(reinterpret_cast<const uint4*>(p + rb * ldw));
    } else if (FMT == W_Q8) {
        const signed char* p = (const signed char*)w + step * 32 + 8 * t;
        const uint2 a = __ldg(reinterpret_cast<const uint2*>(p + ra * ldw));
        const uint2 b = __ldg(reinterpret_cast<const uint2*>(p + rb * ldw));
        r.a = make_uint4(a.x, a.y, 0, 0);
        r.b = make_uint4(b.x, b.y, 0, 0);
        const unsigned short* s = (const unsigned short*)sc + step;
        r.sa = __ldg(s + ra * (ldw / 32));
        r.sb = __ldg(s + rb * (ldw / 32));
    } else {
        const unsigned char* p = (const unsigned char*)w + step * 16 + 4 * t;
        r.a = make_uint4(__ldg(reinterpret_cast<const u32*>(p + ra * (ldw / 2))), 0, 0, 0);
        r.b = make_uint4(__ldg(reinterpret_cast<const u32*>(p + rb * (ldw / 2))), 0, 0, 0);
        const Q4KMeta* m = (const Q4KMeta*)sc + step / 8;
        const Q4KMeta& ma = m[ra * (ldw / 256)];
        const Q4KMeta& mb = m[rb * (ldw / 256)];
        const int sub = step % 8;
        r.sa = __ldg(reinterpret_cast<const u32*>(&ma));
        r.sb = __ldg(reinterpret_cast<const u32*>(&mb));
        r.ma = __ldg(&ma.sc[sub]) | ((u32)__ldg(&ma.m[sub]) << 8);
        r.mb = __ldg(&mb.sc[sub]) | ((u32)__ldg(&mb.m[sub]) << 8);
    }
    return r;
}

// acc += this step's products: the two m16n8k16 products (the lane's values 0-3 and 4-7)
// for every activation part; Q8_0's block scale applied per row after them, and Q4_K's
// value = ds * q - dm as ds * (q . x) - dm * sum(x), the sums from a product with ones.
template <int FMT, int NT>
__device__ __forceinline__ void tc_step(const TcRaw& r, const u32 xb[NT][TC_PARTS][4],
                                        float acc[NT][4]) {
    u32 a[8];
    if (FMT == W_BF16) {
        a[0] = r.a.x; a[1] = r.b.x; a[2] = r.a.y; a[3] = r.b.y;
        a[4] = r.a.z; a[5] = r.b.z; a[6] = r.a.w; a[7] = r.b.w;
    } else if (FMT == W_Q8) {
        const u32 a0 = r.a.x ^ 0x80808080u, a1 = r.a.y ^ 0x80808080u;
        const u32 b0 = r.b.x ^ 0x80808080u, b1 = r.b.y ^ 0x80808080u;
        a[0] = i8pair_bf16(a0, 0); a[1] = i8pair_bf16(b0, 0);
        a[2] = i8pair_bf16(a0, 2); a[3] = i8pair_bf16(b0, 2);
        a[4] = i8pair_bf16(a1, 0); a[5] = i8pair_bf16(b1, 0);
        a[6] = i8pair_bf16(a1, 2); a[7] = i8pair_bf16(b1, 2);
    } else {
        u4x4_bf16(r.a.x & 0x0f0f0f0fu, a[0], a[2]);
        u4x4_bf16(r.b.x & 0x0f0f0f0fu, a[1], a[3]);
        u4x4_bf16((r.a.x >> 4) & 0x0f0f0f0fu, a[4], a[6]);
        u4x4_bf16((r.b.x >> 4) & 0x0f0f0f0fu, a[5], a[7]);
    }
    #pragma unroll
    for (int n = 0; n < NT; n++) {
        if (FMT == W_BF16) {
            #pragma unroll
            for (int p = 0; p < TC_PARTS; p++) {
                mma_bf16(acc[n], a[0], a[1], a[2], a[3], xb[n][p][0], xb[n][p][1]);
                mma_bf16(acc[n], a[4], a[5], a[6], a[7], xb[n][p][2], xb[n][p][3]);
            }
        } else {
            float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            #pragma unroll
            for (int p = 0; p < TC_PARTS; p++) {
                mma_bf16(c, a[0], a[1], a[2], a[3], xb[n][p][0], xb[n][p][1]);
                mma_bf16(c, a[4], a[5], a[6], a[7], xb[n][p][2], xb[n][p][3]);
            }
            if (FMT == W_Q8) {
                const float sa = f16_to_f32(r.sa), sb = f16_to_f32(r.sb);
                acc[n][0] += sa * c[0];
                acc[n][1] += sa * c[1];
                acc[n][2] += sb * c[2];
                acc[n][3] += sb * c[3];
            } else {
                const u32 one = 0x3f803f80u;  // bf16 1.0, twice
                float sx[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                #pragma unroll
                for (int p = 0; p < TC_PARTS; p++) {
                    mma_bf16(sx, one, one, one, one, xb[n][p][0], xb[n][p][1]);
                    mma_bf16(sx, one, one, one, one, xb[n][p][2], xb[n][p][3]);
                }
                const float dsa = f16_to_f32(r.sa & 0xffffu) * (float)(r.ma & 0xffu);
                const float dma = f16_to_f32(r.sa >> 16) * (float)(r.ma >> 8);
                const float dsb = f16_to_f32(r.sb & 0xffffu) * (float)(r.mb & 0xffu);
                const float dmb = f16_to_f32(r.sb >> 16) * (float)(r.mb >> 8);
                acc[n][0] += dsa * c[0] - dma * sx[0];
                acc[n][1] += dsa * c[1] - dma * sx[1];
                acc[n][2] += dsb * c[2] - dmb * sx[2];
                acc[n][3] += dsb * c[3] - dmb * sx[3];
            }
        }
    }
}

// Whether a segment suits the tensor-core loop: whole 32-value steps, rows and activations
// at 16-byte (bf16) / 8-byte (Q8_0) / 4-byte (Q4_K) boundaries.
template <int FMT>
__device__ __forceinline__ bool tc_aligned(const GemvSeg& g) {
    const bool pair = g.epi == EPI_PAIR;
    if ((g.k & 31) != 0 || (g.ldx & 3) != 0 || ((size_t)g.x & 15) != 0) return false;
    const size_t ptrs = (size_t)g.w | (size_t)(pair ? g.w2 : g.w);
    if (FMT == W_BF16) return (g.ldw & 7) == 0 && (ptrs & 15) == 0;
    if (FMT == W_Q8) return (g.ldw & 31) == 0 && (ptrs & 7) == 0;
    return (g.ldw & 255) == 0 && (ptrs & 3) == 0;
}

template <int FMT, int NT>
__device__ __forceinline__ void gemv_tc_body(const GemvArgs& a) {
    const GemvSeg& G = a.seg[block_segment(a)];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int row0 = ((int)blockIdx.x - G.block_start) * TC_ROWS;
    const bool pair = G.epi == EPI_PAIR;
    const int kb = weight_row_bytes(FMT, G.k), rbytes = weight_row_bytes(FMT, G.ldw);
    // The weights do not depend on the kernel before: fetch them while it finishes (two
    // rows per warp).
    if (!G.mask) {
        #pragma unroll
        for (int j = 0; j < 2; j++) {
            const int r = row0 + 2 * warp + j;
            if (r < G.rows) {
                prefetch_l2((const char*)G.w + (size_t)r * rbytes, kb, lane);
                if (pair) prefetch_l2((const char*)G.w2 + (size_t)r * rbytes, kb, lane);
            }
        }
    }
    pdl_start();
    const int B = a.batch;
    constexpr int COLS = 8 * NT;  // activation rows of the block's results
    // Output (row rr, activation row b) of the block's TC_ROWS x COLS results, one per
    // thread (and a second round for NT = 2 with 256 threads: exactly one each).
    static_assert(TC_ROWS * COLS <= TC_WARPS * 32, "one result per thread");
    const int rr = threadIdx.x / COLS, b = threadIdx.x % COLS, r = row0 + rr;
    const bool writes = threadIdx.x < TC_ROWS * COLS && r < G.rows && b < B;
    // Rows whose every mask value is <= 0 are written as 0; a block of such rows only.
    __shared__ int live[TC_ROWS];
    if (G.mask) {
        if (threadIdx.x < TC_ROWS) {
            const int mr = row0 + threadIdx.x;
            bool any = false;
            if (mr < G.rows)
                for (int i = 0; i < B; i++) any |= G.mask[(size_t)i * G.ldm + mr] > 0.0f;
            live[threadIdx.x] = any;
        }
        if (!__syncthreads_or(threadIdx.x < TC_ROWS && live[threadIdx.x])) {
            if (writes) G.y[(size_t)b * G.ldy + r] = 0.0f;
            return;
        }
    }
    float acc[NT][4], acc2[NT][4];
    #pragma unroll
    for (int n = 0; n < NT; n++)
        #pragma unroll
        for (int j = 0; j < 4; j++) acc[n][j] = acc2[n][j] = 0.0f;
    if (tc_aligned<FMT>(G)) {
        // Rows past the end are read as the last row (their results are dropped), and
        // activation rows past the batch as the last one.
        const size_t ra = min(row0 + g, G.rows - 1), rb = min(row0 + g + 8, G.rows - 1);
        const float* xr[NT];
        #pragma unroll
        for (int n = 0; n < NT; n++)
            xr[n] = G.x + (size_t)min(g + 8 * n, B - 1) * G.ldx + (FMT == W_Q4K ? 4 : 8) * t;
        const int steps = G.k / 32;
        for (int s0 = warp; s0 < steps; s0 += TC_WARPS * TC_UNROLL) {
            TcRaw w1[TC_UNROLL], w2[TC_UNROLL];
            #pragma unroll
            for (int u = 0; u < TC_UNROLL; u++) {
                const int st = s0 + u * TC_WARPS;
                if (st < steps) {
                    w1[u] = tc_load<FMT>(G.w, G.sc, ra, rb, G.ldw, t, st);
                    if (pair) w2[u] = tc_load<FMT>(G.w2, G.sc2, ra, rb, G.ldw, t, st);
                }
            }
            #pragma unroll
            for (int u = 0; u < TC_UNROLL; u++) {
                const int st = s0 + u * TC_WARPS;
                if (st < steps) {
                    u32 xb[NT][TC_PARTS][4];
                    #pragma unroll
                    for (int n = 0; n < NT; n++) {
                        // The lane's 8 activations: at 8t.. (Q4_K: 4t.. and 16 + 4t..).
                        const float* xs = xr[n] + st * 32;
                        const float4 x0 = *reinterpret_cast<const float4*>(xs);
                        const float4 x1 =
                            *reinterpret_cast<const float4*>(xs + (FMT == W_Q4K ? 16 : 4));
                        const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
                        #pragma unroll
                        for (int q = 0; q < 4; q++) split_pair(xv[2 * q], xv[2 * q + 1], xb[n], q);
                    }
                    tc_step<FMT, NT>(w1[u], xb, acc);
                    if (pair) tc_step<FMT, NT>(w2[u], xb, acc2);
                }
            }
        }
    } else if (warp == 0) {
        // One value at a time: lane (g, t) sums rows g and g + 8 for activation rows
        // 2t + 8n and 2t + 8n + 1 (the accumulator layout of the tensor-core loop).
        for (int i = 0; i < G.k; i++) {
            #pragma unroll
            for (int n = 0; n < NT; n++)
                #pragma unroll
                for (int j = 0; j < 4; j++) {
                    const int wr = min(row0 + g + 8 * (j >> 1), G.rows - 1);
                    const int xb = min(8 * n + 2 * t + (j & 1), B - 1);
                    const float xv = G.x[(size_t)xb * G.ldx + i];
                    acc[n][j] += weight_at(FMT, G.w, G.sc, wr, G.ldw, i) * xv;
                    if (pair) acc2[n][j] += weight_at(FMT, G.w2, G.sc2, wr, G.ldw, i) * xv;
                }
        }
    }
    // The warps' sums, each output once: red[m][warp][row][activation row].
    __shared__ float red[2][TC_WARPS][TC_ROWS][COLS];
    #pragma unroll
    for (int n = 0; n < NT; n++)
        #pragma unroll
        for (int j = 0; j < 4; j++) {
            red[0][warp][g + 8 * (j >> 1)][8 * n + 2 * t + (j & 1)] = acc[n][j];
            if (pair) red[1][warp][g + 8 * (j >> 1)][8 * n + 2 * t + (j & 1)] = acc2[n][j];
        }
    __syncthreads();
    if (!writes) return;
    float v = 0.0f, v2 = 0.0f;
    #pragma unroll
    for (int w = 0; w < TC_WARPS; w++) {
        v += red[0][w][rr][b];
        if (pair) v2 += red[1][w][rr][b];
    }
    if (G.mask && !live[rr]) v = 0.0f;
    else if (G.epi == EPI_PAIR) v = gelu_tanh(v) * v2;
    else if (G.epi == EPI_GELU_AUX) v = gelu_tanh(G.aux[(size_t)b * G.ldaux + r]) * v;
    else if (G.epi == EPI_GELU_ACC) v = gelu_tanh(v) * G.aux[(size_t)b * G.ldaux + r];
    else if (a.cap > 0.0f) v = tanhf(v / a.cap) * a.cap;
    G.y[(size_t)b * G.ldy + r] = v;
}

// Up to 8 activation rows (one tile of 8 columns) and up to 16 (two).
#define GEMV_TC_KERNEL(NAME, FMT, B)                                                    \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32)                         \
    gemv_tc_##NAME##_b##B(const GemvArgs a) {                                           \
        gemv_tc_body<FMT, B / 8>(a);                                                    \
    }
GEMV_TC_KERNEL(bf16, W_BF16, 8)
GEMV_TC_KERNEL(bf16, W_BF16, 16)
GEMV_TC_KERNEL(q8, W_Q8, 8)
GEMV_TC_KERNEL(q8, W_Q8, 16)
GEMV_TC_KERNEL(q4k, W_Q4K, 8)
GEMV_TC_KERNEL(q4k, W_Q4K, 16)

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

// The same product for 1 to 16 activation rows on the tensor cores: y[b, n] += sum_i
// a[b, i] * Wt[i, n]. The matrix is read densely except for runs of 16 units no row keeps
// (with several rows the kept units cover most of it; with one, the many blocks of this
// kernel still beat the per-unit loop above). The m16n8k16 product
// takes 16 output columns as M, 16 units as K and the activation rows as N (split in
// TC_PARTS bf16 parts as in gemv_tc). A warp covers 64 columns: lane (g, t) loads the 8
// columns at 8g.. of units 2t, 2t + 1, 2t + 8 and 2t + 9 of a 16-unit step, and the four
// products j = 0..3 take its columns 2j (as row g of A) and 2j + 1 (as row g + 8). Grid
// (ncols / 64, units / TT_UNITS); the block's warps split its units in 16-unit steps and
// sum in shared memory; the blocks of a column stripe then add up in a fixed order, so the
// result does not depend on which finishes first: each writes its sums to
// part[(blockIdx.y * batch + b) * ncols + n], and the last of them to arrive (cnt[stripe]
// counts; it resets it) adds the gridDim.y partials in order into y. Needs ncols, ldw
// multiples of 8, lda even and 16-byte-aligned wt, 8-byte-aligned a (the launcher checks).
#define TT_WARPS 8
#define TT_UNITS 1024

template <int NT>
__device__ __forceinline__ void sparse_tc_body(const bf16_t* wt, int ldw, const float* a,
                                               int lda, float* y, int ldy, int batch,
                                               int units, int ncols, float* part,
                                               u32* cnt) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * 64;
    const int k_begin = blockIdx.y * TT_UNITS, k_end = min(units, k_begin + TT_UNITS);
    const bool cols_in = n0 + 8 * g + 8 <= ncols;
    pdl_start();
    float acc[4][NT][4];
    #pragma unroll
    for (int j = 0; j < 4; j++)
        #pragma unroll
        for (int n = 0; n < NT; n++)
            #pragma unroll
            for (int q = 0; q < 4; q++) acc[j][n][q] = 0.0f;
    for (int k0 = k_begin + 16 * warp; k0 < k_end; k0 += 16 * TT_WARPS) {
        // This lane's activations: units 2t, 2t + 1, 2t + 8, 2t + 9 of activation row g
        // (and g + 8); rows past the batch read as the last one, units past the end as 0.
        float2 x[NT][2];
        bool any = false;
        #pragma unroll
        for (int n = 0; n < NT; n++) {
            const float* ar = a + (size_t)min(g + 8 * n, batch - 1) * lda;
            #pragma unroll
            for (int h = 0; h < 2; h++) {
                const int k = k0 + 2 * t + 8 * h;
                x[n][h] = k < k_end ? *reinterpret_cast<const float2*>(ar + k)
                                    : make_float2(0.0f, 0.0f);
                any |= x[n][h].x != 0.0f || x[n][h].y != 0.0f;
            }
        }
        if (!__any_sync(0xffffffffu, any)) continue;  // no row keeps these 16 units
        uint4 w[4];
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            const int k = k0 + 2 * t + (i & 1) + 8 * (i >> 1);
            w[i] = cols_in && k < k_end
                       ? __ldg(reinterpret_cast<const uint4*>(wt + (size_t)k * ldw + n0 + 8 * g))
                       : make_uint4(0, 0, 0, 0);
        }
        u32 xb[NT][TC_PARTS][4];
        #pragma unroll
        for (int n = 0; n < NT; n++) {
            split_pair(x[n][0].x, x[n][0].y, xb[n], 0);
            split_pair(x[n][1].x, x[n][1].y, xb[n], 1);
        }
        const u32 r0[4] = {w[0].x, w[0].y, w[0].z, w[0].w}, r1[4] = {w[1].x, w[1].y, w[1].z, w[1].w};
        const u32 r8[4] = {w[2].x, w[2].y, w[2].z, w[2].w}, r9[4] = {w[3].x, w[3].y, w[3].z, w[3].w};
        #pragma unroll
        for (int j = 0; j < 4; j++) {
            const u32 a0 = __byte_perm(r0[j], r1[j], 0x5410), a1 = __byte_perm(r0[j], r1[j], 0x7632);
            const u32 a2 = __byte_perm(r8[j], r9[j], 0x5410), a3 = __byte_perm(r8[j], r9[j], 0x7632);
            #pragma unroll
            for (int n = 0; n < NT; n++)
                #pragma unroll
                for (int p = 0; p < TC_PARTS; p++)
                    mma_bf16(acc[j][n], a0, a1, a2, a3, xb[n][p][0], xb[n][p][1]);
        }
    }
    // red[warp][column][activation row], then the block's sum per (column, row).
    constexpr int COLS = 8 * NT;
    __shared__ float red[TT_WARPS][64][COLS];
    #pragma unroll
    for (int j = 0; j < 4; j++)
        #pragma unroll
        for (int n = 0; n < NT; n++)
            #pragma unroll
            for (int q = 0; q < 4; q++)
                red[warp][8 * g + 2 * j + (q >> 1)][8 * n + 2 * t + (q & 1)] = acc[j][n][q];
    __syncthreads();
    for (int o = threadIdx.x; o < 64 * COLS; o += TT_WARPS * 32) {
        const int c = o / COLS, b = o % COLS;
        if (b >= batch || n0 + c >= ncols) continue;
        float v = 0.0f;
        #pragma unroll
        for (int w = 0; w < TT_WARPS; w++) v += red[w][c][b];
        part[((size_t)blockIdx.y * batch + b) * ncols + n0 + c] = v;
    }
    __threadfence();
    __syncthreads();
    __shared__ bool last;
    if (threadIdx.x == 0) last = atomicAdd(&cnt[blockIdx.x], 1u) == gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const volatile float* vp = part;
    for (int o = threadIdx.x; o < 64 * batch; o += TT_WARPS * 32) {
        const int c = o % 64, b = o / 64;
        if (n0 + c >= ncols) continue;
        float v = 0.0f;
        for (int k = 0; k < (int)gridDim.y; k++) v += vp[((size_t)k * batch + b) * ncols + n0 + c];
        y[(size_t)b * ldy + n0 + c] = v;
    }
    if (threadIdx.x == 0) cnt[blockIdx.x] = 0u;
}

extern "C" __global__ void __launch_bounds__(TT_WARPS * 32)
sparse_tc_bf16_b8(const bf16_t* wt, int ldw, const float* a, int lda, float* y, int ldy,
                  int batch, int units, int ncols, float* part, u32* cnt) {
    sparse_tc_body<1>(wt, ldw, a, lda, y, ldy, batch, units, ncols, part, cnt);
}
extern "C" __global__ void __launch_bounds__(TT_WARPS * 32)
sparse_tc_bf16_b16(const bf16_t* wt, int ldw, const float* a, int lda, float* y, int ldy,
                   int batch, int units, int ncols, float* part, u32* cnt) {
    sparse_tc_body<2>(wt, ldw, a, lda, y, ldy, batch, units, ncols, part, cnt);
}

// The same product for one activation row, reading only the weight rows of the kept units
// (a[i] != 0). After the Gaussian top-k about 5% of the units are kept, and the tensor-core
// kernel above then still reads every run of 16 units that keeps one: about 56% of the
// matrix. Grid (ceil(ncols / SR_COLS), groups): block (s, g) takes the units [g * per,
// (g + 1) * per), per = ceil(units / groups) <= SR_MAX_UNITS, and the columns [s * SR_COLS,
// (s + 1) * SR_COLS). It lists its kept units in shared memory in unit order (a block-wide
// prefix count, so every sum below has a fixed order); warp w takes list entries w,
// w + SR_WARPS, ..., each lane 8 columns of each. The blocks of a column stripe then add up
// as in the kernel above: each writes its sums to part[g * ncols + column], and the last to
// arrive (cnt[s] counts; it resets it) adds the groups' sums in order into y. Needs ncols
// and ldw multiples of 8 and a 16-byte-aligned wt (the launcher checks).
#define SR_WARPS 8
#define SR_COLS (SR_WARPS * 32)  // one column per thread in the final sums
#define SR_MAX_UNITS 2048

extern "C" __global__ void __launch_bounds__(SR_WARPS * 32)
sparse_rows_bf16(const bf16_t* wt, int ldw, const float* a, float* y, int units, int ncols,
                 float* part, u32* cnt) {
    __shared__ int list[SR_MAX_UNITS];
    __shared__ float vals[SR_MAX_UNITS];
    __shared__ int wcount[SR_WARPS];
    __shared__ float red[SR_WARPS][SR_COLS];
    __shared__ bool last;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int per = (units + (int)gridDim.y - 1) / (int)gridDim.y;
    const int u0 = blockIdx.y * per, u1 = min(units, u0 + per);
    // Thread t looks at q consecutive units, so the list comes out in unit order.
    const int q = (per + SR_COLS - 1) / SR_COLS;
    const int ut = u0 + threadIdx.x * q;
    pdl_start();
    int n = 0;
    for (int j = 0; j < q; j++) n += ut + j < u1 && a[ut + j] != 0.0f;
    int incl = n;
    #pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    if (lane == 31) wcount[warp] = incl;
    __syncthreads();
    int pos = incl - n, total = 0;
    for (int w = 0; w < SR_WARPS; w++) {
        if (w < warp) pos += wcount[w];
        total += wcount[w];
    }
    for (int j = 0; j < q; j++) {
        if (ut + j >= u1) break;
        const float v = a[ut + j];
        if (v != 0.0f) {
            list[pos] = ut + j;
            vals[pos] = v;
            pos++;
        }
    }
    __syncthreads();
    const int c0 = blockIdx.x * SR_COLS + lane * 8;
    float acc[8];
    #pragma unroll
    for (int j = 0; j < 8; j++) acc[j] = 0.0f;
    if (c0 < ncols) {
        // Two rows' loads in flight before their products.
        int t = warp;
        for (; t + SR_WARPS < total; t += 2 * SR_WARPS) {
            const uint4 w0 = __ldg(reinterpret_cast<const uint4*>(wt + (size_t)list[t] * ldw + c0));
            const uint4 w1 = __ldg(
                reinterpret_cast<const uint4*>(wt + (size_t)list[t + SR_WARPS] * ldw + c0));
            float wf[8];
            unpack_bf16x8(w0, wf);
            const float a0 = vals[t], a1 = vals[t + SR_WARPS];
            #pragma unroll
            for (int j = 0; j < 8; j++) acc[j] += a0 * wf[j];
            unpack_bf16x8(w1, wf);
            #pragma unroll
            for (int j = 0; j < 8; j++) acc[j] += a1 * wf[j];
        }
        if (t < total) {
            const uint4 w0 = __ldg(reinterpret_cast<const uint4*>(wt + (size_t)list[t] * ldw + c0));
            float wf[8];
            unpack_bf16x8(w0, wf);
            const float a0 = vals[t];
            #pragma unroll
            for (int j = 0; j < 8; j++) acc[j] += a0 * wf[j];
        }
    }
    // Column lane * 8 + j of the stripe at red[warp][j * 32 + lane] (no bank conflicts).
    #pragma unroll
    for (int j = 0; j < 8; j++) red[warp][j * 32 + lane] = acc[j];
    __syncthreads();
    const int cc = threadIdx.x, col = blockIdx.x * SR_COLS + cc;
    float v = 0.0f;
    #pragma unroll
    for (int w = 0; w < SR_WARPS; w++) v += red[w][(cc % 8) * 32 + cc / 8];
    if (col < ncols) part[(size_t)blockIdx.y * ncols + col] = v;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&cnt[blockIdx.x], 1u) == gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (col < ncols) {
        const volatile float* vp = part;
        float s = 0.0f;
        for (int g = 0; g < (int)gridDim.y; g++) s += vp[(size_t)g * ncols + col];
        y[col] = s;
    }
    if (threadIdx.x == 0) cnt[blockIdx.x] = 0u;
}

// Activations to bf16 split in up to three parts, p0 = bf16(x), p1 = bf16(x - p0),
// p2 = bf16(x - p0 - p1) (p1, p2 may be null), for GEMMs that need more than bf16's
// 8 bits of precision: the sum of the parts' products is near-f32.
// Grid (column blocks, rows): each thread takes 8 values of its row, with 16-byte loads and
// stores where the row allows them.
extern "C" __global__ void split_bf16_rows(const float* x, int ldx, bf16_t* p0, bf16_t* p1,
                                           bf16_t* p2, int ldy, int rows, int n) {
    pdl_start();
    const int r = blockIdx.y;
    const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (r >= rows || c0 >= n) return;
    const float* xr = x + (size_t)r * ldx + c0;
    const size_t o = (size_t)r * ldy + c0;
    const bool vec = c0 + 8 <= n && (((size_t)xr & 15) == 0) && ((o & 7) == 0) &&
                     ((((size_t)p0 | (size_t)p1 | (size_t)p2) & 15) == 0);
    if (!vec) {
        for (int j = 0; j < 8 && c0 + j < n; j++) split_bf16_at(xr[j], o + j, p0, p1, p2);
        return;
    }
    const float4 a = *reinterpret_cast<const float4*>(xr);
    const float4 b = *reinterpret_cast<const float4*>(xr + 4);
    float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    bf16_t* parts[3] = {p0, p1, p2};
    #pragma unroll
    for (int p = 0; p < 3; p++) {
        if (!parts[p]) break;
        u32 w[4];
        #pragma unroll
        for (int j = 0; j < 4; j++) w[j] = take_bf16_pair(v[2 * j], v[2 * j + 1]);
        *reinterpret_cast<uint4*>(parts[p] + o) = make_uint4(w[0], w[1], w[2], w[3]);
    }
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
