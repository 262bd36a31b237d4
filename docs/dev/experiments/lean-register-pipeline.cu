// Prototype: lean, register double-buffered QK norm + interleaved RoPE, bf16 packed QKV in place.
#include <cuda_bf16.h>
typedef __nv_bfloat16 bf16;
typedef long long i64;
struct P {
    bf16* qkv;            // [T, 3*H*D]
    const float* cos;     // [T, D]
    const float* sin;
    const float* wq;      // [D] per-head or [H*D] full
    const float* wk;
    unsigned rows;        // 2T
    unsigned heads;
    unsigned iters;
    unsigned pad;
    i64 tok_stride;
    float eps;
    float inv_n;
};
__device__ __forceinline__ void tof(const uint4& v, float (&x)[8]) {
    const bf16* b = reinterpret_cast<const bf16*>(&v);
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = __bfloat162float(b[i]);
}
__device__ __forceinline__ uint4 fromf(const float (&x)[8]) {
    uint4 v;
    __nv_bfloat162* b = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) b[i] = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
    return v;
}
__device__ __forceinline__ uint4 ldg_stream(const void* p) {
    uint4 v;
    asm volatile("ld.global.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
template <int FULL>
__device__ __forceinline__ void body(const P& p) {
    constexpr int D = 128, VEC = 8;
    const unsigned lane = threadIdx.x;   // team = heads * 16
    const unsigned h = lane >> 4, j = lane & 15u;
    const unsigned rpb = blockDim.y;
    const unsigned step = gridDim.x * rpb;
    unsigned r = blockIdx.x * rpb + threadIdx.y;
    const i64 hoff = (i64)h * D + j * VEC;
    auto addr = [&](unsigned row) {
        return p.qkv + (i64)(row >> 1) * p.tok_stride + (row & 1u) * (i64)p.heads * D + hoff;
    };
    __shared__ float part[2][32];
    uint4 cur = make_uint4(0, 0, 0, 0);
    if (r < p.rows) cur = ldg_stream(addr(r));
    for (unsigned i = 0; i < p.iters; ++i, r += step) {
        const unsigned rn = r + step;
        uint4 nxt = make_uint4(0, 0, 0, 0);
        if (i + 1 < p.iters && rn < p.rows) nxt = ldg_stream(addr(rn));
        const bool act = r < p.rows;
        float x[8];
        tof(cur, x);
        float ss = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) ss += x[e] * x[e];
        float rs;
        if (!FULL) {
#pragma unroll
            for (int off = 8; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
            rs = rsqrtf(ss * p.inv_n + p.eps);
        } else {
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
            const unsigned team_warps = blockDim.x >> 5;
            const unsigned w = (threadIdx.y * blockDim.x + lane) >> 5;
            if ((lane & 31u) == 0) part[i & 1][w] = ss;
            __syncthreads();
            float s = 0.f;
            for (unsigned k = 0; k < team_warps; ++k) s += part[i & 1][threadIdx.y * team_warps + k];
            rs = 1.f / sqrtf(s * p.inv_n + p.eps);
        }
        if (act) {
            const unsigned tok = r >> 1;
            const float* w = (r & 1u) ? p.wk : p.wq;
            const float* wp = w + (FULL ? hoff : (i64)j * VEC);
            const float4 w0 = __ldg(reinterpret_cast<const float4*>(wp));
            const float4 w1 = __ldg(reinterpret_cast<const float4*>(wp) + 1);
            const float* cp = p.cos + (i64)tok * D + j * VEC;
            const float* sp = p.sin + (i64)tok * D + j * VEC;
            const float4 c0 = __ldg(reinterpret_cast<const float4*>(cp)), c1 = __ldg(reinterpret_cast<const float4*>(cp) + 1);
            const float4 s0 = __ldg(reinterpret_cast<const float4*>(sp)), s1 = __ldg(reinterpret_cast<const float4*>(sp) + 1);
            const float wv[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
            const float cv[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
            const float sv[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
            for (int e = 0; e < 8; ++e) x[e] *= rs * wv[e];
#pragma unroll
            for (int e = 0; e < 8; e += 2) {
                const float a = x[e], b = x[e + 1];
                x[e] = a * cv[e] - b * sv[e];
                x[e + 1] = b * cv[e + 1] + a * sv[e + 1];
            }
            *reinterpret_cast<uint4*>(addr(r)) = fromf(x);
        }
        cur = nxt;
    }
}
#define INST(NAME, FULL, MAXT, MINB) \
    extern "C" __global__ void __launch_bounds__(MAXT, MINB) NAME(const P p) { body<FULL>(p); }
INST(head_r80, 0, 768, 1)
INST(head_r40, 0, 768, 2)
INST(head_r32, 0, 1024, 2)
INST(full_r48, 1, 640, 2)
INST(full_r32, 1, 640, 3)
INST(full_r40_384, 1, 384, 4)
INST(full_r32_384, 1, 384, 5)
