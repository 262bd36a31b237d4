// Device helpers shared by every cudit kernel family.
// Compiled by NVRTC: no host headers beyond the CUDA fp16/bf16 ones.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace cudit {

typedef long long i64;
typedef unsigned int u32;

// Runtime dtype codes; must match cudit/_variants.py DTYPE_CODES.
enum DTypeCode : int { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2 };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// 16-bit storage whose kind (DT_F16 or DT_BF16) is a launch parameter: one kernel serves both.
struct Bits16 {
    unsigned short bits;
};

// Two floats into two adjacent values: one packed conversion for the 16-bit types.
__device__ __forceinline__ void from_float2(float* v, float a, float b) { v[0] = a; v[1] = b; }
__device__ __forceinline__ void from_float2(__half* v, float a, float b) {
    *reinterpret_cast<__half2*>(v) = __floats2half2_rn(a, b);
}
__device__ __forceinline__ void from_float2(__nv_bfloat16* v, float a, float b) {
    *reinterpret_cast<__nv_bfloat162*>(v) = __floats2bfloat162_rn(a, b);
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
    __device__ __forceinline__ void to_floats(float (&out)[N]) const { words_to_floats(static_cast<const T*>(nullptr), out); }
    // bf16 pairs by word: a shift and a mask (per value, the compiler spends three instructions a pair).
    __device__ __forceinline__ void words_to_floats(const __nv_bfloat16*, float (&out)[N]) const {
        static_assert(N % 2 == 0, "packets hold pairs");
        const unsigned int* v = reinterpret_cast<const unsigned int*>(w);
#pragma unroll
        for (int i = 0; i < N / 2; ++i) {
            out[2 * i] = __uint_as_float(v[i] << 16);
            out[2 * i + 1] = __uint_as_float(v[i] & 0xffff0000u);
        }
    }
    template <typename U>
    __device__ __forceinline__ void words_to_floats(const U*, float (&out)[N]) const {
        const T* v = reinterpret_cast<const T*>(w);
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = to_float(v[i]);
    }
    __device__ __forceinline__ void from_floats(const float (&in)[N]) {
        T* v = reinterpret_cast<T*>(w);
        static_assert(N % 2 == 0, "packets hold pairs");
#pragma unroll
        for (int i = 0; i < N; i += 2) from_float2(v + i, in[i], in[i + 1]);
    }
};

// A packet as floats; dtype tells the kind of Bits16 storage (one uniform branch a packet) and
// is unused for the other types.
template <typename T, int N>
__device__ __forceinline__ void packet_floats(const Packet<T, N>& p, int, float (&out)[N]) { p.to_floats(out); }
template <int N>
__device__ __forceinline__ void packet_floats(const Packet<Bits16, N>& p, int dtype, float (&out)[N]) {
    const unsigned short* v = reinterpret_cast<const unsigned short*>(p.w);
#pragma unroll
    for (int i = 0; i < N; ++i)
        out[i] = dtype == DT_BF16 ? __uint_as_float((unsigned int)v[i] << 16) : __half2float(__ushort_as_half(v[i]));
}

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

// Ask L1 (L2) for a line that this thread (its block) reads later: no register is held meanwhile.
__device__ __forceinline__ void prefetch_l1(const void* p) {
    asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}
__device__ __forceinline__ void prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// 16 bytes from global to shared memory with no register between (sm_80+); zeros where !ok,
// reading nothing. Issued by the thread that later reads them back, after cp_async_wait.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool ok) {
    const u32 dst = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Until at most N of this thread's groups are in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
// A 16-byte word of shared memory, read where used (volatile: never held in registers instead).
__device__ __forceinline__ uint4 ld_shared16(const void* smem) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"((u32)__cvta_generic_to_shared(smem)));
    return v;
}

// Thread index in the block, x fastest (blocks may be 2-D: x = lane in a team, y = team).
__device__ __forceinline__ u32 linear_tid() { return threadIdx.y * blockDim.x + threadIdx.x; }

// n / d for a divisor fixed for the whole launch: multiply-high and shift, with the magic
// numbers computed on the host (cudit/_params.py fast_div); exact for every 32-bit n.
struct FastDiv {
    u32 d, m, s;
};
__device__ __forceinline__ u32 div(u32 n, const FastDiv& f) {
    return (u32)(((unsigned long long)__umulhi(n, f.m) + n) >> f.s);
}

