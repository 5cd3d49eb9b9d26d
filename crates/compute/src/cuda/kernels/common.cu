// Shared helpers of the gemma3n CUDA kernels. The kernel files are concatenated after this
// one and compiled together by NVRTC (no headers: bf16 is handled as raw 16-bit values).

typedef unsigned short bf16_t;
typedef unsigned int u32;
#define INFINITY __int_as_float(0x7f800000)

// Programmatic dependent launch (sm_90): every kernel waits for the kernel before it to
// finish (and its writes to be visible) before it reads activations or writes anything,
// then lets the next kernel start launching, so that kernel can fetch its weights while
// this one works. Reads of weights may come before the wait.
__device__ __forceinline__ void pdl_start() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Brings [p, p + bytes) into L2 (one 128-byte line per lane and step).
__device__ __forceinline__ void prefetch_l2(const void* p, int bytes, int lane) {
    const char* c = (const char*)p;
    for (int off = lane * 128; off < bytes; off += 32 * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(c + off));
}

__device__ __forceinline__ float bf16_to_f32(bf16_t v) {
    return __uint_as_float(((u32)v) << 16);
}

// Eight bf16 values (one 16-byte load) to f32.
__device__ __forceinline__ void unpack_bf16x8(uint4 v, float f[8]) {
    f[0] = __uint_as_float(v.x << 16); f[1] = __uint_as_float(v.x & 0xffff0000u);
    f[2] = __uint_as_float(v.y << 16); f[3] = __uint_as_float(v.y & 0xffff0000u);
    f[4] = __uint_as_float(v.z << 16); f[5] = __uint_as_float(v.z & 0xffff0000u);
    f[6] = __uint_as_float(v.w << 16); f[7] = __uint_as_float(v.w & 0xffff0000u);
}

// Round to nearest even, NaN kept quiet.
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float block_sum(float v) {
    __shared__ float part[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        float s = lane < nw ? part[lane] : 0.0f;
        s = warp_sum(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

// Four sums at once (the AltUp router has four outputs).
__device__ void block_sum4(float v[4]) {
    __shared__ float part[4][32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    #pragma unroll
    for (int i = 0; i < 4; i++) v[i] = warp_sum(v[i]);
    __syncthreads();
    if (lane == 0) {
        #pragma unroll
        for (int i = 0; i < 4; i++) part[i][warp] = v[i];
    }
    __syncthreads();
    int nw = blockDim.x >> 5;
    #pragma unroll
    for (int i = 0; i < 4; i++) {
        float s = lane < nw ? part[i][lane] : 0.0f;
        v[i] = warp_sum(s);
    }
}

// 1 / sqrt(mean(x^2) + eps) of a row of n values (block-wide).
__device__ float rms_inv(const float* x, int n, float eps) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i] * x[i];
    s = block_sum(s);
    return 1.0f / sqrtf(s / (float)n + eps);
}

__device__ __forceinline__ float gelu_tanh(float u) {
    // u * sigmoid(2 * sqrt(2/pi) * (u + 0.044715 u^3)), as the CPU kernels.
    float e = expf(-2.0f * 0.7978846f * u * (1.0f + 0.044715f * u * u));
    return u / (1.0f + e);
}
