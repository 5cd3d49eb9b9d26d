// Attention of the Gemma 3n decoder: q/k/v norms with RoPE and the cache write, then
// attention over the cached keys (sliding window or full), split over key ranges
// ("flash-decoding") and combined.

#define ATT_MAX_HD 256
#define ATT_WARPS 8

// One warp per (head, row): `heads` = H + 2G when the layer owns its KV (else H), grid
// ceil(heads * rows / QKV_WARPS), block QKV_WARPS * 32.
// Head j < H: q = RoPE(RMSNorm(q_j) * w_q) -> q_out. H <= j < H+G: k, with w_k and RoPE,
// -> kcache row pos[b]. H+G <= j: v = RMSNorm(v) (no weight) -> vcache row pos[b].
// kv_rows (may be null): each row's own cache, (keys, values) pointers per row, for a step
// of several sequences; else every row is in kcache / vcache. The weights and the rotation
// (positions come from the host) are ready before the wait for the product. (A block of
// 128 threads per (head, row), summing over the block, took 35 us for a 2048-row E4B
// prefill: 24576 small blocks, three barriers each.)
#define QKV_WARPS 8
#define QKV_PAIRS (ATT_MAX_HD / 2 / 32)
extern "C" __global__ void __launch_bounds__(QKV_WARPS * 32)
qkv_prep(const float* qkv, int ldqkv, const float* wq, const float* wk, const int* pos,
         const float* inv_freq, float* q_out, float* kcache, float* vcache, int h, int g,
         int hd, float eps, const unsigned long long* kv_rows, int heads, int rows) {
    const int item = blockIdx.x * QKV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (item >= heads * rows) return;
    const int j = item % heads, b = item / heads;
    if (kv_rows) {
        kcache = (float*)kv_rows[2 * b];
        vcache = (float*)kv_rows[2 * b + 1];
    }
    const float* src = qkv + (size_t)b * ldqkv + (size_t)j * hd;
    const float* w = j < h ? wq : (j < h + g ? wk : 0);
    float* dst;
    if (j < h) dst = q_out + ((size_t)b * h + j) * hd;
    else if (j < h + g) dst = kcache + ((size_t)pos[b] * g + (j - h)) * hd;
    else dst = vcache + ((size_t)pos[b] * g + (j - h - g)) * hd;
    const int half = hd / 2;
    // Lane pairs (i, i + half) for i = lane + 32 k.
    float w0[QKV_PAIRS], w1[QKV_PAIRS], sn[QKV_PAIRS], cs[QKV_PAIRS];
    #pragma unroll
    for (int k = 0; k < QKV_PAIRS; k++) {
        const int i = lane + 32 * k;
        w0[k] = w1[k] = 1.0f;
        sn[k] = 0.0f;
        cs[k] = 1.0f;
        if (i < half && w) {
            w0[k] = w[i];
            w1[k] = w[i + half];
        }
        if (i < half && j < h + g) sincosf((float)pos[b] * inv_freq[i], &sn[k], &cs[k]);
    }
    pdl_start();
    float x0[QKV_PAIRS], x1[QKV_PAIRS], sq = 0.0f;
    #pragma unroll
    for (int k = 0; k < QKV_PAIRS; k++) {
        const int i = lane + 32 * k;
        x0[k] = i < half ? src[i] : 0.0f;
        x1[k] = i < half ? src[i + half] : 0.0f;
        sq += x0[k] * x0[k] + x1[k] * x1[k];
    }
    const float inv = 1.0f / sqrtf(warp_sum(sq) / (float)hd + eps);
    #pragma unroll
    for (int k = 0; k < QKV_PAIRS; k++) {
        const int i = lane + 32 * k;
        if (i >= half) continue;
        const float a = x0[k] * inv * w0[k], c = x1[k] * inv * w1[k];
        dst[i] = a * cs[k] - c * sn[k];
        dst[i + half] = c * cs[k] + a * sn[k];
    }
}