// Sum over the `team` consecutive lanes that share a row (team is a power of two <= 32, the same
// for the whole warp), every lane of the warp taking part: blocks hold whole warps
// (cudit/_planner.py), so the shuffles take the constant full mask. A mask computed per lane
// costs a convergence check per shuffle (four instructions more each, docs/dev/perf-notes.md v13).
// Branch-free: the code around it may be scheduled across it.
__device__ __forceinline__ float team_sum_warp(float v, u32 team) {
#pragma unroll
    for (u32 off = 16; off > 0; off >>= 1) {
        const float o = __shfl_xor_sync(0xffffffffu, v, off);
        if (off < team) v += o;
    }
    return v;
}

__device__ __forceinline__ void add_lane(float& v, u32 off) { v += __shfl_xor_sync(0xffffffffu, v, off); }

constexpr int log2_of(u32 n) { return n > 1u ? 1 + log2_of(n >> 1) : 0; }

// One level of a scattered sum: of its 2n values this lane keeps the half its bit `off` selects,
// adding its partner's of them, and forwards the other half: n shuffles, not 2n.
template <int N>
__device__ __forceinline__ void keep_half(float (&v)[N], int n, u32 off, bool upper) {
#pragma unroll
    for (int i = 0; i < n; ++i) {
        const float send = upper ? v[i] : v[i + n];
        const float keep = upper ? v[i + n] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, off);
    }
}
// The inverse: this lane's n values and its partner's, back in their order (2n).
template <int N>
__device__ __forceinline__ void join_halves(float (&v)[N], int n, u32 off, bool upper) {
#pragma unroll
    for (int i = 0; i < n; ++i) {
        const float mine = v[i];
        const float other = __shfl_xor_sync(0xffffffffu, mine, off);
        v[i] = upper ? other : mine;
        v[i + n] = upper ? mine : other;
    }
}

// N sums over TEAM aligned lanes (powers of two), every lane ending with all N totals: the
// butterfly's levels and pairs, but while a lane holds several values a level forwards only half
// of them (reduce-scatter), and the totals are gathered back at the end. Every total has the
// butterfly's bits (a + b == b + a) for about half its shuffles, each an L1 wavefront.
template <u32 TEAM, int N>
__device__ __forceinline__ void team_sums_scattered(float (&v)[N]) {
    static_assert((N & (N - 1)) == 0 && (TEAM & (TEAM - 1u)) == 0, "powers of two");
    constexpr int LEVELS = log2_of(TEAM), SCATTERED = log2_of(N) < LEVELS ? log2_of(N) : LEVELS;
    const u32 lane = linear_tid() & 31u;
#pragma unroll
    for (int l = 0; l < SCATTERED; ++l) keep_half(v, N >> (l + 1), TEAM >> (l + 1), (lane & (TEAM >> (l + 1))) != 0u);
#pragma unroll
    for (u32 off = (TEAM >> SCATTERED) / 2; off > 0; off >>= 1)
#pragma unroll
        for (int i = 0; i < (N >> SCATTERED); ++i) add_lane(v[i], off);
#pragma unroll
    for (int l = SCATTERED - 1; l >= 0; --l) join_halves(v, N >> (l + 1), TEAM >> (l + 1), (lane & (TEAM >> (l + 1))) != 0u);
}

// V: float, or a struct of floats (LayerNorm's sum and sum of squares), summed as its floats.
template <u32 TEAM, typename V, int N>
__device__ __forceinline__ void team_sums_of(V (&v)[N]) {
    constexpr int F = N * (int)(sizeof(V) / sizeof(float));
    team_sums_scattered<TEAM>(*reinterpret_cast<float (*)[F]>(&v));
}

// N sums over the same teams, by one branch on the team width and then scattered shuffles at
// only its distances: fewer instructions and L1 wavefronts than team_sum_warp where a row has
// many sums and narrow teams, but the branch keeps the compiler from moving other work across the
// sums (perf-notes v25, v33). The same order of additions as team_sum_warp.
template <typename V, int N>
__device__ __forceinline__ void team_sums_warp(V (&v)[N], u32 team) {
    if (team >= 32u) {
        team_sums_of<32>(v);
    } else if (team == 16u) {
        team_sums_of<16>(v);
    } else if (team == 8u) {
        team_sums_of<8>(v);
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) v[i] = team_sum_warp(v[i], team);
    }
}

// Programmatic dependent launch (sm_90+): no-ops when the launch did not ask for it; a second
// wait returns at once.
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
