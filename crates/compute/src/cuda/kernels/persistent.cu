// Persistent kernels: one block per multiprocessor runs a whole chain of dependent steps,
// with a barrier across the grid between them instead of a kernel launch. A launch in a
// dependent chain costs 6-7 us beyond its bytes (docs/perf.md: launch, wait, tail of the
// last wave); a barrier is one atomic and a spin, and each block brings the weights of its
// next step into L2 before it waits there, so the memory keeps streaming across steps.
//
// Every block must be resident at once (the barriers wait for all of them): the host
// launches exactly one block of PK_THREADS per multiprocessor, and the kernel lets the next
// launch start (programmatic dependent launch) only after its last barrier, so no later
// kernel can take a multiprocessor a block of this one still needs.

#define PK_THREADS 512
// The decode kernel's larger pieces are called, not inlined: inlined at every call the
// kernel's code is ~290 KB, more than the instruction cache holds, and the E2B step took
// 4.44 ms instead of 3.98 (docs/perf.md). PK_INLINE inlines them.
#ifdef PK_INLINE
#define PK_FN __forceinline__
#else
#define PK_FN __noinline__
#endif
#define PK_WARPS (PK_THREADS / 32)
#define PK_MAX_SEGS 4

__device__ __forceinline__ unsigned ld_acquire_u32(const unsigned* p) {
#if __CUDA_ARCH__ >= 700
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
#else
    return *(const volatile unsigned*)p;
#endif
}

// Barrier across the grid: counter ctr[0] counts arrivals over the whole launch (target
// grows by gridDim.x a barrier); ctr[1] counts blocks that have left (pk_leave). One thread
// of the block arrives and waits, after the block's writes (a block barrier before).
__device__ __forceinline__ void grid_arrive_wait(unsigned* ctr, unsigned target) {
    __threadfence();
    atomicAdd(ctr, 1u);
    // A block that never arrives (the grid not resident at once) would hang the GPU: after
    // about 2^32 cycles of waiting, trap instead (the launch then fails).
    const long long t0 = clock64();
    while (ld_acquire_u32(ctr) < target) {
        if (clock64() - t0 > (1ll << 32)) __trap();
    }
    __threadfence();
}

__device__ __forceinline__ void grid_sync(unsigned* ctr, unsigned& target) {
    __syncthreads();
    target += gridDim.x;
    if (threadIdx.x == 0) grid_arrive_wait(ctr, target);
    __syncthreads();
}

// After the last barrier (one thread of the block): the last block to leave sets the
// counters back to zero for the next launch (every block has passed every barrier by then).
__device__ __forceinline__ void pk_leave(unsigned* ctr) {
    if (atomicAdd(ctr + 1, 1u) == gridDim.x - 1) {
        ctr[0] = 0;
        ctr[1] = 0;
        __threadfence();
    }
}

// pk_leave, then the next kernel may launch.
__device__ __forceinline__ void pk_exit(unsigned* ctr) {
    if (threadIdx.x == 0) pk_leave(ctr);
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// One step of products sharing the grid: up to PK_MAX_SEGS bf16 products (gemv.cu's
// GemvSeg, one activation row each; block_start is unused), their rows numbered one after
// the other.
struct PkProducts {
    GemvSeg seg[PK_MAX_SEGS];
    int nseg;
};

// Brings this block's first rows of a later product into L2 while it waits at a barrier:
// rows [rows * b / G, ...) of w (the rows the block will compute there, or near them), up to
// PK_PREFETCH_BYTES. The later step then starts on L2 hits while the rest streams behind.
#ifndef PK_PREFETCH_BYTES
#define PK_PREFETCH_BYTES (64 * 1024)
#endif
__device__ __forceinline__ void pk_prefetch_rows(const bf16_t* w, int ldw, int rows, int k) {
#if __CUDA_ARCH__ >= 900
    if (!w || rows <= 0) return;
    const int r0 = (int)(((long long)rows * blockIdx.x) / gridDim.x);
    const int r1 = (int)(((long long)rows * (blockIdx.x + 1)) / gridDim.x);
    if ((k | ldw) & 7) return;  // bulk prefetches take 16-byte aligned runs
    const int bytes = (k * 2 + 15) & ~15;
    const int end = min(r1, r0 + max(1, PK_PREFETCH_BYTES / bytes));
    for (int r = r0 + (int)threadIdx.x; r < end; r += blockDim.x)
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(w + (size_t)r * ldw),
                     "r"(bytes)
                     : "memory");
#endif
}

// pk_prefetch_rows for each matrix of step `p` (as decode_layers does for its steps).
__device__ __forceinline__ void pk_prefetch(const PkProducts& p) {
    for (int s = 0; s < p.nseg; s++) {
        const GemvSeg& g = p.seg[s];
        pk_prefetch_rows((const bf16_t*)g.w, g.ldw, g.rows, g.k);
        if (g.epi == EPI_PAIR) pk_prefetch_rows((const bf16_t*)g.w2, g.ldw, g.rows, g.k);
    }
}

// Where each segment's x goes in shared memory (xoff[s]), once per distinct x (one thread).
__device__ __forceinline__ void pk_x_offsets(const PkProducts& p, int* xoff) {
    int o = 0;
    for (int s = 0; s < p.nseg; s++) {
        if (s > 0 && p.seg[s].x == p.seg[s - 1].x && p.seg[s].k <= p.seg[s - 1].k) {
            xoff[s] = xoff[s - 1];
        } else {
            xoff[s] = o;
            o += (p.seg[s].k + 7) & ~7;
        }
    }
}

// Copies the step's distinct activations to xs at xoff, by threads first, first + nt, ...
__device__ __forceinline__ void pk_copy_x(const PkProducts& p, float* xs, const int* xoff,
                                          int first, int nt) {
    for (int s = 0; s < p.nseg; s++) {
        if (s > 0 && xoff[s] == xoff[s - 1]) continue;
        const float* x = p.seg[s].x;
        float* d = xs + xoff[s];
        for (int i = (int)threadIdx.x - first; i < p.seg[s].k; i += nt) d[i] = x[i];
    }
}

// The activations of a step's products to shared memory xs (pk_x_offsets, pk_copy_x),
// unless `loaded` (every segment's x is already at xs).
__device__ __forceinline__ void pk_load_x(const PkProducts& p, float* xs, int* xoff, bool loaded) {
    if (loaded) {
        if (threadIdx.x < PK_MAX_SEGS) xoff[threadIdx.x] = 0;
    } else if (threadIdx.x == 0) {
        pk_x_offsets(p, xoff);
    }
    __syncthreads();
    if (!loaded) pk_copy_x(p, xs, xoff, 0, blockDim.x);
    __syncthreads();
}