// Merges the nsplit (<= 32) partials of one (row, head) into out (block-wide): the
// maxima and sums are read in parallel, then each output dim sums the scaled partials.
__device__ void combine_partials(const float* part, float* out, int b, int head, int h, int hd,
                                 int nsplit) {
    __shared__ float wgt[32];
    __shared__ float total;
    const float* pp = part + ((size_t)b * h + head) * nsplit * (hd + 2);
    if (threadIdx.x < 32) {
        int s = threadIdx.x;
        float ms = s < nsplit ? __ldcg(pp + s * (hd + 2)) : -INFINITY;
        float ls = s < nsplit ? __ldcg(pp + s * (hd + 2) + 1) : 0.0f;
        float M = warp_max(ms);
        float w = ms > -INFINITY ? expf(ms - M) : 0.0f;
        wgt[s] = w;
        float L = warp_sum(ls * w);
        if (s == 0) total = L;
    }
    __syncthreads();
    for (int dd = threadIdx.x; dd < hd; dd += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < nsplit; s++)
            if (wgt[s] > 0.0f) a += __ldcg(pp + s * (hd + 2) + 2 + dd) * wgt[s];
        out[((size_t)b * h + head) * hd + dd] = a / total;
    }
}

#ifndef ATT_KEYS
#define ATT_KEYS 4
#endif

// The end of a split block of decode attention for (row b, head): merges its WARPS warps'
// online-softmax states (each warp's m, l and acc, acc in sacc[warp * stride + dim], shared
// memory), then writes out (nsplit == 1) or the split's partial, part[((b*h + head)*nsplit +
// s)*(hd+2)]: max, sum, then hd values. The last split block to finish (done[b*h + head]
// counts them and is re-armed to zero) merges the partials. Every thread of the block calls it.
template <int WARPS>
__device__ __forceinline__ void att_merge_warps(float m, float l,
                                                const float (&acc)[ATT_MAX_HD / 32],
                                                float* sacc, int stride, float* out,
                                                float* part, int* done, int b, int head, int h,
                                                int hd, int s, int nsplit) {
    __shared__ float sm[WARPS], sl[WARPS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int per_lane = (hd + 31) / 32;
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
    #pragma unroll
    for (int i = 0; i < ATT_MAX_HD / 32; i++) {
        const int dd = lane + 32 * i;
        if (i < per_lane && dd < hd) sacc[warp * stride + dd] = acc[i];
    }
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < WARPS; w++) M = fmaxf(M, sm[w]);
    float L = 0.0f;
    for (int w = 0; w < WARPS; w++)
        if (sm[w] > -INFINITY) L += sl[w] * expf(sm[w] - M);
    float* pp = part + (((size_t)b * h + head) * nsplit + s) * (hd + 2);
    for (int dd = threadIdx.x; dd < hd; dd += blockDim.x) {
        float a = 0.0f;
        for (int w = 0; w < WARPS; w++)
            if (sm[w] > -INFINITY) a += sacc[w * stride + dd] * expf(sm[w] - M);
        if (nsplit == 1) out[((size_t)b * h + head) * hd + dd] = a / L;
        else pp[2 + dd] = a;
    }
    if (nsplit == 1) return;
    if (threadIdx.x == 0) {
        pp[0] = M;
        pp[1] = L;
    }
    __shared__ int last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int* c = done + (size_t)b * h + head;
        last = atomicAdd(c, 1) == nsplit - 1;
        if (last) *c = 0;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    combine_partials(part, out, b, head, h, hd, nsplit);
}

// Loads into kv[t], vv[t] the key and value rows of the keys key0 + t * step (t <
// ATT_KEYS) in [from, to]; keys past p get zeros (masked out later).
__device__ __forceinline__ void att_load(const float* kcache, const float* vcache, int key0,
                                         int step, int p, int from, int to, size_t row,
                                         int kvh, int hd, int lane, int per_lane,
                                         float kv[ATT_KEYS][ATT_MAX_HD / 32],
                                         float vv[ATT_KEYS][ATT_MAX_HD / 32]) {
    #pragma unroll
    for (int t = 0; t < ATT_KEYS; t++) {
        const int key = key0 + t * step;
        const bool past = key > p;
        if (!past && (key < from || key > to)) continue;
        const float* kr = kcache + (size_t)key * row + (size_t)kvh * hd;
        const float* vr = vcache + (size_t)key * row + (size_t)kvh * hd;
        #pragma unroll
        for (int i = 0; i < ATT_MAX_HD / 32; i++) {
            const int dd = lane + 32 * i;
            const bool in = !past && i < per_lane && dd < hd;
            kv[t][i] = in ? kr[dd] : 0.0f;
            vv[t][i] = in ? vr[dd] : 0.0f;
        }
    }
}

