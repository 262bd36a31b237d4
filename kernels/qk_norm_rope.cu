// Fused QK RMSNorm + RoPE, one read and one write of every Q and K element.
//
// Work decomposition (the same for every mode, so one template serves them all):
//   row   = the values normalised together: one head (per-head norm, or no norm) or all
//           heads of one side of one token (full-dim norm).
//   item  = one thread's share of a row: VEC values at d = j*VEC and VEC values at
//           d = j*VEC + D/2 of one head, j < D/(2*VEC). Holding both halves lets
//           rotate_half pair i with i + D/2 in registers; interleaved pairs sit inside a VEC.
//   team  = the threads of one row: a power of two <= 32 lanes (shuffles) or the whole
//           block (shared-memory reduction). A thread holds K items in registers; K == 0
//           means the row is too long for registers and is read twice (second read from L2).
// Strides are 64-bit and in elements; the runtime checks 16-byte alignment of every vector.
#include "cudit_common.cuh"
#include "qk_norm_rope_params.h"

namespace cudit {

template <typename T> struct Item {
    static constexpr int VEC = 16 / (int)sizeof(T);
    Packet<T, VEC> lo, hi;
};

// Where one row lives, resolved once per thread.
template <typename T> struct Row {
    const T* in;
    T* out;
    i64 in_hs, out_hs;
    const void* w;
    int w_dtype;
    const void* cos;   // this row's table rows, at its first head
    const void* sin;
    i64 cos_hs, sin_hs;
    int items;
    float inv_n;
};

template <typename T, typename C>
__device__ __forceinline__ Row<T> locate_row(const Params& p, u32 row) {
    const u32 tok = row / p.rows_per_token;
    u32 r = row - tok * p.rows_per_token;
    const bool k_side = r >= (u32)p.side[0].rows;
    // Select field by field: a dynamic index into the parameter struct would copy it to local memory.
    const SideParams& q = p.side[0];
    const SideParams& k = p.side[1];
    if (k_side) r -= (u32)q.rows;
    const u32 b = tok / p.seq;
    const u32 s = tok - b * p.seq;
    const i64 head0 = (i64)r * (k_side ? k.heads_per_row : q.heads_per_row);

    Row<T> out;
    const i64 in_hs = k_side ? k.in_hs : q.in_hs;
    const i64 out_hs = k_side ? k.out_hs : q.out_hs;
    out.in = static_cast<const T*>(k_side ? k.in : q.in) + (i64)b * (k_side ? k.in_sb : q.in_sb) +
             (i64)s * (k_side ? k.in_ss : q.in_ss) + head0 * in_hs;
    out.out = static_cast<T*>(k_side ? k.out : q.out) + (i64)b * (k_side ? k.out_sb : q.out_sb) +
              (i64)s * (k_side ? k.out_ss : q.out_ss) + head0 * out_hs;
    out.in_hs = in_hs;
    out.out_hs = out_hs;
    const bool txt = s < p.num_txt;
    out.w = k_side ? (txt ? k.w_txt : k.w) : (txt ? q.w_txt : q.w);
    out.w_dtype = k_side ? k.w_dtype : q.w_dtype;
    out.items = k_side ? k.items : q.items;
    out.inv_n = k_side ? k.inv_n : q.inv_n;

    const u32 trow = tok % p.tab_rows;
    const u32 tb = trow / p.tab_inner;
    const u32 ts = trow - tb * p.tab_inner;
    out.cos = static_cast<const C*>(p.cos) + (i64)tb * p.cos_rb + (i64)ts * p.cos_rs + head0 * p.cos_hs;
    out.sin = static_cast<const C*>(p.sin) + (i64)tb * p.sin_rb + (i64)ts * p.sin_rs + head0 * p.sin_hs;
    out.cos_hs = p.cos_hs;
    out.sin_hs = p.sin_hs;
    return out;
}

// Element offset of an item's low half inside its row, and the head it belongs to.
__device__ __forceinline__ void item_coords(int i, int half_vecs, int vec, int& h, int& d) {
    h = i / half_vecs;
    d = (i - h * half_vecs) * vec;
}

template <typename T>
__device__ __forceinline__ void load_item(const Row<T>& row, const Params& p, int i, Item<T>& it) {
    int h, d;
    item_coords(i, p.half_vecs, Item<T>::VEC, h, d);
    const T* src = row.in + (i64)h * row.in_hs + d;
    it.lo.load(src);
    it.hi.load(src + p.head_dim / 2);
}

template <typename T>
__device__ __forceinline__ float item_sumsq(const Item<T>& it) {
    constexpr int VEC = Item<T>::VEC;
    float lo[VEC], hi[VEC];
    it.lo.to_floats(lo);
    it.hi.to_floats(hi);
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < VEC; ++e) s += lo[e] * lo[e] + hi[e] * hi[e];
    return s;
}

template <typename C, int N>
__device__ __forceinline__ void load_table(const C* p, float (&out)[N]) {
    Packet<C, N> pk;
    pk.load_ro(p);
    pk.to_floats(out);
}