// The products of one step, by the whole grid. Block b takes rows [total * b / G,
// total * (b + 1) / G); its warps split them: a warp per row when there are at least as
// many rows as warps, else each row over wpr warps (a power of two, runs of at least 256
// values), their sums added in shared memory in a fixed order. The activations (each
// segment's x, k values) are first copied to shared memory `xs`, unless `loaded`: then
// every segment's x is already at xs.
#ifndef PK_UNROLL
#define PK_UNROLL 4
#endif
__device__ PK_FN void pk_products_at(const PkProducts& p, float* xs, bool loaded) {
    __shared__ float red[2][PK_WARPS];
    __shared__ int xoff[PK_MAX_SEGS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    // Activations to shared memory, once per distinct x.
    pk_load_x(p, xs, xoff, loaded);
    int total = 0;
    for (int s = 0; s < p.nseg; s++) total += p.seg[s].rows;
    const int r0 = (int)(((long long)total * blockIdx.x) / gridDim.x);
    const int r1 = (int)(((long long)total * (blockIdx.x + 1)) / gridDim.x);
    const int nr = r1 - r0;
    int wpr = 1;
    while (wpr < PK_WARPS && nr * wpr * 2 <= PK_WARPS) wpr *= 2;
    // Units (row, part): a warp takes units warp, warp + PK_WARPS, ...
    const int units = nr * wpr;
    for (int u = warp; u < ((units + PK_WARPS - 1) / PK_WARPS) * PK_WARPS; u += PK_WARPS) {
        float acc = 0.0f, acc2 = 0.0f;
        int s = 0, row = r0 + u / wpr;
        const bool live = u < units;
        if (live) {
            while (row >= p.seg[s].rows) row -= p.seg[s++].rows;
            const GemvSeg& g = p.seg[s];
            const bool pair = g.epi == EPI_PAIR;
            // This part's run of k, a multiple of 8 values.
            const int run = ((g.k + wpr - 1) / wpr + 7) & ~7;
            const int k0 = (u % wpr) * run;
            const int k1 = min(g.k, k0 + run);
            const bf16_t* wr = (const bf16_t*)g.w + (size_t)row * g.ldw;
            const bf16_t* wr2 = pair ? (const bf16_t*)g.w2 + (size_t)row * g.ldw : wr;
            const float* x = xs + xoff[s];
            float wf[8];
            // Rows whose values are not 8-aligned runs (a LAuReL rank or per-layer input
            // width below 8 in the small test models): one value per lane at a time.
            const bool vec = ((g.k | g.ldw) & 7) == 0;
            for (int i = k0 + lane; i < k1 && !vec; i += 32) {
                acc += bf16_to_f32(wr[i]) * x[i];
                if (pair) acc2 += bf16_to_f32(wr2[i]) * x[i];
            }
            for (int i0 = k0 + lane * 8; i0 < k1 && vec; i0 += PK_UNROLL * 256) {
                uint4 a[PK_UNROLL], b[PK_UNROLL];
                #pragma unroll
                for (int q = 0; q < PK_UNROLL; q++) {
                    const int i = i0 + q * 256;
                    if (i < k1) {
                        a[q] = __ldg(reinterpret_cast<const uint4*>(wr + i));
                        if (pair) b[q] = __ldg(reinterpret_cast<const uint4*>(wr2 + i));
                    }
                }
                #pragma unroll
                for (int q = 0; q < PK_UNROLL; q++) {
                    const int i = i0 + q * 256;
                    if (i < k1) {
                        const float4 x0 = *reinterpret_cast<const float4*>(x + i);
                        const float4 x1 = *reinterpret_cast<const float4*>(x + i + 4);
                        unpack_bf16x8(a[q], wf);
                        acc += ((wf[0] * x0.x + wf[1] * x0.y) + (wf[2] * x0.z + wf[3] * x0.w)) +
                               ((wf[4] * x1.x + wf[5] * x1.y) + (wf[6] * x1.z + wf[7] * x1.w));
                        if (pair) {
                            unpack_bf16x8(b[q], wf);
                            acc2 += ((wf[0] * x0.x + wf[1] * x0.y) + (wf[2] * x0.z + wf[3] * x0.w)) +
                                    ((wf[4] * x1.x + wf[5] * x1.y) + (wf[6] * x1.z + wf[7] * x1.w));
                        }
                    }
                }
            }
        }
        acc = warp_sum(acc);
        acc2 = warp_sum(acc2);
        if (wpr == 1) {
            if (live && lane == 0) gemv_store(p.seg[s], 0.0f, 0, row, acc, acc2);
            continue;
        }
        // wpr > 1: units fit in one round (nr * wpr <= PK_WARPS).
        if (lane == 0) {
            red[0][warp] = acc;
            red[1][warp] = acc2;
        }
        __syncthreads();
        if (threadIdx.x < nr) {
            int t = r0 + threadIdx.x, ss = 0;
            while (t >= p.seg[ss].rows) t -= p.seg[ss++].rows;
            float v = 0.0f, v2 = 0.0f;
            for (int w = threadIdx.x * wpr; w < (threadIdx.x + 1) * wpr; w++) {
                v += red[0][w];
                v2 += red[1][w];
            }
            gemv_store(p.seg[ss], 0.0f, 0, t, v, v2);
        }
    }
}

__device__ __forceinline__ void pk_products(const PkProducts& p, float* xs) {
    pk_products_at(p, xs, false);
}

__device__ __forceinline__ void pk_products_shared(const PkProducts& p, float* xs) {
    pk_products_at(p, xs, true);
}

// A chain of product steps, each depending on the one before (the decode products of a
// step, for measuring what the barriers cost against launches; `bench` under
// GEMMA3N_CUDA_PROFILE=1). Dynamic shared memory: the largest step's activations.
extern "C" __global__ void __launch_bounds__(PK_THREADS, 1)
products_chain(const PkProducts* steps, int n, unsigned* ctr) {
    extern __shared__ float xs[];
    unsigned target = 0;
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    // PK_CHAIN_SKIP (for taking the cost apart): bit 0 leaves out the products, bit 1 the
    // barriers (the results are then wrong), bit 2 the prefetches.
#ifndef PK_CHAIN_SKIP
#define PK_CHAIN_SKIP 0
#endif
    if (!(PK_CHAIN_SKIP & 4)) pk_prefetch(steps[0]);
    for (int p = 0; p < n; p++) {
        if (!(PK_CHAIN_SKIP & 1)) pk_products(steps[p], xs);
        if (p + 1 < n && !(PK_CHAIN_SKIP & 4)) pk_prefetch(steps[p + 1]);
        if (!(PK_CHAIN_SKIP & 2)) grid_sync(ctr, target);
    }
    pk_exit(ctr);
}

// ---- The products chain with its weights streamed through shared memory by bulk copies.
//
// The chain above keeps at most a few KB of weights in flight per warp (registers), and its
// 16 warps per multiprocessor do not cover the memory's latency. Here the weights go
// through a ring of shared-memory stages filled by bulk copies (cp.async.bulk, the tensor
// memory accelerator): up to the ring's bytes in flight per multiprocessor, independent of
// the warps. Warp 0 only issues copies: it fills a stage as soon as the stage's "empty"
// mbarrier says its reader is done, so it runs ahead across the grid barriers (the weights
// do not depend on the previous step). Each of the other 15 warps reads whole stages alone,
// completing on their "full" mbarriers, and never waits for another warp between stages.
// A stage holds one task: up to PKT_MAX_ROWS whole rows (of both matrices of a pair), or a
// run of one long row (a long row's runs all go to one warp, which sums them in order).
#define PKT_MAX_STAGES 64
#define PKT_MAX_ROWS 256
#define PKT_MAX_STEPS 512

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// Where a block is in the chain's tasks: step p, row r of the step (-1: the step's first
// row of this block not found yet), position kpos in a long row.
struct PktIt {
    int p, r, kpos;
};
struct PktTask {
    int p, s, row, nrows, k0, kc;  // step, segment, first row (in the segment), rows, run
};

// The next task of step P after `it`, the block's rows of the step being [rg.x, rg.y)
// (false: none left in the step).
__device__ __forceinline__ bool pkt_step_next(const PkProducts& P, int2 rg, int stage, PktIt& it,
                                              PktTask& t) {
    if (it.r < 0) {
        it.r = rg.x;
        it.kpos = 0;
    }
    if (it.r >= rg.y) return false;
    int s = 0, row = it.r;
    while (row >= P.seg[s].rows) row -= P.seg[s++].rows;
    const GemvSeg& g = P.seg[s];
    const int mats = g.epi == EPI_PAIR ? 2 : 1;
    t.p = it.p;
    t.s = s;
    t.row = row;
    if (g.k * 2 * mats <= stage) {
        const int nr = min(min(stage / (g.k * 2 * mats), PKT_MAX_ROWS),
                           min(g.rows - row, rg.y - it.r));
        t.nrows = nr;
        t.k0 = 0;
        t.kc = g.k;
        it.r += nr;
    } else {
        t.nrows = 1;
        t.k0 = it.kpos;
        t.kc = min((stage / (2 * mats)) & ~7, g.k - it.kpos);
        it.kpos += t.kc;
        if (it.kpos >= g.k) {
            it.kpos = 0;
            it.r++;
        }
    }
    return true;
}

// Issues task t's bulk copies (of segment g) into stage `dst`, completing on mbarrier `bar`
// (one thread).
__device__ __forceinline__ void pkt_issue(const GemvSeg& g, const PktTask& t, void* dst,
                                          unsigned long long* bar) {
#if __CUDA_ARCH__ >= 900
    const int mats = g.epi == EPI_PAIR ? 2 : 1;
    const unsigned run = (unsigned)t.kc * 2;
    const unsigned b = smem_u32(bar);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b),
                 "r"(run * t.nrows * mats)
                 : "memory");
    unsigned d = smem_u32(dst);
    // Rows stored one after the other (ldw = k) go in one copy.
    const int per = g.ldw == t.kc ? t.nrows : 1;
    for (int m = 0; m < mats; m++) {
        const bf16_t* w = (const bf16_t*)(m == 0 ? g.w : g.w2);
        for (int j = 0; j < t.nrows; j += per, d += run * per) {
            const bf16_t* src = w + (size_t)(t.row + j) * g.ldw + t.k0;
            asm volatile(
                "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], "
                "%2, [%3];" ::"r"(d),
                "l"(src), "r"(run * per), "r"(b)
                : "memory");
        }
    }