// grid (H, rows, nsplit), block ATT_WARPS * 32 (kv_rows as in qkv_prep). Query row b at
// position pos[b] sees keys
// (pos - window, pos] (window 0: [0, pos]). Warp w of split s takes the keys
// lo + s*ATT_WARPS + w, stepping by nsplit*ATT_WARPS, with an online softmax. With
// nsplit == 1 the result is written to out; otherwise (max, sum, acc) partials go to
// part[((b*H + head)*nsplit + s)*(hd+2)]; the last split block of each (row, head) merges
// them (done[] counts finished splits).
//
// The cached keys before pos[b] were written by earlier steps or layers (for a step of
// several rows of one sequence: those before row 0's position), so they are read before
// the wait for the kernel before, which writes the step's new keys: each warp's first
// ATT_KEYS keys into registers, the rest of its keys into L2 (always safe).
extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32)
attention_decode(const float* q, const float* kcache, const float* vcache, const int* pos,
                 float* out, float* part, int* done, int h, int g, int hd, int window,
                 const unsigned long long* kv_rows) {
    const int head = blockIdx.x, b = blockIdx.y, s = blockIdx.z, nsplit = gridDim.z;
    if (kv_rows) {
        // One sequence per row (see qkv_prep).
        kcache = (const float*)kv_rows[2 * b];
        vcache = (const float*)kv_rows[2 * b + 1];
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvh = head / (h / g);
    const int p = pos[b];
    const int lo = window > 0 ? max(0, p + 1 - window) : 0;
    const size_t row = (size_t)g * hd;
    const int step = nsplit * ATT_WARPS;
    const int first = lo + s * ATT_WARPS + warp;
    // The keys after this warp's first step into L2 (the first step's go to registers).
    for (int key = first + ATT_KEYS * step; key < p; key += step) {
        prefetch_l2(kcache + key * row + (size_t)kvh * hd, hd * 4, lane);
        prefetch_l2(vcache + key * row + (size_t)kvh * hd, hd * 4, lane);
    }
    // This warp's first ATT_KEYS keys into registers before the wait too, except those the
    // kernel before may be writing: key p, and with several rows of one sequence every
    // key from row 0's position on. Those are loaded after the wait.
    const int fresh = kv_rows || gridDim.y == 1 ? p : pos[0];
    const int per_lane = (hd + 31) / 32;
    float kv[ATT_KEYS][ATT_MAX_HD / 32], vv[ATT_KEYS][ATT_MAX_HD / 32];
    att_load(kcache, vcache, first, step, p, 0, fresh - 1, row, kvh, hd, lane, per_lane, kv, vv);
    pdl_start();
    att_load(kcache, vcache, first, step, p, fresh, p, row, kvh, hd, lane, per_lane, kv, vv);
    float qv[ATT_MAX_HD / 32], acc[ATT_MAX_HD / 32];
    const float* qr = q + ((size_t)b * h + head) * hd;
    #pragma unroll
    for (int i = 0; i < ATT_MAX_HD / 32; i++) {
        int dd = lane + 32 * i;
        qv[i] = (i < per_lane && dd < hd) ? qr[dd] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    // ATT_KEYS keys per step, their loads and reductions independent of each other.
    for (int key = first; key <= p; key += ATT_KEYS * step) {
        if (key != first)
            att_load(kcache, vcache, key, step, p, 0, p, row, kvh, hd, lane, per_lane, kv, vv);
        float dot[ATT_KEYS];
        #pragma unroll
        for (int t = 0; t < ATT_KEYS; t++) {
            dot[t] = 0.0f;
            #pragma unroll
            for (int i = 0; i < ATT_MAX_HD / 32; i++) dot[t] += qv[i] * kv[t][i];
        }
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            #pragma unroll
            for (int t = 0; t < ATT_KEYS; t++) dot[t] += __shfl_xor_sync(0xffffffffu, dot[t], o);
        }
        float mn = m;
        #pragma unroll
        for (int t = 0; t < ATT_KEYS; t++) {
            if (key + t * step > p) dot[t] = -INFINITY;
            mn = fmaxf(mn, dot[t]);
        }
        const float corr = expf(m - mn);
        float e[ATT_KEYS];
        l *= corr;
        #pragma unroll
        for (int t = 0; t < ATT_KEYS; t++) {
            e[t] = key + t * step <= p ? expf(dot[t] - mn) : 0.0f;
            l += e[t];
        }
        #pragma unroll
        for (int i = 0; i < ATT_MAX_HD / 32; i++) {
            float v = acc[i] * corr;
            #pragma unroll
            for (int t = 0; t < ATT_KEYS; t++) v += e[t] * vv[t][i];
            acc[i] = v;
        }
        m = mn;
    }
    // Combine the warps of this block, then the splits.
    __shared__ float sacc[ATT_WARPS * ATT_MAX_HD];
    att_merge_warps<ATT_WARPS>(m, l, acc, sacc, ATT_MAX_HD, out, part, done, b, head, h, hd, s,
                               nsplit);
}


// Prefill attention, the softmax between the two batched f32 GEMMs: scores of head h and
// query row b at s[(h * rows + b) * keys + key] over keys [0, keys); row b at position
// pos[b] sees (pos - window, pos] (window 0: [0, pos]); masked keys get weight 0.
// grid (rows, heads), block 256.
extern "C" __global__ void softmax_masked(float* s, int keys, int rows, const int* pos,
                                          int window) {
    pdl_start();
    float* row = s + ((size_t)blockIdx.y * rows + blockIdx.x) * keys;
    const int p = pos[blockIdx.x];
    const int lo = window > 0 ? max(0, p + 1 - window) : 0;
    float m = -INFINITY;
    for (int k = threadIdx.x; k < keys; k += blockDim.x)
        if (k >= lo && k <= p) m = fmaxf(m, row[k]);
    __shared__ float red[32];
    __shared__ float bm;
    m = warp_max(m);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : -INFINITY;
        v = warp_max(v);
        if (threadIdx.x == 0) bm = v;
    }
    __syncthreads();
    m = bm;
    float sum = 0.0f;
    for (int k = threadIdx.x; k < keys; k += blockDim.x) {
        float e = (k >= lo && k <= p) ? expf(row[k] - m) : 0.0f;
        row[k] = e;
        sum += e;
    }
    float inv = 1.0f / block_sum(sum);
    for (int k = threadIdx.x; k < keys; k += blockDim.x) row[k] *= inv;
}

