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

__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Weight formats on the device (weights.rs in the model crate writes them):
// W_BF16: bf16 values, rows of ldw.
// W_Q8: GGUF Q8_0's values: int8 rows of ldw bytes, and an f16 scale per 32 values
//   (scales [rows, ldw / 32]); value = scale * q.
// W_Q4K: GGUF Q4_K's values: rows of ldw / 2 bytes, each 32 values in 16 bytes (value j
//   in the low nibble of byte j, value j + 16 in the high one), and per 256 values a
//   Q4KMeta (scales [rows, ldw / 256]); value = (d * sc[s]) * q - dmin * m[s] for the
//   32-value sub-block s.
#define W_BF16 0
#define W_Q8 1
#define W_Q4K 2

struct Q4KMeta {
    unsigned short d, dmin;
    unsigned char sc[8], m[8];
};

// Value i of row r of a weight matrix in any format (the scalar path).
__device__ __forceinline__ float weight_at(int fmt, const void* w, const void* sc, size_t r,
                                          int ldw, int i) {
    if (fmt == W_Q8) {
        const signed char* q = (const signed char*)w + r * ldw;
        const unsigned short* s = (const unsigned short*)sc + r * (ldw / 32);
        return f16_to_f32(s[i / 32]) * (float)q[i];
    }
    if (fmt == W_Q4K) {
        const unsigned char* q = (const unsigned char*)w + r * (ldw / 2);
        const Q4KMeta& m = ((const Q4KMeta*)sc)[r * (ldw / 256) + i / 256];
        const int sub = (i / 32) % 8, j = i % 32;
        const unsigned char byte = q[(i / 32) * 16 + (j & 15)];
        const float v = (float)(j < 16 ? byte & 15 : byte >> 4);
        const float ds = f16_to_f32(m.d) * (float)m.sc[sub];
        const float dm = f16_to_f32(m.dmin) * (float)m.m[sub];
        return ds * v - dm;
    }
    return bf16_to_f32(((const bf16_t*)w)[r * ldw + i]);
}

// Bytes of a row of k values.
__device__ __forceinline__ int weight_row_bytes(int fmt, int k) {
    return fmt == W_Q8 ? k : fmt == W_Q4K ? k / 2 : 2 * k;
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

// lo and hi rounded to bf16 (to nearest) by the hardware, packed: lo in the low half.
__device__ __forceinline__ u32 bf16x2_of(float lo, float hi) {
    u32 d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

// The bf16 part of a pair of values, packed (a in the low half), leaving in a and b what it
// does not hold: called again, it gives the next part (x = p0 + p1 + p2 ...).
__device__ __forceinline__ u32 take_bf16_pair(float& a, float& b) {
    const u32 d = bf16x2_of(a, b);
    a -= __uint_as_float(d << 16);
    b -= __uint_as_float(d & 0xffff0000u);
    return d;
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
    // u * sigmoid(2 * sqrt(2/pi) * (u + 0.044715 u^3)), as the CPU kernels. The division
    // is __fdividef (2 ulp; 0 where 1 + e > 2^126, where the quotient is below 2^-119):
    // IEEE division takes a slow path for a zero numerator, which is most of a sparse
    // layer's cut-off gate (124 against 58 us a launch of the prefill FFN activation).
    float e = expf(-2.0f * 0.7978846f * u * (1.0f + 0.044715f * u * u));
    return __fdividef(u, 1.0f + e);
}