#endif
}

// Waits for the phase of parity `parity` of mbarrier `bar` to complete (a trap instead of
// a hang after about 2^32 cycles).
__device__ __forceinline__ void pkt_wait(unsigned long long* bar, unsigned parity) {
#if __CUDA_ARCH__ >= 900
    const unsigned b = smem_u32(bar);
    const long long t0 = clock64();
    unsigned ok = 0;
    while (!ok) {
        asm volatile(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            " selp.u32 %0, 1, 0, p;\n}"
            : "=r"(ok)
            : "r"(b), "r"(parity)
            : "memory");
        if (!ok && clock64() - t0 > (1ll << 32)) __trap();
#ifdef PKT_SLEEP
        if (!ok) __nanosleep(PKT_SLEEP);
#endif
    }
#endif
}

// The consumer warps' barrier (named barrier 1: every thread but warp 0's).
__device__ __forceinline__ void pkt_bar() {
    asm volatile("bar.sync 1, %0;" ::"r"(PK_THREADS - 32) : "memory");
}

// Dynamic shared memory: the ring (stages x stage bytes, a multiple of 128), then the
// largest step's activations. `stages`: 2 to PKT_MAX_STAGES.
#define PKT_CONSUMERS (PK_WARPS - 1)
extern "C" __global__ void __launch_bounds__(PK_THREADS, 1)
products_chain_tma(const PkProducts* __restrict__ steps, int n, int stages, int stage,
                   unsigned* ctr) {
    extern __shared__ __align__(128) unsigned char pkt_smem[];
    __shared__ __align__(8) unsigned long long full[PKT_MAX_STAGES], empty[PKT_MAX_STAGES];
    __shared__ int done[PKT_MAX_STAGES];  // uses of each stage read so far
    __shared__ int2 rng[PKT_MAX_STEPS];
    __shared__ PkProducts sp;
    __shared__ int xoff[PK_MAX_SEGS];
    float* xs = (float*)(pkt_smem + (size_t)stages * stage);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (threadIdx.x < PKT_MAX_STAGES) done[threadIdx.x] = 0;
    if (threadIdx.x == 0) {
        for (int i = 0; i < stages; i++) {
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(full + i))
                         : "memory");
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(empty + i))
                         : "memory");
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
#endif
    // Each step's rows of this block (as pk_products_at splits them).
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        int total = 0;
        for (int s = 0; s < steps[i].nseg; s++) total += steps[i].seg[s].rows;
        rng[i] = make_int2((int)(((long long)total * blockIdx.x) / gridDim.x),
                           (int)(((long long)total * (blockIdx.x + 1)) / gridDim.x));
    }
    __syncthreads();
    if (warp == 0) {
        // The producer: every task of the chain in order, a stage each, round the ring.
        // It reads each step's descriptor from its own copy in shared memory.
        __shared__ PkProducts pp;
        if (lane == 0) {
            PktIt it = {0, -1, 0};
            PktTask t;
            int slot = 0;
            unsigned ph = 0;
            long long k = 0;
            for (; it.p < n; it.p++, it.r = -1) {
                pp = steps[it.p];
                while (pkt_step_next(pp, rng[it.p], stage, it, t)) {
                    if (k >= stages) pkt_wait(empty + slot, ph ^ 1);
                    pkt_issue(pp.seg[t.s], t, pkt_smem + (size_t)slot * stage, full + slot);
                    if (++slot == stages) {
                        slot = 0;
                        ph ^= 1;
                    }
                    k++;
                }
            }
        }
        return;
    }
    const int cw = warp - 1;
    unsigned target = 0;
    int slot = 0, unit = -1, use = 0;
    unsigned ph = 0;
    float racc = 0.0f, racc2 = 0.0f;  // a long row's sum so far (its warp's lanes)
    for (int p = 0; p < n; p++) {
        // The step's descriptor and activations, by the consumer warps.
        if (threadIdx.x == 32) {
            sp = steps[p];
            pk_x_offsets(sp, xoff);
        }
        pkt_bar();
        pk_copy_x(sp, xs, xoff, 32, PK_THREADS - 32);
        pkt_bar();
        PktIt cit = {p, -1, 0};
        PktTask t;
        while (pkt_step_next(sp, rng[p], stage, cit, t)) {
            // A task starting a row (or rows) starts a unit; units go round the warps.
            if (t.k0 == 0) unit++;
            if (unit % PKT_CONSUMERS == cw) {
                const GemvSeg& g = sp.seg[t.s];
                const bool pair = g.epi == EPI_PAIR;
                // An mbarrier's parity test cannot tell a phase two ahead from the one
                // before: first wait for the reader of this stage's previous use.
                if (lane == 0) {
                    const long long t0 = clock64();
                    while (*(volatile int*)(done + slot) < use) {
                        if (clock64() - t0 > (1ll << 32)) __trap();
#ifdef PKT_SLEEP
                        __nanosleep(PKT_SLEEP);
#endif
                    }
                }
                __syncwarp();
                pkt_wait(full + slot, ph);
                const bf16_t* wst = (const bf16_t*)(pkt_smem + (size_t)slot * stage);
                const float* x = xs + xoff[t.s] + t.k0;
                for (int j = 0; j < t.nrows; j++) {
                    const bf16_t* wr = wst + (size_t)j * t.kc;
                    const bf16_t* wr2 = wst + (size_t)(t.nrows + j) * t.kc;
                    float acc = 0.0f, acc2 = 0.0f, wf[8];
                    for (int i = lane * 8; i < t.kc; i += 256) {
                        const float4 x0 = *reinterpret_cast<const float4*>(x + i);
                        const float4 x1 = *reinterpret_cast<const float4*>(x + i + 4);
                        unpack_bf16x8(*reinterpret_cast<const uint4*>(wr + i), wf);
                        acc += ((wf[0] * x0.x + wf[1] * x0.y) + (wf[2] * x0.z + wf[3] * x0.w)) +
                               ((wf[4] * x1.x + wf[5] * x1.y) + (wf[6] * x1.z + wf[7] * x1.w));
                        if (pair) {
                            unpack_bf16x8(*reinterpret_cast<const uint4*>(wr2 + i), wf);
                            acc2 +=
                                ((wf[0] * x0.x + wf[1] * x0.y) + (wf[2] * x0.z + wf[3] * x0.w)) +
                                ((wf[4] * x1.x + wf[5] * x1.y) + (wf[6] * x1.z + wf[7] * x1.w));
                        }
                    }
                    acc = warp_sum(acc);
                    acc2 = warp_sum(acc2);
                    if (t.kc == g.k) {
                        if (lane == 0) gemv_store(g, 0.0f, 0, t.row + j, acc, acc2);
                    } else {
                        racc += acc;
                        racc2 += acc2;
                        if (t.k0 + t.kc == g.k) {
                            if (lane == 0) gemv_store(g, 0.0f, 0, t.row, racc, racc2);
                            racc = racc2 = 0.0f;
                        }
                    }
                }
                // Done with the stage: the producer may refill it.
                __syncwarp();
                if (lane == 0) {
                    *(volatile int*)(done + slot) = use + 1;
#if __CUDA_ARCH__ >= 900
                    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(
                                     smem_u32(empty + slot))
                                 : "memory");
#endif
                }
            }
            if (++slot == stages) {
                slot = 0;
                ph ^= 1;
                use++;
            }
        }
        // Across the grid (the consumer warps of every block).
        pkt_bar();
        target += gridDim.x;
        if (threadIdx.x == 32) grid_arrive_wait(ctr, target);
        pkt_bar();
    }
    // As pk_exit, from the consumers' first thread.
    if (threadIdx.x == 32) pk_leave(ctr);
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// ---- The decode step's layers in one persistent launch (one activation row).
//
// Per layer, with a barrier (B) after every product step, since each step's output is the
// whole next input:
//   predict  every block: the previous layer's per-layer input injected into streams 1..3,
//            the AltUp router and prediction, x = RMSNorm(pred_0) * w_in (block 0 writes
//            the injected streams to `t`, pred_0, the coefficients and x)
//            q, k, v, LAuReL left = x . W                                              B
//   prep     block 0: q/k norms, RoPE, the new key and value into the cache            B
//   attend   block (head, split): its keys; the last split of a head merges             B
//            o, LAuReL right                                                             B
//   post-att every block: h and y = RMSNorm(h) * w_pre_ffn (block 0 writes h)
//            dense: gelu(gate) * up                                                      B
//                   down                                                                 B
//            sparse: gate                                                                B
//                   every block: the cut-off; the kept rows of up, gelu(gate - cut) * up B
//                   down over the kept units (stored transposed)                        B
//   correct  every block: AltUp correction (block 0 writes the streams to `s`), v
//            per-layer input gate, gelu(v . W) * pi                                     B
//            per-layer input projection                                                  B
// and after the last layer block 0 injects the last projection into `s`. Steps that every
// block repeats read only what earlier barriers made visible and write nothing another
// block reads before the next barrier.

