// A synthetic chain of dependent GEMV steps in one persistent launch (issue 7, session 13):
// 170 steps of 128 KB of bf16 weights per multiprocessor (2.94 GB, about E2B's decode
// products), each step's 2048 activations the step before's outputs, a grid barrier between
// steps. Weights stream through a ring of shared-memory stages filled by bulk copies from
// one producer thread. Which part (barrier, activation copy, products, how the warps share
// a stage) keeps it from the bandwidth? Standalone, for the GPU machine:
//   nvcc -O3 -arch=sm_90 -o /tmp/chain_probe bench/cuda_probes/chain_probe.cu && /tmp/chain_probe
// Flags: 1 no grid barrier (results wrong), 2 no activation copy, 4 no products (a load
// per lane instead), 8 every consumer warp takes a part of every stage (else one warp a
// stage, round the warps), 16 no shared-memory atomics (cooperative mode), 32 groups of
// chunk-rows warps take whole stages in turn, a row per warp. pf > 0: the
// producer also prefetches into L2 the stage pf - 1 ahead of the one it copies.
// Results: docs/perf.md, "Streaming weights through shared memory".
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

__device__ __forceinline__ unsigned su(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// Waits for the phase of parity `par` of mbarrier `bar`: try_wait (which may suspend the
// thread for a while), or with SPIN_WAIT test_wait in a loop (never suspends).
__device__ __forceinline__ void wait_parity(unsigned long long* bar, unsigned par) {
    unsigned ok = 0;
    while (!ok) {
#ifdef SPIN_WAIT
        asm volatile("{\n .reg .pred p;\n mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0,1,0,p;\n}"
                     : "=r"(ok) : "r"(su(bar)), "r"(par) : "memory");
#else
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0,1,0,p;\n}"
                     : "=r"(ok) : "r"(su(bar)), "r"(par) : "memory");
#endif
    }
}