// Prefill attention on the tensor cores, flash style (bf16 inputs, f32 accumulation; the
// prefill with bf16 activations uses it in place of the two GEMMs and the softmax above).
// grid (ceil(rows / (FA_ROWS / hpb)) * nchunks * H / hpb), block FA_WARPS * 32, dynamic
// shared memory flash_smem_bytes(HD). A block takes hpb (1 or 2) query heads of one KV head,
// and one of up to nchunks runs of its rows' key tiles (rows whose tiles exceed `chunk`
// split them so that long rows do not hold back the whole launch: each run writes its
// partial sums to `part`, [rows, H, nchunks, HD + 2] f32, and the last of a row block's runs
// to finish, counted in `done` (zero before, zero after), merges them). Output: `out`
// ([rows, H * HD] f32), or bf16 to `outb` when it is not null. The keys
// and values it brings in serve both, and FA_ROWS / hpb query rows of each; warp w takes
// head w / (FA_WARPS / hpb) of the block and 16 rows. Query row b at position pos[b] sees
// keys (pos - window, pos] (window 0: [0, pos]) of its KV head, the rows of kcache /
// vcache ([keys, g * hd] f32).
//
// The block's query rows go to shared memory once as bf16; then, FA_KEYS keys at a time,
// their keys and values do too (every load of a tile issued before the first store), and
// each warp computes its 16 rows' scores S = q . k with m16n8k16 products (q and k operands
// read by ldmatrix), keeps a running maximum and sum per row (online softmax; the
// accumulators are rescaled only when a maximum moved), and adds P . V: P rounded to bf16
// and taken straight from the score accumulators (the accumulator layout of one 16x8
// product is the operand layout of the next's A), V's operands read transposed by ldmatrix.
// Lane (r = lane / 4, t = lane % 4) holds rows r and r + 8.
#define FA_WARPS 8
#define FA_THREADS (FA_WARPS * 32)
#define FA_ROWS (16 * FA_WARPS)
#define FA_KEYS 32
// Row stride in shared memory, in bf16 values: 8 more than the data, so that the 8 rows a
// fragment load touches start in different banks.
#define FA_STRIDE(HD) ((HD) + 8)