// One layer (PkLayer in ops.rs): bf16 matrices with their row strides.
struct PkLayer {
    const bf16_t *q, *k, *v, *o, *gate, *up, *down, *ll, *lr, *plg, *plp;
    const float *q_norm, *k_norm, *input_ln, *post_attn_ln, *pre_ffn_ln, *post_ffn_ln;
    const float *laurel_norm, *router_norm, *router, *pred_coefs, *corr_coefs, *corr_scale;
    const float *post_pl_norm, *inv_freq, *pi;
    float *kcache, *vcache;
    int ldq, ldk, ldv, ldo, ldgate, ldup, lddown, ldll, ldlr, ldplg, ldplp;
    int f;          // FFN width
    int sparse;     // Gaussian top-k
    float z;
    int own_kv;     // the layer computes its keys and values
    int window;     // sliding window (0: full attention)
    int down_t;     // down stored transposed ([f, lddown]: row u = column u of down)
};

// The step (PkStep in ops.rs).
struct PkStep {
    const PkLayer* layers;
    float *s, *t;           // the streams (row 0, A blocks of ss floats), and the injected ones
    const int* pos;
    float *x, *qkv, *q, *att, *part, *o, *lr, *hb, *p0, *rc, *gate, *act, *fo, *pg, *pq;
    unsigned *ctr, *done;   // barrier counters (2); finished splits per head (h, zeroed)
    const float* inj_w;     // the injection pending at the first layer (its norm weight), or 0
    long long ss;
    int nl, d, h, g, hd, p, r;
    float eps;
    // Null, or where each block records when it reached and left every barrier (pk_sync).
    unsigned long long* trace;
};