__device__ __forceinline__ long long gt() { long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
#define K 2048
#define MAXR 64
#ifndef NW
#define NW 17
#endif
#define NC (NW - 1)

struct Args {
    const unsigned short* w;  // weights: steps x blocks x rows_per_block x K bf16
    float* y;                 // two buffers of blocks*rpb floats (step parity)
    unsigned* ctr;
    int steps, rpb, chunk_rows, ring, flags, pf;  // flags: 1 no barrier, 2 no x copy, 4 no compute
    long long* trace;         // per block: steps x 4 timestamps (block 0 and 1 only)
};

__device__ __forceinline__ float dot_row(const unsigned short* w, const float* x, int lane) {
    float acc = 0.f;
#pragma unroll 4
    for (int i = lane * 8; i < K; i += 256) {
        uint4 v = *reinterpret_cast<const uint4*>(w + i);
        float4 a = *reinterpret_cast<const float4*>(x + i), b = *reinterpret_cast<const float4*>(x + i + 4);
        acc += __uint_as_float(v.x << 16) * a.x + __uint_as_float(v.x & 0xffff0000u) * a.y +
               __uint_as_float(v.y << 16) * a.z + __uint_as_float(v.y & 0xffff0000u) * a.w +
               __uint_as_float(v.z << 16) * b.x + __uint_as_float(v.z & 0xffff0000u) * b.y +
               __uint_as_float(v.w << 16) * b.z + __uint_as_float(v.w & 0xffff0000u) * b.w;
    }
#pragma unroll
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(~0u, acc, o);
    return acc;
}

extern "C" __global__ void __launch_bounds__(NW * 32, 1) chain(Args a) {
    extern __shared__ __align__(128) unsigned char sm[];
    __shared__ __align__(8) unsigned long long full[64], empty[64];
    __shared__ __align__(16) float xs[K];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int chunk = a.chunk_rows * K * 2;
    const int cps = a.rpb / a.chunk_rows;  // chunks per step
    const int total = cps * a.steps;
    if (threadIdx.x == 0) {
        for (int i = 0; i < a.ring; i++) {
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(su(full + i)));
            asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(su(empty + i)), "r"((a.flags & 32) ? a.chunk_rows : (a.flags & 8) ? NC : 1));
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    const size_t step_bytes = (size_t)gridDim.x * a.rpb * K;  // elements
    if (warp == 0) {
        if (lane == 0) {
            for (int c = 0; c < total; c++) {
                const int slot = c % a.ring, use = c / a.ring;
                if (use > 0) wait_parity(empty + slot, (use - 1) & 1);
                if (a.pf > 0) {
                    for (int q = (c == 0 ? 0 : c + a.pf - 1); q <= c + a.pf - 1 && q < total; q++) {
                        const int s2 = q / cps, j2 = q % cps;
                        const unsigned short* p2 = a.w + s2 * step_bytes + ((size_t)blockIdx.x * a.rpb + j2 * a.chunk_rows) * K;
                        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p2), "r"(chunk) : "memory");
                    }
                }
                const int s = c / cps, j = c % cps;
                const unsigned short* src = a.w + s * step_bytes + ((size_t)blockIdx.x * a.rpb + j * a.chunk_rows) * K;
                asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(su(full + slot)), "r"(chunk) : "memory");
                asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                             ::"r"(su(sm + (size_t)slot * chunk)), "l"(src), "r"(chunk), "r"(su(full + slot)) : "memory");
            }
        }
        return;
    }
    const int cw = warp - 1;
    unsigned target = 0;
    const int nout = gridDim.x * a.rpb;
    long long* tr = a.trace ? a.trace + (size_t)blockIdx.x * a.steps * 4 : nullptr;
    for (int s = 0; s < a.steps; s++) {
        const float* xin = a.y + (size_t)((s + 1) & 1) * nout;
        float* yout = a.y + (size_t)(s & 1) * nout;
        if (tr && threadIdx.x == 32) tr[s * 4 + 0] = gt();
        if (!(a.flags & 2)) {
            for (int i = threadIdx.x - 32; i < K / 4; i += NC * 32)
                reinterpret_cast<float4*>(xs)[i] = __ldcg(reinterpret_cast<const float4*>(xin) + i);
            asm volatile("bar.sync 1, %0;" ::"r"(NC * 32) : "memory");
        }
        if (tr && threadIdx.x == 32) tr[s * 4 + 1] = gt();
        if (a.flags & (8 | 32)) {
            // every consumer warp takes a part of every stage: rows r = cw % chunk_rows,
            // values [part * len, (part + 1) * len) with parts = NC / chunk_rows
            __shared__ float rs[MAXR];
            if (threadIdx.x - 32 < a.rpb) rs[threadIdx.x - 32] = 0.f;
            asm volatile("bar.sync 1, %0;" ::"r"(NC * 32) : "memory");
            // flag 32: groups of chunk_rows warps take whole stages in turn, a row per warp
            const bool grp = a.flags & 32;
            const int groups = NC / a.chunk_rows;
            const int parts = grp ? 1 : NC / a.chunk_rows, r = cw % a.chunk_rows;
            const int part = grp ? 0 : cw / a.chunk_rows;
            const int len = K / parts;
            for (int j = 0; j < cps; j++) {
                const int c = s * cps + j;
                if (grp && (c % groups != cw / a.chunk_rows || cw >= groups * a.chunk_rows)) continue;
                const int slot = c % a.ring, use = c / a.ring;
                wait_parity(full + slot, use & 1);
                const unsigned short* st = (const unsigned short*)(sm + (size_t)slot * chunk) + r * K + part * len;
                const float* xp = xs + part * len;
                float acc = 0.f;
                if (a.flags & 4) acc = (float)st[lane];
                else
#pragma unroll 2
                for (int i = lane * 8; i < len; i += 256) {
                    uint4 v = *reinterpret_cast<const uint4*>(st + i);
                    float4 p = *reinterpret_cast<const float4*>(xp + i), q = *reinterpret_cast<const float4*>(xp + i + 4);
                    acc += __uint_as_float(v.x << 16) * p.x + __uint_as_float(v.x & 0xffff0000u) * p.y +
                           __uint_as_float(v.y << 16) * p.z + __uint_as_float(v.y & 0xffff0000u) * p.w +
                           __uint_as_float(v.z << 16) * q.x + __uint_as_float(v.z & 0xffff0000u) * q.y +
                           __uint_as_float(v.w << 16) * q.z + __uint_as_float(v.w & 0xffff0000u) * q.w;
                }
                __syncwarp();
                if (lane == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(su(empty + slot)) : "memory");
#pragma unroll
                for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(~0u, acc, o);
                if (lane == 0) {
                    if (grp) rs[j * a.chunk_rows + r] = acc;
                    else if (a.flags & 16) rs[cw] = acc;
                    else atomicAdd(rs + j * a.chunk_rows + r, acc);
                }
            }
            asm volatile("bar.sync 1, %0;" ::"r"(NC * 32) : "memory");
            if (threadIdx.x - 32 < a.rpb) yout[blockIdx.x * a.rpb + threadIdx.x - 32] = rs[threadIdx.x - 32] * 1e-3f;
        } else
        for (int j = 0; j < cps; j++) {
            const int c = s * cps + j;
            if (c % NC != cw) continue;
            const int slot = c % a.ring, use = c / a.ring;
            wait_parity(full + slot, use & 1);
            const unsigned short* st = (const unsigned short*)(sm + (size_t)slot * chunk);
            for (int r = 0; r < a.chunk_rows; r++) {
                float v = (a.flags & 4) ? (float)st[r * K + lane] : dot_row(st + r * K, xs, lane);
                if (lane == 0) yout[blockIdx.x * a.rpb + j * a.chunk_rows + r] = v * 1e-3f;
            }
            __syncwarp();
            if (lane == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(su(empty + slot)) : "memory");
        }
        if (tr && threadIdx.x == 32) tr[s * 4 + 2] = gt();
        if (!(a.flags & 1)) {
            asm volatile("bar.sync 1, %0;" ::"r"(NC * 32) : "memory");
            target += gridDim.x;
            if (threadIdx.x == 32) {
                __threadfence();
                atomicAdd(a.ctr, 1u);
                while (*(volatile unsigned*)a.ctr < target) {}
                __threadfence();
            }
            asm volatile("bar.sync 1, %0;" ::"r"(NC * 32) : "memory");
        }
        if (tr && threadIdx.x == 32) tr[s * 4 + 3] = gt();
    }
}

