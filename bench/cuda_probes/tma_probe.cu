// Streaming probe (issue 7, session 13): how fast can one block per multiprocessor pull its
// share of a 1 GB buffer into shared memory: bulk copies (cp.async.bulk, issued by one
// thread or several), cp.async, or plain loads? Standalone, for the GPU machine:
//   nvcc -O3 -arch=sm_90 -o /tmp/tma_probe bench/cuda_probes/tma_probe.cu && /tmp/tma_probe
// Results and what they mean: docs/perf.md, "Streaming weights through shared memory".
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

__device__ __forceinline__ unsigned su(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void wait_parity(unsigned long long* bar, unsigned par) {
    unsigned ok = 0;
    while (!ok) {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0,1,0,p;\n}"
                     : "=r"(ok) : "r"(su(bar)), "r"(par) : "memory");
    }
}

// mode 0: bulk copies, `lanes` threads of warp 0 issue (lane i owns slots i, i+lanes, ...);
// each slot waits for its own previous copy before re-issuing. No consumer.
// mode 1: as 0 but consumers (warps 1..7) read each stage (sum) and release it.
// mode 2: cp.async 16 B by all threads, stages as commit groups.
// mode 3: plain uint4 loads, 4 in flight per thread.
extern "C" __global__ void __launch_bounds__(256, 1)
probe(const unsigned char* src, size_t per_block, int chunk, int ring, int lanes, int mode, float* sink) {
    extern __shared__ __align__(128) unsigned char sm[];
    __shared__ __align__(8) unsigned long long full[64], empty[64];
    const unsigned char* base = src + per_block * blockIdx.x;
    const int nchunks = (int)(per_block / chunk);
    float acc = 0.f;
    if (mode <= 1) {
        if (threadIdx.x == 0) {
            for (int i = 0; i < ring; i++) {
                asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(su(full + i)));
                asm volatile("mbarrier.init.shared::cta.b64 [%0], 7;" ::"r"(su(empty + i)));
            }
            asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            const int lane = threadIdx.x;
            if (lane < lanes) {
                for (int c = lane; c < nchunks; c += lanes) {
                    const int slot = c % ring, use = c / ring;
                    if (use > 0) {
                        if (mode == 0) wait_parity(full + slot, (use - 1) & 1);
                        else wait_parity(empty + slot, (use - 1) & 1);
                    }
                    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(su(full + slot)), "r"(chunk) : "memory");
                    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                                 ::"r"(su(sm + (size_t)slot * chunk)), "l"(base + (size_t)c * chunk), "r"(chunk), "r"(su(full + slot)) : "memory");
                }
                if (mode == 0) {
                    // drain: wait for the last use of my slots
                    for (int c = max(lane, nchunks - ring); c < nchunks; c++) {
                        if (c % lanes != lane) continue;
                        wait_parity(full + c % ring, (c / ring) & 1);
                    }
                }
            }
        } else if (mode == 1) {
            const int w = (threadIdx.x >> 5) - 1, lane = threadIdx.x & 31;
            for (int c = 0; c < nchunks; c++) {
                const int slot = c % ring, use = c / ring;
                wait_parity(full + slot, use & 1);
                const uint4* p = (const uint4*)(sm + (size_t)slot * chunk);
                for (int i = w * 32 + lane; i < chunk / 16; i += 7 * 32) {
                    uint4 v = p[i];
                    acc += __uint_as_float(v.x ^ v.y ^ v.z ^ v.w);
                }
                __syncwarp();
                if (lane == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(su(empty + slot)) : "memory");
            }
        }
    } else if (mode == 2) {
        for (int c = 0; c < nchunks; c++) {
            const int slot = c % ring;  // ring >= 8: the slot's last group is done below
            for (int i = threadIdx.x * 16; i < chunk; i += 256 * 16) {
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(su(sm + (size_t)slot * chunk + i)), "l"(base + (size_t)c * chunk + i));
            }
            asm volatile("cp.async.commit_group;");
            asm volatile("cp.async.wait_group %0;" ::"n"(6));
        }
        asm volatile("cp.async.wait_all;");
        __syncthreads();
        acc += sm[threadIdx.x];
    } else {
        const uint4* p = (const uint4*)base;
        const size_t n = per_block / 16;
        for (size_t i = threadIdx.x; i < n; i += 256 * 4) {
            uint4 v[4];
#pragma unroll
            for (int u = 0; u < 4; u++) v[u] = i + u * 256 < n ? __ldcs(p + i + u * 256) : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int u = 0; u < 4; u++) acc += __uint_as_float(v[u].x ^ v[u].y ^ v[u].z ^ v[u].w);
        }
    }
    if (acc == 12345.f) sink[0] = acc;
}

int main() {
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    const size_t per_block = 8u << 20;  // 8 MB a block: ~1 GB in all, far past L2
    const size_t total = per_block * sms;
    unsigned char* src;
    float* sink;
    cudaMalloc(&src, total);
    cudaMemset(src, 1, total);
    cudaMalloc(&sink, 4);
    cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024);
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    // copy bandwidth for reference
    {
        unsigned char* dst;
        cudaMalloc(&dst, total);
        cudaMemcpy(dst, src, total, cudaMemcpyDeviceToDevice);
        cudaEventRecord(a);
        for (int r = 0; r < 5; r++) cudaMemcpy(dst, src, total, cudaMemcpyDeviceToDevice);
        cudaEventRecord(b);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        printf("d2d copy: %.0f GB/s (read+write %.0f)\n", total * 5 / (ms * 1e6), 2.0 * total * 5 / (ms * 1e6));
        cudaFree(dst);
    }
    struct Cfg { int mode, chunk, ring, lanes; };
    Cfg cfgs[] = {
        {3, 16384, 1, 1},
        {0, 1024, 64, 1}, {0, 1024, 64, 8}, {0, 1024, 64, 32},
        {0, 2048, 64, 1}, {0, 2048, 64, 32},
        {0, 4096, 32, 1}, {0, 4096, 32, 32}, {0, 4096, 8, 1},
        {0, 16384, 8, 1}, {0, 16384, 8, 8}, {0, 16384, 12, 1}, {0, 16384, 4, 1},
        {0, 32768, 6, 1}, {0, 65536, 3, 1},
        {1, 1024, 64, 1}, {1, 4096, 32, 1}, {1, 16384, 8, 1}, {1, 16384, 12, 1},
        {2, 4096, 8, 1}, {2, 16384, 8, 1},
    };
    for (auto& c : cfgs) {
        const size_t smem = c.mode == 3 ? 0 : (size_t)c.chunk * c.ring;
        probe<<<sms, 256, smem>>>(src, per_block, c.chunk, c.ring, c.lanes, c.mode, sink);
        cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) { printf("mode %d chunk %d ring %d lanes %d: %s\n", c.mode, c.chunk, c.ring, c.lanes, cudaGetErrorString(e)); return 1; }
        cudaEventRecord(a);
        for (int r = 0; r < 5; r++) probe<<<sms, 256, smem>>>(src, per_block, c.chunk, c.ring, c.lanes, c.mode, sink);
        cudaEventRecord(b);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        const double gbs = total * 5 / (ms * 1e6);
        printf("mode %d chunk %6d ring %2d lanes %2d: %6.0f GB/s (%.1f GB/s per SM, %.3f us per chunk per SM)\n", c.mode, c.chunk, c.ring, c.lanes, gbs, gbs / sms,
               ms * 1e3 / 5 / (per_block / c.chunk));
    }
    return 0;
}