// The trace of a step (GEMMA3N_CUDA_PK_TRACE=1; read by ops.rs pk_trace_report): trace[0]
// the barriers recorded, trace[1 + b] barrier b's phase (below), then from trace[1 +
// PK_TRACE_MAX] per barrier and block the %globaltimer (ns) at arrival and departure.
// Barrier 0 stands for the start of the kernel.
#define PK_TRACE_MAX 512
enum { PH_START, PH_QKV, PH_PREP, PH_ATTEND, PH_OLR, PH_GATE_UP, PH_SPARSE_UP, PH_DOWN,
       PH_PL_GATE, PH_PL_PROJ };

__device__ __forceinline__ unsigned long long pk_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ void pk_record(const PkStep& a, int& nb, int phase,
                                          unsigned long long arrive) {
    if (threadIdx.x == 0 && nb < PK_TRACE_MAX) {
        unsigned long long* tr =
            a.trace + 1 + PK_TRACE_MAX + ((size_t)nb * gridDim.x + blockIdx.x) * 2;
        tr[0] = arrive;
        tr[1] = pk_now();
        if (blockIdx.x == 0) {
            a.trace[1 + nb] = phase;
            a.trace[0] = nb + 1;
        }
    }
    nb++;
}

// grid_sync, traced when the step has a trace.
__device__ __forceinline__ void pk_sync(const PkStep& a, unsigned& target, int& nb, int phase) {
    if (!a.trace) {
        grid_sync(a.ctr, target);
        return;
    }
    __syncthreads();
    const unsigned long long t = pk_now();
    grid_sync(a.ctr, target);
    pk_record(a, nb, phase, t);
}


// Never launched: its by-value parameter puts PkLayer's size in the PTX, where the kernel
// test compares it with the Rust struct's (ops.rs RawPkLayer).
extern "C" __global__ void pk_layer_probe(const PkLayer l) {}

// The AltUp router's outputs m = tanh(RMSNorm(x) * w_norm / D . R^T) of x[0..d).
__device__ __forceinline__ void pk_router(const float* x, const float* nw, const float* router,
                                          int d, float eps, float m[ALTUP_A]) {
    const float inv = rms_inv(x, d, eps);
    float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float v = x[i] * inv * nw[i] * (1.0f / (float)d);
        #pragma unroll
        for (int q = 0; q < ALTUP_A; q++) part[q] += v * router[(size_t)q * d + i];
    }
    block_sum4(part);
    #pragma unroll
    for (int q = 0; q < ALTUP_A; q++) m[q] = tanhf(part[q]);
}

// predict: sv (shared, A x d) = streams + injection; xs = x. Block 0 writes t, p0, rc, x.
__device__ PK_FN void pk_predict(const PkStep& a, const PkLayer& L, const float* inj_w, float* sv,
                           float* xs) {
    const int d = a.d;
    __shared__ float c0[ALTUP_A];
    __shared__ float cc[ALTUP_A * ALTUP_A];
    float inv_q = 0.0f;
    if (inj_w) inv_q = rms_inv(a.pq, d, a.eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float iv = inj_w ? a.pq[i] * inv_q * inj_w[i] : 0.0f;
        #pragma unroll
        for (int k = 0; k < ALTUP_A; k++) sv[k * d + i] = a.s[k * a.ss + i] + (k > 0 ? iv : 0.0f);
    }
    __syncthreads();
    float m[ALTUP_A];
    pk_router(sv, L.router_norm, L.router, d, a.eps, m);
    if (threadIdx.x < ALTUP_A * ALTUP_A) {
        const int i = threadIdx.x / ALTUP_A, j = threadIdx.x % ALTUP_A;
        float v = 0.0f;
        #pragma unroll
        for (int q = 0; q < ALTUP_A; q++) v += L.pred_coefs[(i * ALTUP_A + j) * ALTUP_A + q] * m[q];
        cc[threadIdx.x] = v;
    }
    __syncthreads();
    if (threadIdx.x < ALTUP_A) c0[threadIdx.x] = cc[threadIdx.x];
    if (blockIdx.x == 0 && threadIdx.x < ALTUP_A * ALTUP_A) a.rc[threadIdx.x] = cc[threadIdx.x];
    __syncthreads();
    // pred_0 = s_0 + sum_j C[0][j] s_j, into xs for now.
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = sv[i];
        #pragma unroll
        for (int j = 0; j < ALTUP_A; j++) v += c0[j] * sv[j * d + i];
        xs[i] = v;
    }
    __syncthreads();
    const float inv = rms_inv(xs, d, a.eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float p0 = xs[i], xv = p0 * inv * L.input_ln[i];
        if (blockIdx.x == 0) {
            a.p0[i] = p0;
            a.x[i] = xv;
            #pragma unroll
            for (int k = 0; k < ALTUP_A; k++) a.t[k * a.ss + i] = sv[k * d + i];
        }
        xs[i] = xv;
    }
    __syncthreads();
}

