// Attention of the Gemma 3n decoder: q/k/v norms with RoPE and the cache write, then
// attention over the cached keys (sliding window or full), split over key ranges
// ("flash-decoding") and combined.

#define ATT_MAX_HD 256
#define ATT_WARPS 8

// grid (H + 2G, rows) when the layer owns its KV (else (H, rows)); block 128.
// Head j < H: q = RoPE(RMSNorm(q_j) * w_q) -> q_out. H <= j < H+G: k, with w_k and RoPE,
// -> kcache row pos[b]. H+G <= j: v = RMSNorm(v) (no weight) -> vcache row pos[b].
// kv_rows (may be null): each row's own cache, (keys, values) pointers per row, for a step
// of several sequences; else every row is in kcache / vcache. The weights and the rotation
// (positions come from the host) are ready before the wait for the product.
extern "C" __global__ void qkv_prep(const float* qkv, int ldqkv, const float* wq,
                                    const float* wk, const int* pos, const float* inv_freq,
                                    float* q_out, float* kcache, float* vcache, int h, int g,
                                    int hd, float eps, const unsigned long long* kv_rows) {
    int j = blockIdx.x, b = blockIdx.y;
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
    // At most ATT_MAX_HD / 2 / 128 = 1 pair per thread.
    const int i = threadIdx.x;
    const bool has = i < half;
    float w0 = 1.0f, w1 = 1.0f, sn = 0.0f, cs = 1.0f;
    if (has && w) {
        w0 = w[i];
        w1 = w[i + half];
    }
    if (has && j < h + g) sincosf((float)pos[b] * inv_freq[i], &sn, &cs);
    pdl_start();
    float x0 = has ? src[i] : 0.0f, x1 = has ? src[i + half] : 0.0f;
    const float inv = 1.0f / sqrtf(block_sum(x0 * x0 + x1 * x1) / (float)hd + eps);
    if (!has) return;
    x0 *= inv * w0;
    x1 *= inv * w1;
    dst[i] = x0 * cs - x1 * sn;
    dst[i + half] = x1 * cs + x0 * sn;
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
    // Combine the warps of this block.
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS];
    __shared__ float sacc[ATT_WARPS][ATT_MAX_HD];
    if (lane == 0) { sm[warp] = m; sl[warp] = l; }
    #pragma unroll
    for (int i = 0; i < ATT_MAX_HD / 32; i++) {
        int dd = lane + 32 * i;
        if (i < per_lane && dd < hd) sacc[warp][dd] = acc[i];
    }
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, sm[w]);
    float L = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++) if (sm[w] > -INFINITY) L += sl[w] * expf(sm[w] - M);
    for (int dd = threadIdx.x; dd < hd; dd += blockDim.x) {
        float a = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (sm[w] > -INFINITY) a += sacc[w][dd] * expf(sm[w] - M);
        if (nsplit == 1) {
            out[((size_t)b * h + head) * hd + dd] = a / L;
        } else {
            part[(((size_t)b * h + head) * nsplit + s) * (hd + 2) + 2 + dd] = a;
        }
    }
    if (nsplit == 1) return;
    if (threadIdx.x == 0) {
        float* pp = part + (((size_t)b * h + head) * nsplit + s) * (hd + 2);
        pp[0] = M;
        pp[1] = L;
    }
    // The last split block to finish merges the partials (and re-arms the counter).
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
