// Device helpers shared by every cudit kernel family.
// Compiled by NVRTC: no host headers beyond the CUDA fp16/bf16 ones.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace cudit {

typedef long long i64;
typedef unsigned int u32;

// Runtime dtype codes; must match cudit/_planner.py DTYPE_CODES.
enum DTypeCode : int { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2 };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

template <int BYTES> struct WordOf;
template <> struct WordOf<16> { typedef uint4 type; };
template <> struct WordOf<8> { typedef uint2 type; };
template <> struct WordOf<4> { typedef unsigned int type; };
template <> struct WordOf<2> { typedef unsigned short type; };

// Raw storage of N values of T, moved with the widest aligned accesses (16 bytes at most).
template <typename T, int N> struct Packet {
    static constexpr int BYTES = N * (int)sizeof(T);
    static constexpr int WORD = BYTES >= 16 ? 16 : BYTES;
    static constexpr int WORDS = BYTES / WORD;
    static_assert(WORDS * WORD == BYTES, "packet must be a whole number of words");
    typedef typename WordOf<WORD>::type Word;
    Word w[WORDS];

    __device__ __forceinline__ void load(const T* p) {
        const Word* q = reinterpret_cast<const Word*>(p);
#pragma unroll
        for (int i = 0; i < WORDS; ++i) w[i] = q[i];
    }
    // Read-only data shared by many threads (norm weights, cos/sin rows): non-coherent cache path.
    __device__ __forceinline__ void load_ro(const T* p) {
        const Word* q = reinterpret_cast<const Word*>(p);
#pragma unroll
        for (int i = 0; i < WORDS; ++i) w[i] = __ldg(q + i);
    }
    __device__ __forceinline__ void store(T* p) const {
        Word* q = reinterpret_cast<Word*>(p);
#pragma unroll
        for (int i = 0; i < WORDS; ++i) q[i] = w[i];
    }
    __device__ __forceinline__ void to_floats(float (&out)[N]) const {
        const T* v = reinterpret_cast<const T*>(w);
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = to_float(v[i]);
    }
    __device__ __forceinline__ void from_floats(const float (&in)[N]) {
        T* v = reinterpret_cast<T*>(w);
#pragma unroll
        for (int i = 0; i < N; ++i) v[i] = from_float<T>(in[i]);
    }
};

// N floats from a read-only array whose dtype is only known at run time (weights, cos/sin):
// the branch is uniform across the grid, so it costs no divergence.
template <int N>
__device__ __forceinline__ void load_floats(const void* base, int dtype, i64 idx, float (&out)[N]) {
    if (dtype == DT_F32) {
        Packet<float, N> p; p.load_ro(static_cast<const float*>(base) + idx); p.to_floats(out);
    } else if (dtype == DT_F16) {
        Packet<__half, N> p; p.load_ro(static_cast<const __half*>(base) + idx); p.to_floats(out);
    } else {
        Packet<__nv_bfloat16, N> p; p.load_ro(static_cast<const __nv_bfloat16*>(base) + idx); p.to_floats(out);
    }
}

// Sum over the `team` consecutive lanes that share a row (team is a power of two <= 32).
__device__ __forceinline__ float team_sum_warp(float v, u32 team) {
    const u32 lane = threadIdx.x & 31u;
    const u32 mask = team >= 32u ? 0xffffffffu : (((1u << team) - 1u) << (lane & ~(team - 1u)));
    for (u32 off = team >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(mask, v, off);
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    v = team_sum_warp(v, 32u);
    const u32 warps = blockDim.x >> 5;
    if ((threadIdx.x & 31u) == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0.f;
    for (u32 i = 0; i < warps; ++i) s += partial[i];
    return s;
}

// Programmatic dependent launch (sm_90+): no-ops when the launch did not ask for it.
__device__ __forceinline__ void wait_for_producer() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void release_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace cudit