// prep (block 0, a warp per head): as attention.cu's qkv_prep for one row.
__device__ PK_FN void pk_prep(const PkStep& a, const PkLayer& L) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int heads = L.own_kv ? a.h + 2 * a.g : a.h;
    const int hd = a.hd, half = hd / 2, pos = a.pos[0];
    for (int j = warp; j < heads; j += PK_WARPS) {
        const float* src = a.qkv + (size_t)j * hd;
        const float* w = j < a.h ? L.q_norm : (j < a.h + a.g ? L.k_norm : 0);
        float* dst;
        if (j < a.h) dst = a.q + (size_t)j * hd;
        else if (j < a.h + a.g) dst = L.kcache + ((size_t)pos * a.g + (j - a.h)) * hd;
        else dst = L.vcache + ((size_t)pos * a.g + (j - a.h - a.g)) * hd;
        float sq = 0.0f;
        for (int i = lane; i < half; i += 32) sq += src[i] * src[i] + src[i + half] * src[i + half];
        const float inv = 1.0f / sqrtf(warp_sum(sq) / (float)hd + a.eps);
        for (int i = lane; i < half; i += 32) {
            const float w0 = w ? w[i] : 1.0f, w1 = w ? w[i + half] : 1.0f;
            const float x0 = src[i] * inv * w0, x1 = src[i + half] * inv * w1;
            if (j < a.h + a.g) {
                float sn, cs;
                sincosf((float)pos * L.inv_freq[i], &sn, &cs);
                dst[i] = x0 * cs - x1 * sn;
                dst[i + half] = x1 * cs + x0 * sn;
            } else {
                dst[i] = x0;
                dst[i + half] = x1;
            }
        }
    }
}

// attend: block b < h * nsplit takes head b % h, split b / h; its warps take every
// PK_WARPS-th key of the split's keys (key lo + split * PK_WARPS + warp + i * nsplit *
// PK_WARPS), with an online softmax; warps merge in shared memory; splits merge in the last
// block of the head to finish (done[head] counts them and is left at zero).
__device__ PK_FN void pk_attend(const PkStep& a, const PkLayer& L, int nsplit, float* sacc) {
    const int item = blockIdx.x;
    if (item >= a.h * nsplit) return;
    const int head = item % a.h, s = item / a.h;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int hd = a.hd, kvh = head / (a.h / a.g), p = a.pos[0];
    const int lo = L.window > 0 ? max(0, p + 1 - L.window) : 0;
    const size_t row = (size_t)a.g * hd;
    const int step = nsplit * PK_WARPS;
    const int per_lane = (hd + 31) / 32;
    float qv[ATT_MAX_HD / 32], acc[ATT_MAX_HD / 32];
    const float* qr = a.q + (size_t)head * hd;
    #pragma unroll
    for (int i = 0; i < ATT_MAX_HD / 32; i++) {
        const int dd = lane + 32 * i;
        qv[i] = (i < per_lane && dd < hd) ? qr[dd] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int key = lo + s * PK_WARPS + warp; key <= p; key += step) {
        const float* kr = L.kcache + (size_t)key * row + (size_t)kvh * hd;
        const float* vr = L.vcache + (size_t)key * row + (size_t)kvh * hd;
        float kv[ATT_MAX_HD / 32], vv[ATT_MAX_HD / 32], dot = 0.0f;
        #pragma unroll
        for (int i = 0; i < ATT_MAX_HD / 32; i++) {
            const int dd = lane + 32 * i;
            const bool in = i < per_lane && dd < hd;
            kv[i] = in ? __ldcg(kr + dd) : 0.0f;
            vv[i] = in ? __ldcg(vr + dd) : 0.0f;
            dot += qv[i] * kv[i];
        }
        dot = warp_sum(dot);
        const float mn = fmaxf(m, dot);
        const float corr = expf(m - mn), e = expf(dot - mn);
        l = l * corr + e;
        #pragma unroll
        for (int i = 0; i < ATT_MAX_HD / 32; i++) acc[i] = acc[i] * corr + e * vv[i];
        m = mn;
    }
    att_merge_warps<PK_WARPS>(m, l, acc, sacc, hd, a.att, a.part, (int*)a.done, 0, head, a.h,
                              hd, s, nsplit);
}

// post-attention: h = (pred_0 + RMSNorm(o) * w_post_attn + x + RMSNorm(lr) * w_laurel) /
// sqrt(2) and y = RMSNorm(h) * w_pre_ffn into ys (h to global by block 0).
__device__ PK_FN void pk_post_attention(const PkStep& a, const PkLayer& L, float* hs, float* ys) {
    const int d = a.d;
    const float inv_o = rms_inv(a.o, d, a.eps);
    const float inv_l = rms_inv(a.lr, d, a.eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float lau = a.lr[i] * inv_l * L.laurel_norm[i] + a.x[i];
        const float v = (a.p0[i] + a.o[i] * inv_o * L.post_attn_ln[i] + lau) * SQRT1_2;
        hs[i] = v;
        if (blockIdx.x == 0) a.hb[i] = v;
    }
    __syncthreads();
    const float inv = rms_inv(hs, d, a.eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) ys[i] = hs[i] * inv * L.pre_ffn_ln[i];
    __syncthreads();
}

// The kept rows of up: act[r] = gelu(gate[r] - cut) * (up[r] . y) where gate[r] > cut,
// else 0; rows split over blocks as in pk_products, a warp per row.
__device__ PK_FN void pk_sparse_up(const PkStep& a, const PkLayer& L, float cut, const float* ys) {
    const int f = L.f, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r0 = (int)(((long long)f * blockIdx.x) / gridDim.x);
    const int r1 = (int)(((long long)f * (blockIdx.x + 1)) / gridDim.x);
    for (int r = r0 + warp; r < r1; r += PK_WARPS) {
        const float gv = __ldcg(a.gate + r) - cut;
        if (gv <= 0.0f) {
            if (lane == 0) a.act[r] = 0.0f;
            continue;
        }
        const bf16_t* wr = L.up + (size_t)r * L.ldup;
        float acc = 0.0f, wf[8];
        for (int i = lane * 8; i < a.d; i += 256) {
            unpack_bf16x8(__ldg(reinterpret_cast<const uint4*>(wr + i)), wf);
            #pragma unroll
            for (int j = 0; j < 8; j++) acc += wf[j] * ys[i + j];
        }
        acc = warp_sum(acc);
        if (lane == 0) a.act[r] = gelu_tanh(gv) * acc;
    }
}

