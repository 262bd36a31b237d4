// Prototype: rows staged through shared memory with bulk async copies (sm_90), bf16 packed QKV in place.
#include <cuda_bf16.h>
typedef __nv_bfloat16 bf16;
typedef long long i64;
typedef unsigned u32;
typedef unsigned long long u64;
struct B {
    bf16* qkv;            // [T, 3*H*D]
    const float* cos;     // [T, D]
    const float* sin;
    const float* wq;
    const float* wk;
    u32 tokens, heads, tps, stages;   // tokens per stage
    u32 tiles, pad;
    i64 tok_stride;       // elements
    float eps, inv_n;
};
__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(u64* bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_expect(u64* bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_load(void* dst, const void* src, u32 bytes, u64* bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(smem_addr(dst)), "l"(src), "r"(bytes), "r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(u64* bar, u32 parity) {
    asm volatile("{\n .reg .pred p;\n W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra W;\n}"
                 ::"r"(smem_addr(bar)), "r"(parity) : "memory");
}
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
__device__ __forceinline__ void issue(const B& p, u32 tile, u32 stage, uint4* buf, u64* bars, u32 stage_vecs) {
    const u32 tok0 = tile * p.tps;
    const u32 n = min(p.tps, p.tokens - tok0);
    const u32 row_bytes = p.heads * 128 * 2 * 2;   // Q and K of one token
    mbar_expect(&bars[stage], n * row_bytes);
    for (u32 t = 0; t < n; ++t)
        bulk_load(buf + (i64)stage * stage_vecs + t * (row_bytes / 16), p.qkv + (i64)(tok0 + t) * p.tok_stride, row_bytes, &bars[stage]);
}
__device__ __forceinline__ void finish(const B& p, float (&x)[8], float r, u32 tok, u32 side, u32 h, u32 j, bool full) {
    const float* w = (side ? p.wk : p.wq) + (full ? h * 128 : 0) + j * 8;
    const float4 w0 = __ldg(reinterpret_cast<const float4*>(w)), w1 = __ldg(reinterpret_cast<const float4*>(w) + 1);
    const float* cp = p.cos + (i64)tok * 128 + j * 8;
    const float* sp = p.sin + (i64)tok * 128 + j * 8;
    const float4 c0 = __ldg(reinterpret_cast<const float4*>(cp)), c1 = __ldg(reinterpret_cast<const float4*>(cp) + 1);
    const float4 s0 = __ldg(reinterpret_cast<const float4*>(sp)), s1 = __ldg(reinterpret_cast<const float4*>(sp) + 1);
    const float wv[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
    const float cv[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
    const float sv[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] *= r * wv[e];
#pragma unroll
    for (int e = 0; e < 8; e += 2) {
        const float a = x[e], b = x[e + 1];
        x[e] = a * cv[e] - b * sv[e];
        x[e + 1] = b * cv[e + 1] + a * sv[e + 1];
    }
    *reinterpret_cast<uint4*>(p.qkv + (i64)tok * p.tok_stride + side * (i64)p.heads * 128 + h * 128 + j * 8) = fromf(x);
}
template <int FULL>
__device__ __forceinline__ void body(const B& p) {
    extern __shared__ __align__(128) unsigned char smem[];
    u64* bars = reinterpret_cast<u64*>(smem);                     // 8 stages at most
    float* hs = reinterpret_cast<float*>(smem + 64);              // head sums, 2*tps*H
    const u32 row_vecs = p.heads * 16;
    const u32 stage_vecs = p.tps * 2 * row_vecs;
    float* rr = hs + p.tps * 2 * p.heads;                         // row scales, 2*tps
    uint4* buf = reinterpret_cast<uint4*>(smem + 64 + (((p.tps * 2 * p.heads + p.tps * 2) * 4 + 127) / 128) * 128);
    const u32 tid = threadIdx.x, nt = blockDim.x;
    if (tid == 0) {
        for (u32 s = 0; s < p.stages; ++s) mbar_init(&bars[s], 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (tid == 0)
        for (u32 s = 0; s < p.stages; ++s) {
            const u32 tile = blockIdx.x + s * gridDim.x;
            if (tile < p.tiles) issue(p, tile, s, buf, bars, stage_vecs);
        }
    u32 i = 0;
    for (u32 tile = blockIdx.x; tile < p.tiles; tile += gridDim.x, ++i) {
        const u32 stage = i % p.stages;
        mbar_wait(&bars[stage], (i / p.stages) & 1u);
        const uint4* sb = buf + (i64)stage * stage_vecs;
        const u32 tok0 = tile * p.tps;
        const u32 nvec = min(p.tps, p.tokens - tok0) * 2 * row_vecs;
        if (!FULL) {
            for (u32 v = tid; v < nvec; v += nt) {
                float x[8];
                tof(sb[v], x);
                float ss = 0.f;
#pragma unroll
                for (int e = 0; e < 8; ++e) ss += x[e] * x[e];
#pragma unroll
                for (int off = 8; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
                const u32 row = v / row_vecs, hv = v - row * row_vecs;
                finish(p, x, rsqrtf(ss * p.inv_n + p.eps), tok0 + (row >> 1), row & 1u, hv >> 4, hv & 15u, false);
            }
        } else {
            for (u32 v = tid; v < nvec; v += nt) {
                float x[8];
                tof(sb[v], x);
                float ss = 0.f;
#pragma unroll
                for (int e = 0; e < 8; ++e) ss += x[e] * x[e];
#pragma unroll
                for (int off = 8; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
                if ((v & 15u) == 0) hs[v >> 4] = ss;
            }
            __syncthreads();
            const u32 nrows = nvec / row_vecs;
            if (tid < nrows) {
                float s = 0.f;
                for (u32 h = 0; h < p.heads; ++h) s += hs[tid * p.heads + h];
                rr[tid] = 1.f / sqrtf(s * p.inv_n + p.eps);
            }
            __syncthreads();
            for (u32 v = tid; v < nvec; v += nt) {
                float x[8];
                tof(sb[v], x);
                const u32 row = v / row_vecs, hv = v - row * row_vecs;
                finish(p, x, rr[row], tok0 + (row >> 1), row & 1u, hv >> 4, hv & 15u, true);
            }
        }
        __syncthreads();   // every thread is done with this stage
        if (tid == 0) {
            const u32 next = tile + p.stages * gridDim.x;
            if (next < p.tiles) {
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
                issue(p, next, stage, buf, bars, stage_vecs);
            }
        }
    }
}
extern "C" __global__ void __launch_bounds__(512, 1) bulk_head(const B p) { body<0>(p); }
extern "C" __global__ void __launch_bounds__(512, 1) bulk_full(const B p) { body<1>(p); }
extern "C" __global__ void __launch_bounds__(256, 4) bulk_head_r64(const B p) { body<0>(p); }
extern "C" __global__ void __launch_bounds__(256, 4) bulk_full_r64(const B p) { body<1>(p); }