int main(int argc, char** argv) {
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    int clk = 0;
    cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, 0);
    const int steps = 170, rpb = 32;  // 32 rows x 4 KB = 128 KB per block per step
    const size_t wbytes = (size_t)steps * sms * rpb * K * 2;
    unsigned short* w;
    float* y;
    unsigned* ctr;
    long long* trace;
    cudaMalloc(&w, wbytes);
    cudaMemset(w, 0, wbytes);
    cudaMalloc(&y, 2 * sizeof(float) * sms * rpb);
    cudaMemset(y, 0, 2 * sizeof(float) * sms * rpb);
    cudaMalloc(&ctr, 4);
    cudaMalloc(&trace, sizeof(long long) * sms * steps * 4);
    cudaFuncSetAttribute(chain, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    printf("chain: %d steps, %d SMs, %.2f GB, %d KB per block per step; clock %d MHz\n", steps, sms, wbytes / 1e9, rpb * K * 2 / 1024, clk / 1000);
    struct Cfg { int chunk_rows, ring, flags, pf; };
    Cfg cfgs[] = {{4, 8, 0, 0}, {4, 12, 0, 0}, {4, 8, 4, 0}, {4, 12, 8, 0}, {4, 12, 9, 0}, {4, 12, 12, 0}, {4, 12, 13, 0}, {4, 12, 24, 0}, {8, 6, 8, 0}, {8, 6, 13, 0}, {2, 16, 8, 0}, {1, 32, 8, 0}, {4, 12, 8, 24}, {4, 12, 8, 48}, {4, 8, 32, 0}, {4, 12, 32, 0}, {4, 12, 33, 0}, {2, 16, 32, 0}, {8, 6, 32, 0}};
    for (auto& c : cfgs) {
        Args a{w, y, ctr, steps, rpb, c.chunk_rows, c.ring, c.flags, c.pf, trace};
        const size_t smem = (size_t)c.chunk_rows * K * 2 * c.ring;
        float best = 1e9;
        for (int r = 0; r < 4; r++) {
            cudaMemset(ctr, 0, 4);
            cudaEventRecord(e0);
            chain<<<sms, NW * 32, smem>>>(a);
            cudaEventRecord(e1);
            cudaError_t err = cudaEventSynchronize(e1);
            if (err != cudaSuccess) { printf("error %s\n", cudaGetErrorString(err)); return 1; }
            float ms;
            cudaEventElapsedTime(&ms, e0, e1);
            if (ms < best) best = ms;
        }
        printf("pf %2d chunk %d KB ring %2d flags %d: %7.1f us, %.0f GB/s, %.2f us/step\n", c.pf, c.chunk_rows * 4, c.ring, c.flags, best * 1e3, wbytes / (best * 1e6), best * 1e3 / steps);
        if (!(c.flags & 1)) {
            static long long h[200 * 132 * 4];
            cudaMemcpy(h, trace, sizeof(long long) * sms * steps * 4, cudaMemcpyDeviceToHost);
            double span = 0, spread = 0, rel = 0, prod = 0, xc = 0, lastprod = 0;
            for (int s = 1; s < steps; s++) {
                long long smin = 1ll << 62, pmin = 1ll << 62, pmax = 0, rmin = 1ll << 62, rmax = 0;
                double psum = 0, xsum = 0, lp = 0;
                for (int b = 0; b < sms; b++) {
                    long long* t = h + ((size_t)b * steps + s) * 4;
                    smin = t[0] < smin ? t[0] : smin;
                    pmin = t[2] < pmin ? t[2] : pmin;
                    pmax = t[2] > pmax ? t[2] : pmax;
                    rmin = t[3] < rmin ? t[3] : rmin;
                    rmax = t[3] > rmax ? t[3] : rmax;
                    psum += t[2] - t[1];
                    xsum += t[1] - t[0];
                    if (t[2] == pmax) lp = t[2] - t[1];
                }
                span += pmax - smin;
                spread += pmax - pmin;
                rel += rmin - pmax;
                prod += psum / sms;
                xc += xsum / sms;
                lastprod += lp;
            }
            const double f = 1e-3 / (steps - 1);
            printf("  per step (ns->us): x copy %.2f, products mean %.2f, slowest block's products %.2f, last products done - first start %.2f, products done spread %.2f, release after last arrival %.2f\n",
                   xc * f, prod * f, lastprod * f, span * f, spread * f, rel * f);
        }
    }
    return 0;
}