// down of a sparse layer, stored transposed (row u of L.down = column u of down): fo[c] =
// sum over units u with act[u] != 0 of act[u] * down[u][c]. Block b takes columns in
// 8-value chunks [d/8 * b / G, d/8 * (b+1) / G) (at most 4); lane l of warp w takes units
// w * 32 + l, stepping by PK_THREADS; sums over lanes, then warps in shared memory, in a
// fixed order.
#define PK_DOWN_CHUNKS 4
__device__ PK_FN void pk_sparse_down(const PkStep& a, const PkLayer& L, float* red) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int chunks = a.d / 8;
    const int c0 = (int)(((long long)chunks * blockIdx.x) / gridDim.x);
    const int c1 = (int)(((long long)chunks * (blockIdx.x + 1)) / gridDim.x);
    const int nc = c1 - c0;
    float acc[PK_DOWN_CHUNKS][8];
    #pragma unroll
    for (int c = 0; c < PK_DOWN_CHUNKS; c++)
        #pragma unroll
        for (int j = 0; j < 8; j++) acc[c][j] = 0.0f;
    for (int u = threadIdx.x; u < L.f; u += blockDim.x) {
        const float av = __ldcg(a.act + u);
        if (av == 0.0f) continue;
        const bf16_t* wr = L.down + (size_t)u * L.lddown + (size_t)c0 * 8;
        #pragma unroll
        for (int c = 0; c < PK_DOWN_CHUNKS; c++) {
            if (c < nc) {
                float wf[8];
                unpack_bf16x8(__ldg(reinterpret_cast<const uint4*>(wr + c * 8)), wf);
                #pragma unroll
                for (int j = 0; j < 8; j++) acc[c][j] += av * wf[j];
            }
        }
    }
    #pragma unroll
    for (int c = 0; c < PK_DOWN_CHUNKS; c++)
        #pragma unroll
        for (int j = 0; j < 8; j++) acc[c][j] = warp_sum(acc[c][j]);
    // red: [PK_WARPS][PK_DOWN_CHUNKS * 8]
    if (lane == 0) {
        #pragma unroll
        for (int c = 0; c < PK_DOWN_CHUNKS; c++)
            #pragma unroll
            for (int j = 0; j < 8; j++) red[warp * PK_DOWN_CHUNKS * 8 + c * 8 + j] = acc[c][j];
    }
    __syncthreads();
    if (threadIdx.x < nc * 8) {
        float v = 0.0f;
        for (int w = 0; w < PK_WARPS; w++) v += red[w * PK_DOWN_CHUNKS * 8 + threadIdx.x];
        a.fo[c0 * 8 + threadIdx.x] = v;
    }
}