// FA_SKIP_RESCALE=0: the flash kernel rescales its accumulators after every tile (for
// comparisons).
#ifndef FA_SKIP_RESCALE
#define FA_SKIP_RESCALE 1
#endif

__device__ __forceinline__ void ldmatrix_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// ROWS rows of a [*, ld] f32 matrix, HD values each from `src`, to bf16 rows of
// FA_STRIDE(HD) in shared memory; rows at or past `valid` are zeros. The loads of up to 8
// float4 per thread are issued before their stores.
template <int HD, int ROWS>
__device__ __forceinline__ void fa_stage(const float* src, size_t ld, int valid, bf16_t* dst) {
    constexpr int C4 = HD / 4, TOTAL = ROWS * C4, PER = (TOTAL + FA_THREADS - 1) / FA_THREADS;
    constexpr int CHUNK = PER < 8 ? PER : 8;
    #pragma unroll
    for (int j0 = 0; j0 < PER; j0 += CHUNK) {
        float4 v[CHUNK];
        #pragma unroll
        for (int j = 0; j < CHUNK; j++) {
            const int i = threadIdx.x + (j0 + j) * FA_THREADS;
            const int rr = i / C4, c = (i % C4) * 4;
            v[j] = i < TOTAL && rr < valid
                       ? *reinterpret_cast<const float4*>(src + rr * ld + c)
                       : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
        #pragma unroll
        for (int j = 0; j < CHUNK; j++) {
            const int i = threadIdx.x + (j0 + j) * FA_THREADS;
            const int rr = i / C4, c = (i % C4) * 4;
            if (i < TOTAL) {
                u32* d = reinterpret_cast<u32*>(dst + rr * FA_STRIDE(HD) + c);
                d[0] = bf16x2_of(v[j].x, v[j].y);
                d[1] = bf16x2_of(v[j].z, v[j].w);
            }
        }
    }
}

template <int HD>
__device__ __forceinline__ void attention_flash_body(const float* q, const float* kcache,
                                                     const float* vcache, const int* pos,
                                                     float* out, bf16_t* outb, float* part,
                                                     u32* done, int rows, int keys, int h,
                                                     int g, int window, int hpb, int nchunks,
                                                     int chunk) {
    extern __shared__ __align__(16) unsigned char fa_smem[];
    bf16_t* qs = (bf16_t*)fa_smem;                  // [FA_ROWS][STRIDE]: rows of each head
    bf16_t* ks = qs + FA_ROWS * FA_STRIDE(HD);      // [FA_KEYS][STRIDE]
    bf16_t* vs = ks + FA_KEYS * FA_STRIDE(HD);      // [FA_KEYS][STRIDE]
    __shared__ int span[2];
    __shared__ bool last;
    const int rpb = FA_ROWS / hpb;                   // query rows of the block
    // Block index: head group fastest, then key chunk, then row blocks from the last (the
    // longest rows first).
    const int nhg = h / hpb, nrb = (rows + rpb - 1) / rpb;
    const int hg = blockIdx.x % nhg, chunk_i = (blockIdx.x / nhg) % nchunks;
    const int rbk = nrb - 1 - (int)blockIdx.x / (nhg * nchunks);
    const int head0 = hg * hpb, kvh = head0 / (h / g);
    const int row0 = rbk * rpb;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int hb = warp / (FA_WARPS / hpb), sub = warp % (FA_WARPS / hpb);
    const int head = head0 + hb;
    const int r = lane >> 2, t = lane & 3;
    const size_t ldq = (size_t)h * HD, ldk = (size_t)g * HD;
    pdl_start();
    // The block's rows and the keys they see.
    if (warp == 0) {
        int lo = 0x7fffffff, hi = -1;
        for (int i = lane; i < rpb && row0 + i < rows; i += 32) {
            const int p = pos[row0 + i];
            lo = min(lo, window > 0 ? max(0, p + 1 - window) : 0);
            hi = max(hi, min(p, keys - 1));
        }
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
            hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
        }
        if (lane == 0) {
            span[0] = lo;
            span[1] = hi;
        }
    }
    if (hpb == 2) {
        fa_stage<HD, FA_ROWS / 2>(q + row0 * ldq + (size_t)head0 * HD, ldq, rows - row0, qs);
        fa_stage<HD, FA_ROWS / 2>(q + row0 * ldq + (size_t)(head0 + 1) * HD, ldq, rows - row0,
                                  qs + (FA_ROWS / 2) * FA_STRIDE(HD));
    } else {
        fa_stage<HD, FA_ROWS>(q + row0 * ldq + (size_t)head0 * HD, ldq, rows - row0, qs);
    }
    __syncthreads();
    // The block's share of the key tiles: chunk chunk_i of nc nearly equal runs of at most
    // about `chunk` tiles (nc = 1: all of them, and no partial results).
    const int tile0 = span[0] - span[0] % FA_KEYS;
    const int tiles = span[1] >= tile0 ? (span[1] - tile0) / FA_KEYS + 1 : 0;
    const int nc = max(1, min(nchunks, (tiles + chunk - 1) / chunk));
    if (chunk_i >= nc) return;
    const int per = (tiles + nc - 1) / nc;
    const int klo = tile0 + chunk_i * per * FA_KEYS;
    const int khi = min(span[1], tile0 + (chunk_i + 1) * per * FA_KEYS - 1);
    // This warp's two rows per lane: their positions (-1: past the last row, sees nothing).
    const int ra = row0 + sub * 16 + r, rb = ra + 8;
    const int pa = ra < rows ? pos[ra] : -1, pb = rb < rows ? pos[rb] : -1;
    const int la = window > 0 ? pa + 1 - window : 0, lb = window > 0 ? pb + 1 - window : 0;
    float o[HD / 8][4];
    #pragma unroll
    for (int n = 0; n < HD / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float ma = -INFINITY, mb = -INFINITY, sa = 0.0f, sb = 0.0f;
    // ldmatrix rows of this lane: in the warp's 16 query rows x 16 dims (matrices rows 0-7 /
    // 8-15 x dims 0-7, then the same x dims 8-15: the A operand a0..a3), and in 16 keys x
    // 16 dims of K (keys 0-7 x dims 0-7 / 8-15, then keys 8-15: the B operands of two
    // 8-key blocks).
    const u32 qbase = smem_addr(qs + (hb * rpb + sub * 16 + (lane & 7) + (lane & 8)) * FA_STRIDE(HD) +
                                (lane >> 4) * 8);
    const u32 kbase = smem_addr(ks + ((lane & 7) + ((lane >> 4) << 3)) * FA_STRIDE(HD) +
                                ((lane >> 3) & 1) * 8);
    // ldmatrix row of this lane in a 16-key x 16-dim block of V: matrices (keys 0-7,
    // dims 0-7), (keys 8-15, dims 0-7), (keys 0-7, dims 8-15), (keys 8-15, dims 8-15).
    const u32 vbase = smem_addr(vs + ((lane & 7) + (lane & 8)) * FA_STRIDE(HD) + (lane >> 4) * 8);
    for (int key0 = klo; key0 <= khi; key0 += FA_KEYS) {
        const size_t off = (size_t)key0 * ldk + (size_t)kvh * HD;
        fa_stage<HD, FA_KEYS>(kcache + off, ldk, keys - key0, ks);
        fa_stage<HD, FA_KEYS>(vcache + off, ldk, keys - key0, vs);
        __syncthreads();
        // Scores of this warp's 16 rows against the FA_KEYS keys.
        float s[FA_KEYS / 8][4];
        #pragma unroll
        for (int j = 0; j < FA_KEYS / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        #pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            u32 a0, a1, a2, a3;
            ldmatrix_x4(qbase + kk * 32, a0, a1, a2, a3);
            #pragma unroll
            for (int j = 0; j < FA_KEYS / 8; j += 2) {
                u32 b0, b1, b2, b3;
                ldmatrix_x4(kbase + (u32)((j * 8 * FA_STRIDE(HD) + kk * 16) * 2), b0, b1, b2, b3);
                mma_bf16(s[j], a0, a1, a2, a3, b0, b1);
                mma_bf16(s[j + 1], a0, a1, a2, a3, b2, b3);
            }
        }
        // Mask, then the online softmax of rows a (s[j][0..1]) and b (s[j][2..3]).
        float na = ma, nb = mb;
        #pragma unroll
        for (int j = 0; j < FA_KEYS / 8; j++) {
            #pragma unroll
            for (int e = 0; e < 2; e++) {
                const int key = key0 + 8 * j + 2 * t + e;
                if (key > pa || key < la) s[j][e] = -INFINITY;
                if (key > pb || key < lb) s[j][2 + e] = -INFINITY;
                na = fmaxf(na, s[j][e]);
                nb = fmaxf(nb, s[j][2 + e]);
            }
        }
        #pragma unroll
        for (int x = 1; x < 4; x <<= 1) {
            na = fmaxf(na, __shfl_xor_sync(0xffffffffu, na, x));
            nb = fmaxf(nb, __shfl_xor_sync(0xffffffffu, nb, x));
        }
        // No key seen yet: nothing to rescale, every weight 0.
        const float ca = na == -INFINITY ? 1.0f : expf(ma - na);
        const float cb = nb == -INFINITY ? 1.0f : expf(mb - nb);
        ma = na;
        mb = nb;
        sa *= ca;
        sb *= cb;
        #pragma unroll
        for (int j = 0; j < FA_KEYS / 8; j++) {
            #pragma unroll
            for (int e = 0; e < 2; e++) {
                s[j][e] = s[j][e] == -INFINITY ? 0.0f : expf(s[j][e] - na);
                s[j][2 + e] = s[j][2 + e] == -INFINITY ? 0.0f : expf(s[j][2 + e] - nb);
                sa += s[j][e];
                sb += s[j][2 + e];
            }
        }
        // Once the maxima settle, most tiles leave them as they were: nothing to rescale.
        if (!FA_SKIP_RESCALE || __any_sync(0xffffffffu, ca != 1.0f || cb != 1.0f)) {
            #pragma unroll
            for (int n = 0; n < HD / 8; n++) {
                o[n][0] *= ca;
                o[n][1] *= ca;
                o[n][2] *= cb;
                o[n][3] *= cb;
            }
        }
        // O += P . V, 16 keys per product, two 8-dim column blocks per ldmatrix.
        #pragma unroll
        for (int kk = 0; kk < FA_KEYS / 16; kk++) {
            const u32 a0 = bf16x2_of(s[2 * kk][0], s[2 * kk][1]);
            const u32 a1 = bf16x2_of(s[2 * kk][2], s[2 * kk][3]);
            const u32 a2 = bf16x2_of(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            const u32 a3 = bf16x2_of(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            #pragma unroll
            for (int n = 0; n < HD / 8; n += 2) {
                u32 b0, b1, b2, b3;
                const u32 addr = vbase + (u32)((kk * 16 * FA_STRIDE(HD) + n * 8) * 2);
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                             : "=r"(b0), "=r"(b1), "=r"(b2), "=r"(b3)
                             : "r"(addr));
                mma_bf16(o[n], a0, a1, a2, a3, b0, b1);
                mma_bf16(o[n + 1], a0, a1, a2, a3, b2, b3);
            }
        }
        __syncthreads();
    }
    // The row sums are spread over the four lanes of each row.
    #pragma unroll
    for (int x = 1; x < 4; x <<= 1) {
        sa += __shfl_xor_sync(0xffffffffu, sa, x);
        sb += __shfl_xor_sync(0xffffffffu, sb, x);
    }
    if (nc > 1) {
        // Partial results (unscaled sums, running maximum, sum of weights) of this chunk;
        // the last chunk of the row block to finish merges them all, in chunk order.
        auto at = [&](int row, int c) {
            return part + ((size_t)(row * h + head) * nchunks + c) * (HD + 2);
        };
        #pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            const int c = 8 * n + 2 * t;
            if (ra < rows) *reinterpret_cast<float2*>(at(ra, chunk_i) + c) = make_float2(o[n][0], o[n][1]);
            if (rb < rows) *reinterpret_cast<float2*>(at(rb, chunk_i) + c) = make_float2(o[n][2], o[n][3]);
        }
        if (t == 0) {
            if (ra < rows) { at(ra, chunk_i)[HD] = ma; at(ra, chunk_i)[HD + 1] = sa; }
            if (rb < rows) { at(rb, chunk_i)[HD] = mb; at(rb, chunk_i)[HD + 1] = sb; }
        }
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) last = atomicAdd(&done[rbk * nhg + hg], 1u) == (u32)(nc - 1);
        __syncthreads();
        if (!last) return;
        __threadfence();
        if (threadIdx.x == 0) done[rbk * nhg + hg] = 0u;
        const int cra = min(ra, rows - 1), crb = min(rb, rows - 1);
        ma = mb = -INFINITY;
        for (int c = 0; c < nc; c++) {
            ma = fmaxf(ma, __ldcg(at(cra, c) + HD));
            mb = fmaxf(mb, __ldcg(at(crb, c) + HD));
        }
        sa = sb = 0.0f;
        #pragma unroll
        for (int n = 0; n < HD / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
        for (int c = 0; c < nc; c++) {
            const float* pa_ = at(cra, c);
            const float* pb_ = at(crb, c);
            const float mca = __ldcg(pa_ + HD), mcb = __ldcg(pb_ + HD);
            const float wa = mca == -INFINITY ? 0.0f : expf(mca - ma);
            const float wb = mcb == -INFINITY ? 0.0f : expf(mcb - mb);
            sa += __ldcg(pa_ + HD + 1) * wa;
            sb += __ldcg(pb_ + HD + 1) * wb;
            #pragma unroll
            for (int n = 0; n < HD / 8; n++) {
                const int col = 8 * n + 2 * t;
                const float2 va = __ldcg(reinterpret_cast<const float2*>(pa_ + col));
                const float2 vb = __ldcg(reinterpret_cast<const float2*>(pb_ + col));
                o[n][0] += va.x * wa;
                o[n][1] += va.y * wa;
                o[n][2] += vb.x * wb;
                o[n][3] += vb.y * wb;
            }
        }
    }
    const float ia = sa > 0.0f ? 1.0f / sa : 0.0f, ib = sb > 0.0f ? 1.0f / sb : 0.0f;
    #pragma unroll
    for (int n = 0; n < HD / 8; n++) {
        const size_t c = (size_t)head * HD + 8 * n + 2 * t;
        if (outb) {
            if (ra < rows)
                *reinterpret_cast<u32*>(outb + ra * ldq + c) = bf16x2_of(o[n][0] * ia, o[n][1] * ia);
            if (rb < rows)
                *reinterpret_cast<u32*>(outb + rb * ldq + c) = bf16x2_of(o[n][2] * ib, o[n][3] * ib);
        } else {
            if (ra < rows)
                *reinterpret_cast<float2*>(out + ra * ldq + c) = make_float2(o[n][0] * ia, o[n][1] * ia);
            if (rb < rows)
                *reinterpret_cast<float2*>(out + rb * ldq + c) = make_float2(o[n][2] * ib, o[n][3] * ib);
        }
    }
}

#define ATTENTION_FLASH(HD)                                                                 \
    extern "C" __global__ void __launch_bounds__(FA_THREADS, 1)                            \
    attention_flash_hd##HD(const float* q, const float* kcache, const float* vcache,       \
                           const int* pos, float* out, bf16_t* outb, float* part,          \
                           u32* done, int rows, int keys, int h, int g, int window, int hpb,  \
                           int nchunks, int chunk) {                                        \
        attention_flash_body<HD>(q, kcache, vcache, pos, out, outb, part, done, rows, keys,  \
                                 h, g, window, hpb, nchunks, chunk);                        \
    }
ATTENTION_FLASH(16)
ATTENTION_FLASH(64)
ATTENTION_FLASH(128)
ATTENTION_FLASH(256)