template <int N>
__device__ __forceinline__ void rotate_pairs(const float (&x)[N], const float (&c)[N], const float (&s)[N],
                                             float (&out)[N]) {
#pragma unroll
    for (int e = 0; e < N; e += 2) {
        out[e] = x[e] * c[e] - x[e + 1] * s[e];
        out[e + 1] = x[e + 1] * c[e + 1] + x[e] * s[e + 1];
    }
}

// Normalise (scale r, weight w), rotate, round once, store. Table halves are loaded as they
// are consumed, which keeps at most 40 floats live (no spills under a 64-register cap).
template <typename T, typename C, int ROPE, bool NORM>
__device__ __forceinline__ void finish_item(const Row<T>& row, const Params& p, int i, const Item<T>& it,
                                            float r) {
    constexpr int VEC = Item<T>::VEC;
    int h, d;
    item_coords(i, p.half_vecs, VEC, h, d);
    const int half = p.head_dim / 2;
    float lo[VEC], hi[VEC];
    it.lo.to_floats(lo);
    it.hi.to_floats(hi);
    if (NORM) {
        const i64 widx = (i64)h * p.head_dim + d;
        float w[VEC];
        load_floats<VEC>(row.w, row.w_dtype, widx, w);
#pragma unroll
        for (int e = 0; e < VEC; ++e) lo[e] *= r * w[e];
        load_floats<VEC>(row.w, row.w_dtype, widx + half, w);
#pragma unroll
        for (int e = 0; e < VEC; ++e) hi[e] *= r * w[e];
    }
    Item<T> o;
    if (ROPE == ROPE_NONE) {
        o.lo.from_floats(lo);
        o.hi.from_floats(hi);
    } else {
        const C* cb = static_cast<const C*>(row.cos) + h * row.cos_hs + d;
        const C* sb = static_cast<const C*>(row.sin) + h * row.sin_hs + d;
        float c[VEC], s[VEC], out[VEC];
        load_table(cb, c);
        load_table(sb, s);
        if (ROPE == ROPE_INTERLEAVED) {
            rotate_pairs(lo, c, s, out);
            o.lo.from_floats(out);
            load_table(cb + half, c);
            load_table(sb + half, s);
            rotate_pairs(hi, c, s, out);
            o.hi.from_floats(out);
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e) out[e] = lo[e] * c[e] - hi[e] * s[e];
            o.lo.from_floats(out);
            load_table(cb + half, c);
            load_table(sb + half, s);
#pragma unroll
            for (int e = 0; e < VEC; ++e) out[e] = hi[e] * c[e] + lo[e] * s[e];
            o.hi.from_floats(out);
        }
    }
    T* dst = row.out + (i64)h * row.out_hs + d;
    o.lo.store(dst);
    o.hi.store(dst + half);
}

__device__ __forceinline__ float team_sum(float v, u32 team) {
    return team > 32u ? block_sum(v) : team_sum_warp(v, team);
}

template <typename T, typename C, int ROPE, bool NORM, int K>
__device__ __forceinline__ void qk_norm_rope_body(const Params& p) {
    const u32 team = p.team;
    const u32 lane = team > 32u ? threadIdx.x : (threadIdx.x & (team - 1u));
    const u32 row_id = team > 32u ? blockIdx.x : blockIdx.x * (blockDim.x / team) + threadIdx.x / team;
    // Teams never straddle a warp unless they fill the block, so a finished team leaves no
    // partner waiting in a shuffle or barrier.
    if (row_id >= p.total_rows) return;

    wait_for_producer();
    const Row<T> row = locate_row<T, C>(p, row_id);

    if (K > 0) {
        Item<T> it[K > 0 ? K : 1];  // K == 1 in the shipped variants; kept general for tuning
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const int i = (int)(lane + k * team);
            if (i < row.items) {
                load_item(row, p, i, it[k]);
                if (NORM) ss += item_sumsq(it[k]);
            }
        }
        release_dependents();
        float r = 1.f;
        if (NORM) r = 1.f / sqrtf(team_sum(ss, team) * row.inv_n + p.eps);
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const int i = (int)(lane + k * team);
            if (i < row.items) finish_item<T, C, ROPE, NORM>(row, p, i, it[k], r);
        }
    } else {
        // Row longer than registers hold: the second read hits L2.
        float ss = 0.f;
        if (NORM) {
            for (int i = (int)lane; i < row.items; i += (int)team) {
                Item<T> it;
                load_item(row, p, i, it);
                ss += item_sumsq(it);
            }
        }
        release_dependents();
        float r = 1.f;
        if (NORM) r = 1.f / sqrtf(team_sum(ss, team) * row.inv_n + p.eps);
        for (int i = (int)lane; i < row.items; i += (int)team) {
            Item<T> it;
            load_item(row, p, i, it);
            finish_item<T, C, ROPE, NORM>(row, p, i, it, r);
        }
    }
}

}  // namespace cudit

// build_cubins.py appends one line per variant:
//   CUDIT_QKNR(name, T, C, ROPE, NORM, K, MAX_THREADS)   (C: cos/sin type; any when ROPE is none)
#define CUDIT_QKNR(NAME, T, C, ROPE, NORM, K, MAX_THREADS)                                   \
    extern "C" __global__ void __launch_bounds__(MAX_THREADS, 1) NAME(const cudit::Params p) {   \
        cudit::qk_norm_rope_body<T, C, ROPE, NORM, K>(p);                                     \
    }