// correct: the AltUp correction of the injected streams t with the layer's output h + the
// FFN's normed output; block 0 writes the corrected streams to s; v = corrected_0 (scaled)
// into vs.
__device__ PK_FN void pk_correct(const PkStep& a, const PkLayer& L, float* hv, float* vs) {
    const int d = a.d;
    __shared__ float pc[ALTUP_A * ALTUP_A], beta[ALTUP_A];
    if (threadIdx.x < ALTUP_A * ALTUP_A) pc[threadIdx.x] = a.rc[threadIdx.x];
    const float inv = rms_inv(a.fo, d, a.eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        hv[i] = a.hb[i] + a.fo[i] * inv * L.post_ffn_ln[i];
    __syncthreads();
    float m[ALTUP_A];
    pk_router(hv, L.router_norm, L.router, d, a.eps, m);
    if (threadIdx.x < ALTUP_A) {
        float s = 0.0f;
        #pragma unroll
        for (int q = 0; q < ALTUP_A; q++) s += L.corr_coefs[threadIdx.x * ALTUP_A + q] * m[q];
        beta[threadIdx.x] = s + 1.0f;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float sv[ALTUP_A], pv[ALTUP_A];
        #pragma unroll
        for (int k = 0; k < ALTUP_A; k++) sv[k] = a.t[k * a.ss + i];
        #pragma unroll
        for (int k = 0; k < ALTUP_A; k++) {
            float v = sv[k];
            #pragma unroll
            for (int j = 0; j < ALTUP_A; j++) v += pc[k * ALTUP_A + j] * sv[j];
            pv[k] = v;
        }
        const float delta = hv[i] - pv[0];
        if (blockIdx.x == 0) {
            #pragma unroll
            for (int k = 0; k < ALTUP_A; k++) a.s[k * a.ss + i] = pv[k] + beta[k] * delta;
        }
        const float np0 = pv[0] + beta[0] * delta;
        vs[i] = L.corr_scale ? np0 * L.corr_scale[i] : np0;
    }
    __syncthreads();
}

// Product g: y = x . W^T over `rows` rows of k values of bf16 w (rows of ldw), through
// epilogue epi (w2: a pair's second matrix; aux: EPI_GELU_ACC's factors).
__device__ __forceinline__ void pk_seg(GemvSeg& g, const bf16_t* w, const bf16_t* w2, int ldw,
                                       int rows, int k, const float* x, float* y, int epi,
                                       const float* aux) {
    g.w = w; g.w2 = w2; g.sc = 0; g.sc2 = 0; g.x = x; g.y = y; g.mask = 0; g.aux = aux;
    g.rows = rows; g.k = k; g.ldw = ldw; g.ldx = k; g.ldy = rows; g.ldm = 0; g.ldaux = 0;
    g.epi = epi; g.block_start = 0; g.fmt = W_BF16;
}

// A step of one product: thread 0 writes it to the block's descriptor sp, then the block
// runs its share (x copied from global memory, or already at xs when `loaded`).
__device__ __forceinline__ void pk_single(PkProducts& sp, float* xs, bool loaded,
                                          const bf16_t* w, const bf16_t* w2, int ldw, int rows,
                                          int k, const float* x, float* y, int epi,
                                          const float* aux) {
    if (threadIdx.x == 0) {
        sp.nseg = 1;
        pk_seg(sp.seg[0], w, w2, ldw, rows, k, x, y, epi, aux);
    }
    __syncthreads();
    pk_products_at(sp, xs, loaded);
}

// Dynamic shared memory (decode_layers_smem in ops.rs): sv, max(A x d, PK_WARPS x hd,
// PK_WARPS x PK_DOWN_CHUNKS x 8) floats (the injected streams, h, attention's and the sparse
// down's warp sums), then xs, max(d, h x hd + r (each rounded up to 8), largest FFN width)
// floats (a product's activations).
extern "C" __global__ void __launch_bounds__(PK_THREADS, 1) decode_layers(const PkStep a) {
    extern __shared__ float smem[];
    // The step of products being run (written by thread 0; every block reads it).
    __shared__ PkProducts sp;
    const int d = a.d;
    float* sv = smem;
    float* xs = smem + max(max(ALTUP_A * d, PK_WARPS * a.hd), PK_WARPS * PK_DOWN_CHUNKS * 8);
    unsigned target = 0;
    int nb = 0;  // barriers passed (for the trace)
    const int hq = a.h * a.hd;
    const int q_off = 0, k_off = hq, v_off = hq + a.g * a.hd, ll_off = hq + 2 * a.g * a.hd;
    const bool t0 = threadIdx.x == 0;
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    if (a.trace) pk_record(a, nb, PH_START, pk_now());
    // Attention key splits: enough blocks for the keys, at most what the grid holds.
    const int keys = a.pos[0] + 1;
    int nsplit = 1;
    while (nsplit * 2 * a.h <= (int)gridDim.x && nsplit * 2 <= 32 && keys > nsplit * 64) nsplit *= 2;
    if (a.nl > 0) {
        const PkLayer& F = a.layers[0];
        pk_prefetch_rows(F.q, F.ldq, hq, d);
        pk_prefetch_rows(F.k, F.ldk, a.g * a.hd, d);
        pk_prefetch_rows(F.v, F.ldv, a.g * a.hd, d);
        pk_prefetch_rows(F.ll, F.ldll, a.r, d);
    }
    // The layer being run, in shared memory (its fields are read all through the layer).
    __shared__ PkLayer L;
    for (int l = 0; l < a.nl; l++) {
        if (t0) L = a.layers[l];
        __syncthreads();
        const float* inj_w = l == 0 ? a.inj_w : a.layers[l - 1].post_pl_norm;
        pk_predict(a, L, inj_w, sv, xs);
        if (t0) {
            sp.nseg = 0;
            pk_seg(sp.seg[sp.nseg++], L.q, 0, L.ldq, hq, d, xs, a.qkv + q_off, EPI_PLAIN, 0);
            if (L.own_kv) {
                pk_seg(sp.seg[sp.nseg++], L.k, 0, L.ldk, a.g * a.hd, d, xs, a.qkv + k_off,
                       EPI_PLAIN, 0);
                pk_seg(sp.seg[sp.nseg++], L.v, 0, L.ldv, a.g * a.hd, d, xs, a.qkv + v_off,
                       EPI_PLAIN, 0);
            }
            pk_seg(sp.seg[sp.nseg++], L.ll, 0, L.ldll, a.r, d, xs, a.qkv + ll_off, EPI_PLAIN, 0);
        }
        __syncthreads();
        pk_products_shared(sp, xs);
        pk_prefetch_rows(L.o, L.ldo, d, hq);
        pk_prefetch_rows(L.lr, L.ldlr, d, a.r);
        pk_sync(a, target, nb, PH_QKV);
        if (blockIdx.x == 0) pk_prep(a, L);
        pk_sync(a, target, nb, PH_PREP);
        pk_attend(a, L, nsplit, sv);
        pk_sync(a, target, nb, PH_ATTEND);
        if (t0) {
            sp.nseg = 2;
            pk_seg(sp.seg[0], L.o, 0, L.ldo, d, hq, a.att, a.o, EPI_PLAIN, 0);
            pk_seg(sp.seg[1], L.lr, 0, L.ldlr, d, a.r, a.qkv + ll_off, a.lr, EPI_PLAIN, 0);
        }
        __syncthreads();
        pk_products(sp, xs);
        pk_prefetch_rows(L.gate, L.ldgate, L.f, d);
        if (!L.sparse) pk_prefetch_rows(L.up, L.ldup, L.f, d);
        pk_sync(a, target, nb, PH_OLR);
        pk_post_attention(a, L, sv, xs);
        if (L.sparse) pk_single(sp, xs, true, L.gate, 0, L.ldgate, L.f, d, xs, a.gate, EPI_PLAIN, 0);
        else pk_single(sp, xs, true, L.gate, L.up, L.ldgate, L.f, d, xs, a.act, EPI_PAIR, 0);
        if (!L.down_t) pk_prefetch_rows(L.down, L.lddown, d, L.f);
        pk_sync(a, target, nb, PH_GATE_UP);
        if (L.sparse) {
            const float cut = topk_cut(reinterpret_cast<const f32_l2*>(a.gate), L.f, L.z);
            pk_sparse_up(a, L, cut, xs);
            pk_sync(a, target, nb, PH_SPARSE_UP);
        }
        if (L.down_t) {
            pk_sparse_down(a, L, sv);
        } else {
            pk_single(sp, xs, false, L.down, 0, L.lddown, d, L.f, a.act, a.fo, EPI_PLAIN, 0);
        }
        pk_prefetch_rows(L.plg, L.ldplg, a.p, d);
        pk_sync(a, target, nb, PH_DOWN);
        pk_correct(a, L, sv, xs);
        pk_single(sp, xs, true, L.plg, 0, L.ldplg, a.p, d, xs, a.pg, EPI_GELU_ACC, L.pi);
        pk_prefetch_rows(L.plp, L.ldplp, d, a.p);
        pk_sync(a, target, nb, PH_PL_GATE);
        pk_single(sp, xs, false, L.plp, 0, L.ldplp, d, a.p, a.pg, a.pq, EPI_PLAIN, 0);
        if (l + 1 < a.nl) {
            const PkLayer& N = a.layers[l + 1];
            pk_prefetch_rows(N.q, N.ldq, hq, d);
            if (N.own_kv) {
                pk_prefetch_rows(N.k, N.ldk, a.g * a.hd, d);
                pk_prefetch_rows(N.v, N.ldv, a.g * a.hd, d);
            }
            pk_prefetch_rows(N.ll, N.ldll, a.r, d);
        }
        pk_sync(a, target, nb, PH_PL_PROJ);
    }
    // The last layer's per-layer input, into streams 1.. of s.
    if (blockIdx.x == 0 && a.nl > 0) {
        const float* w = a.layers[a.nl - 1].post_pl_norm;
        const float inv = rms_inv(a.pq, d, a.eps);
        for (int i = threadIdx.x; i < d; i += blockDim.x) {
            const float v = a.pq[i] * inv * w[i];
            for (int k = 1; k < ALTUP_A; k++) a.s[k * a.ss + i] += v;
        }
    }
    pk_exit(a.ctr);
}
