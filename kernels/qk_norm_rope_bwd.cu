// Backward of the fused QK RMSNorm + RoPE: dx from x and dy in one pass, and the weight's
// gradient as fp32 partial sums a block (a second small kernel adds them in a fixed order).
//
// Forward, per reduction group (one head, or all heads of a row for full-dim weights):
//   y = rope(x * r * w),  r = rsqrt(mean(x^2) + eps).
// Backward: dz = rope^T(dy) (the rotation by -angle), g = w * dz, then
//   dx = r * g - x * r^3 / n * sum(g * x),   dw += dz * x * r (summed over tokens, and heads).
//
// Work decomposition (BwdParams): a row is one side of one token. A row's team is tj x th
// threads: lane j < tj walks the head dim (items of PARTS vectors, as in the forward), head
// lane hl takes heads hl, hl + th, ... (ITEMS of them, held in registers between the two
// halves). blockDim = (team, rows a block); a launch takes one side or both (Q's blocks, then
// K's), and each side's weight streams take blocks of their own, which step over the stream's
// rows (blocks x blockDim.y) apart, so each block's weight partials cover a fixed set of rows of
// one stream: two runs give the same bits.
#include "cudit_common.cuh"
#include "qk_norm_rope_params.h"

namespace cudit {
namespace bwd {

// (sum x^2, sum g*x) over `width` consecutive lanes: a power of two <= 32 by shuffles, or whole
// warps (width a multiple of 32): their sums through shared memory, added in order from the
// row's first warp over its `per` warps. Every thread of the block calls it, with the two halves
// of scratch in turn: a warp that writes one half again has passed the barrier of the call
// between, which every warp reaches only after reading it (one barrier a call).
__device__ __forceinline__ float2 group_sum(float2 v, u32 width, u32 first, u32 per, float2 (&scratch)[2][32], u32& turn) {
    v = make_float2(team_sum_warp(v.x, width), team_sum_warp(v.y, width));   // the same bits in every lane of a group
    if (width <= 32) return v;
    float2* half = scratch[turn];
    turn ^= 1u;
    if (linear_tid() % 32 == 0) half[linear_tid() / 32] = v;
    __syncthreads();
    float2 t = make_float2(0.f, 0.f);
    for (u32 w = first; w < first + per; ++w) {
        t.x += half[w].x;
        t.y += half[w].y;
    }
    return t;
}

// dz = rope^T(dy) on one vector: interleaved pairs (2i, 2i + 1) rotate inside it.
template <int VEC>
__device__ __forceinline__ void unrotate_pairs(float (&v)[VEC], const float (&c)[VEC], const float (&s)[VEC]) {
#pragma unroll
    for (int e = 0; e < VEC; e += 2) {
        const float a = v[e], b = v[e + 1];
        v[e] = a * c[e] + b * s[e + 1];
        v[e + 1] = b * c[e + 1] - a * s[e];
    }
}

// This thread's cos and sin values of one item (PARTS vectors).
template <int PARTS, int VEC>
__device__ __forceinline__ void load_table(const BwdParams& p, i64 cos_at, i64 sin_at, int stride, float (&c)[PARTS][VEC],
                                           float (&sn)[PARTS][VEC]) {
#pragma unroll
    for (int q = 0; q < PARTS; ++q) {
        load_floats<VEC>(p.cos, p.tab_dtype, cos_at + q * stride, c[q]);
        load_floats<VEC>(p.sin, p.tab_dtype, sin_at + q * stride, sn[q]);
    }
}

// dz = rope^T(dy) on one item, in place.
template <int ROPE, int PARTS, int VEC>
__device__ __forceinline__ void rotate_back(float (&dz)[PARTS][VEC], const float (&c)[PARTS][VEC],
                                            const float (&sn)[PARTS][VEC]) {
    if (ROPE == ROPE_INTERLEAVED) {
        unrotate_pairs<VEC>(dz[0], c[0], sn[0]);
        return;
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) {   // (lo, hi) = (i, i + D/2)
        const float lo = dz[0][e], hi = dz[PARTS - 1][e];
        dz[0][e] = lo * c[0][e] + hi * sn[PARTS - 1][e];
        dz[PARTS - 1][e] = hi * c[PARTS - 1][e] - lo * sn[0][e];
    }
}

// dz = rope^T(dy) for one item. SHARED: every head uses the same table row, read once a row into
// (c, sn); otherwise each head's is read here (L1 holds a token's rows for all its heads).
template <typename T, int ROPE, int PARTS, int VEC, bool SHARED>
__device__ __forceinline__ void item_dz(const BwdParams& p, const Packet<T, VEC> (&py)[PARTS], i64 cos_at,
                                        i64 sin_at, int stride, const float (&c)[PARTS][VEC],
                                        const float (&sn)[PARTS][VEC], float (&dz)[PARTS][VEC]) {
#pragma unroll
    for (int q = 0; q < PARTS; ++q) py[q].to_floats(dz[q]);
    if (ROPE == ROPE_NONE) return;
    if (SHARED) {
        rotate_back<ROPE, PARTS, VEC>(dz, c, sn);
    } else {
        float hc[PARTS][VEC], hs[PARTS][VEC];
        load_table<PARTS, VEC>(p, cos_at, sin_at, stride, hc, hs);
        rotate_back<ROPE, PARTS, VEC>(dz, hc, hs);
    }
}

// The norm weight of head h at this thread's values (per head: every head's is the same).
template <int NORM, int PARTS, int VEC>
__device__ __forceinline__ void item_weight(const BwdParams& p, const void* wp, int h, int d, int stride,
                                            float (&w)[PARTS][VEC]) {
#pragma unroll
    for (int q = 0; q < PARTS; ++q)
        load_floats<VEC>(wp, p.w_dtype, (NORM == NORM_FULL ? h * p.head_dim : 0) + d + q * stride, w[q]);
}

// acc[k * threads] += v (float4 k), and v = 0 for the next head's terms.
template <int VEC>
__device__ __forceinline__ void add_sums(float4* acc, u32 threads, float (&v)[VEC]) {
#pragma unroll
    for (int k = 0; k < VEC / 4; ++k) {
        float4 a = acc[k * threads];
        a.x += v[4 * k];
        a.y += v[4 * k + 1];
        a.z += v[4 * k + 2];
        a.w += v[4 * k + 3];
        acc[k * threads] = a;
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = 0.f;
}

// Row `row` of a stream (rows of it in all, `span` positions a batch element from s_begin): its
// x, dy and dx at this thread's lane d, and its table row's offsets.
template <typename T, int ROPE>
struct RowAt {
    bool ok;
    const T* x;
    const T* dy;
    T* dx;
    i64 cos_at, sin_at;
};

template <typename T, int ROPE>
__device__ __forceinline__ RowAt<T, ROPE> row_at(const BwdParams& p, u32 side, u32 row, u32 rows, const FastDiv& span,
                                                 u32 s_begin, int d) {
    RowAt<T, ROPE> r;
    r.ok = row < rows;
    const u32 b = r.ok ? div(row, span) : 0;
    const u32 s = r.ok ? s_begin + (row - b * span.d) : 0;
    const u32 tok = b * p.seq + s;
    r.x = static_cast<const T*>(p.x[side]) + (i64)b * p.x_sb[side] + (i64)s * p.x_ss[side] + d;
    r.dy = static_cast<const T*>(p.dy[side]) + (i64)b * p.dy_sb[side] + (i64)s * p.dy_ss[side] + d;
    r.dx = static_cast<T*>(p.dx[side]) + (i64)b * p.dx_sb[side] + (i64)s * p.dx_ss[side] + d;
    r.cos_at = r.sin_at = 0;
    if (ROPE != ROPE_NONE) {
        const u32 trow = tok - div(tok, p.tab_rows) * p.tab_rows.d;
        const u32 tb = div(trow, p.tab_inner);
        const u32 ts = trow - tb * p.tab_inner.d;
        r.cos_at = (i64)tb * p.cos_rb + (i64)ts * p.cos_rs + d;
        r.sin_at = (i64)tb * p.sin_rb + (i64)ts * p.sin_rs + d;
    }
    return r;
}

// STAGES 2: a thread's x and dy of its next row (or chunk) are copied into shared memory while it
// works on the current one, and read there where used; 0: held in registers between the halves.
// side: the launch's side this block takes, its fields indexed where read (a copy of the code a
// side ran slower: perf-notes v29); block: the block among that side's `blocks`.
// HALF: a rotate_half table of half heads, one entry for values i and i + D/2.
template <typename T, int ROPE, int NORM, int ITEMS, bool SHARED, int STAGES, bool HALF>
__device__ __forceinline__ void backward(const BwdParams& p, float4* acc, u32 side, u32 block, u32 blocks) {
    __shared__ float2 scratch[2][32];
    constexpr int VEC = 16 / (int)sizeof(T);
    constexpr int PARTS = ROPE == ROPE_HALF ? 2 : 1;
    constexpr int WM = NORM == NORM_FULL ? ITEMS : 1;    // weight slices a thread sums into
    constexpr int SLOTS = NORM == NORM_NONE ? 0 : WM * PARTS;
    static_assert(STAGES == 0 || STAGES == 2, "two stages or none");
    // Staged full-dim rows: a thread's weights (the same heads every row) and their gradient sums
    // held in registers, freed by x and dy; the sums go to shared memory once, at the end. The
    // first half's dz waits in shared memory for the second (not computed again).
    constexpr bool HOLD_W = NORM == NORM_FULL && STAGES;
    u32 turn = 0;

    const u32 j = threadIdx.x % (u32)p.tj, hl = threadIdx.x / (u32)p.tj;
    const int stride = p.head_dim / PARTS;   // rotate_half: part 1 sits D/2 after part 0
    const int tab_stride = HALF ? 0 : stride;   // and its table entries
    const int d = (int)j * VEC;
    const bool lane_ok = (int)j < p.lanes_d;
    const u32 width = NORM == NORM_FULL ? blockDim.x : (u32)p.tj;
    const u32 per = width / 32, first_warp = per ? linear_tid() / 32 / per * per : 0;   // a row's warps
    // Head offsets fit 32 bits (the planner checks): one multiply a head.
    const int x_hs = (int)p.x_hs[side], dy_hs = (int)p.dy_hs[side], dx_hs = (int)p.dx_hs[side], cos_hs = (int)p.cos_hs,
              sin_hs = (int)p.sin_hs;

    // The weight-gradient sums a thread keeps across its rows, in shared memory (its registers go
    // to the values in flight): float4 k of slot (m, q) of thread tid at acc[(slot * VEC/4 + k) * threads + tid].
    const u32 tid = linear_tid(), threads = blockDim.x * blockDim.y;
    if (!HOLD_W)
#pragma unroll
        for (int v = 0; v < SLOTS * VEC / 4; ++v) acc[v * threads + tid] = make_float4(0.f, 0.f, 0.f, 0.f);
    // Staged x (0) and dy (1) of item (m, q) in stage g, a 16-byte word a thread each: after the
    // sums, or (HOLD_W) where the sums go at the end.
    float4* const staged = HOLD_W ? acc : acc + SLOTS * VEC / 4 * threads;
    auto word = [&](int g, int m, int q, int which) { return staged + (((g * ITEMS + m) * PARTS + q) * 2 + which) * threads + tid; };
    // HOLD_W: float4 k of item (m, q)'s dz, after the stages.
    auto dz_word = [&](int m, int q, int k) {
        return staged + (STAGES * ITEMS * PARTS * 2 + (m * PARTS + q) * (VEC / 4) + k) * threads + tid;
    };

    // This block's weight stream: its rows, this block's first and the step between them (each
    // selected, not indexed by the stream: indexed, they took registers the per-head rows spilled for).
    const u32 split = p.split[side];
    const bool st = block >= split;
    const u32 first_row = (st ? block - split : block) * blockDim.y;
    const u32 step = (st ? blocks - split : split) * blockDim.y;
    const FastDiv span = st ? p.span[1] : p.span[0];
    const u32 rows = st ? p.rows[1] : p.rows[0], s_begin = st ? p.s_begin[1] : p.s_begin[0];
    const void* wp = st ? p.w[side][1] : p.w[side][0];

    wait_for_producer();
    float wh[PARTS][VEC];   // per head: this thread's weight values, the same for all its heads and rows
    if (NORM == NORM_HEAD && lane_ok) {
        item_weight<NORM, PARTS, VEC>(p, wp, 0, d, stride, wh);
    } else {
#pragma unroll
        for (int q = 0; q < PARTS; ++q)
#pragma unroll
            for (int e = 0; e < VEC; ++e) wh[q][e] = 0.f;
    }

    float wf[HOLD_W ? ITEMS : 1][PARTS][VEC], dwf[HOLD_W ? ITEMS : 1][PARTS][VEC];   // HOLD_W: weights, their sums
    if (HOLD_W) {
#pragma unroll
        for (int m = 0; m < ITEMS; ++m) {
            const int h = (int)hl + m * p.th;
#pragma unroll
            for (int q = 0; q < PARTS; ++q)
#pragma unroll
                for (int e = 0; e < VEC; ++e) wf[m][q][e] = dwf[m][q][e] = 0.f;
            if (lane_ok && h < p.heads) item_weight<NORM, PARTS, VEC>(p, wp, h, d, stride, wf[m]);
        }
    }

    // The loads of chunk `chunk` of the rows at `base` into stage g, as one group.
    auto stage_in = [&](u32 base, int chunk, int g) {
        const RowAt<T, ROPE> r = row_at<T, ROPE>(p, side, base + threadIdx.y, rows, span, s_begin, d);
        const int first = chunk * ITEMS * p.th + (int)hl;
#pragma unroll
        for (int m = 0; m < ITEMS; ++m) {
            const int h = first + m * p.th;
            const bool ok = r.ok && lane_ok && h < p.heads;
#pragma unroll
            for (int q = 0; q < PARTS; ++q) {
                cp_async16(word(g, m, q, 0), ok ? r.x + h * x_hs + q * stride : p.x[side], ok);
                cp_async16(word(g, m, q, 1), ok ? r.dy + h * dy_hs + q * stride : p.dy[side], ok);
            }
        }
        cp_async_commit();
    };
    int g = 0;
    if (STAGES && first_row < rows) stage_in(first_row, 0, 0);

    for (u32 base = first_row; base < rows; base += step) {
        const RowAt<T, ROPE> r = row_at<T, ROPE>(p, side, base + threadIdx.y, rows, span, s_begin, d);
        const bool row_ok = r.ok;
        T* const dx = r.dx;
        const i64 cos_at = r.cos_at, sin_at = r.sin_at;
        float tc[PARTS][VEC], tsn[PARTS][VEC];   // SHARED: this thread's slice of the token's table row
        if (SHARED && ROPE != ROPE_NONE && row_ok && lane_ok) load_table<PARTS, VEC>(p, cos_at, sin_at, tab_stride, tc, tsn);

        // Per head (and with no norm) a thread takes its heads ITEMS at a time; full-dim rows fit one chunk.
        for (int chunk = 0; chunk < p.chunks; ++chunk) {
            const int first = chunk * ITEMS * p.th + (int)hl;
            Packet<T, VEC> px[ITEMS][PARTS], py[ITEMS][PARTS];   // x and dy as stored: all a thread holds
            if (STAGES) {   // the next chunk's (or row's) loads out before this one's math
                const bool last = chunk + 1 == p.chunks;
                if (!last || base + step < rows) {
                    stage_in(last ? base + step : base, last ? 0 : chunk + 1, g ^ 1);
                } else {
                    cp_async_commit();
                }
                cp_async_wait<1>();
            } else {
#pragma unroll
                for (int m = 0; m < ITEMS; ++m) {
                    const int h = first + m * p.th;
                    const bool ok = row_ok && lane_ok && h < p.heads;
#pragma unroll
                    for (int q = 0; q < PARTS; ++q) {
                        if (ok) {
                            px[m][q].load(r.x + h * x_hs + q * stride);
                            py[m][q].load(r.dy + h * dy_hs + q * stride);
                        } else {
                            px[m][q] = py[m][q] = Packet<T, VEC>{};
                        }
                    }
                }
            }
            // x or dy (which 0 or 1) of item (m, q): held, or read from this chunk's stage.
            auto held = [&](int m, int q, int which) {
                if (!STAGES) return which ? py[m][q] : px[m][q];
                Packet<T, VEC> v;
                *reinterpret_cast<uint4*>(v.w) = ld_shared16(word(g, m, q, which));
                return v;
            };
            auto dy_of = [&](int m, Packet<T, VEC> (&out)[PARTS]) {
#pragma unroll
                for (int q = 0; q < PARTS; ++q) out[q] = held(m, q, 1);
            };
            if (NORM == NORM_NONE) {
#pragma unroll
                for (int m = 0; m < ITEMS; ++m) {
                    const int h = first + m * p.th;
                    if (!(row_ok && lane_ok && h < p.heads)) continue;
                    float dz[PARTS][VEC];
                    Packet<T, VEC> y[PARTS];
                    dy_of(m, y);
                    item_dz<T, ROPE, PARTS, VEC, SHARED>(p, y, cos_at + h * cos_hs, sin_at + h * sin_hs, tab_stride, tc, tsn, dz);
#pragma unroll
                    for (int q = 0; q < PARTS; ++q) {
                        Packet<T, VEC> out;
                        out.from_floats(dz[q]);
                        out.store(dx + h * dx_hs + q * stride);
                    }
                }
                g ^= STAGES ? 1 : 0;
                continue;   // the next chunk
            }

            // (sum x^2, sum w dz x): over the whole row (full-dim) or each head's lanes (per head).
            float2 sums[ITEMS];
#pragma unroll
            for (int m = 0; m < ITEMS; ++m) {
                const int h = first + m * p.th;
                sums[m] = make_float2(0.f, 0.f);
                if (!(row_ok && lane_ok && h < p.heads)) continue;
                float dz[PARTS][VEC], w[PARTS][VEC];
                Packet<T, VEC> y[PARTS];
                dy_of(m, y);
                item_dz<T, ROPE, PARTS, VEC, SHARED>(p, y, cos_at + h * cos_hs, sin_at + h * sin_hs, tab_stride, tc, tsn, dz);
                if (NORM == NORM_FULL && !HOLD_W) item_weight<NORM, PARTS, VEC>(p, wp, h, d, stride, w);
#pragma unroll
                for (int q = 0; q < PARTS; ++q) {
                    float xs[VEC];
                    held(m, q, 0).to_floats(xs);
#pragma unroll
                    for (int e = 0; e < VEC; ++e) {
                        sums[m].x += xs[e] * xs[e];
                        sums[m].y += (HOLD_W ? wf[m] : NORM == NORM_FULL ? w : wh)[q][e] * dz[q][e] * xs[e];
                    }
                    if (HOLD_W)
#pragma unroll
                        for (int k = 0; k < VEC / 4; ++k)
                            *dz_word(m, q, k) = make_float4(dz[q][4 * k], dz[q][4 * k + 1], dz[q][4 * k + 2], dz[q][4 * k + 3]);
                }
            }
            if (NORM == NORM_FULL) {
#pragma unroll
                for (int m = 1; m < ITEMS; ++m) {
                    sums[0].x += sums[m].x;
                    sums[0].y += sums[m].y;
                }
                sums[0] = group_sum(sums[0], width, first_warp, per, scratch, turn);
            } else {
#pragma unroll
                for (int m = 0; m < ITEMS; ++m) sums[m] = group_sum(sums[m], width, first_warp, per, scratch, turn);
            }
            float dw[PARTS][VEC];   // per head: the chunk's weight-gradient terms, its heads summed
#pragma unroll
            for (int q = 0; q < PARTS; ++q)
#pragma unroll
                for (int e = 0; e < VEC; ++e) dw[q][e] = 0.f;
#pragma unroll
            for (int m = 0; m < ITEMS; ++m) {
                const int h = first + m * p.th;
                if (!(row_ok && lane_ok && h < p.heads)) continue;
                const float2 t = sums[NORM == NORM_FULL ? 0 : m];
                const float r = rsqrtf(t.x * p.inv_n + p.eps);
                const float c2 = r * r * r * p.inv_n * t.y;
                float dz[PARTS][VEC], w[PARTS][VEC];
                if (HOLD_W) {
#pragma unroll
                    for (int q = 0; q < PARTS; ++q)
#pragma unroll
                        for (int k = 0; k < VEC / 4; ++k) {
                            const uint4 v = ld_shared16(dz_word(m, q, k));
                            dz[q][4 * k] = __uint_as_float(v.x);
                            dz[q][4 * k + 1] = __uint_as_float(v.y);
                            dz[q][4 * k + 2] = __uint_as_float(v.z);
                            dz[q][4 * k + 3] = __uint_as_float(v.w);
                        }
                } else {
                    Packet<T, VEC> y[PARTS];
                    dy_of(m, y);
                    item_dz<T, ROPE, PARTS, VEC, SHARED>(p, y, cos_at + h * cos_hs, sin_at + h * sin_hs, tab_stride, tc, tsn, dz);
                }
                if (NORM == NORM_FULL && !HOLD_W) item_weight<NORM, PARTS, VEC>(p, wp, h, d, stride, w);
#pragma unroll
                for (int q = 0; q < PARTS; ++q) {
                    float xs[VEC], o[VEC];
                    held(m, q, 0).to_floats(xs);
#pragma unroll
                    for (int e = 0; e < VEC; ++e) {
                        const float u = dz[q][e] * r;   // dz * r: dx's first term over w, dw's over x
                        o[e] = (HOLD_W ? wf[m] : NORM == NORM_FULL ? w : wh)[q][e] * u - xs[e] * c2;
                        (HOLD_W ? dwf[m] : dw)[q][e] += u * xs[e];
                    }
                    Packet<T, VEC> out;
                    out.from_floats(o);
                    out.store(dx + h * dx_hs + q * stride);
                    if (NORM == NORM_FULL && !HOLD_W)
                        add_sums<VEC>(acc + (m * PARTS + q) * (VEC / 4) * threads + tid, threads, dw[q]);
                }
            }
            if (NORM == NORM_HEAD && row_ok && lane_ok)
#pragma unroll
                for (int q = 0; q < PARTS; ++q) add_sums<VEC>(acc + q * (VEC / 4) * threads + tid, threads, dw[q]);
            g ^= STAGES ? 1 : 0;
        }
    }
    release_dependents();
    if (NORM == NORM_NONE || !p.part) return;
    if (HOLD_W) {   // the staging area becomes the sums' once every thread has read its last stage
        cp_async_wait<0>();
        __syncthreads();
#pragma unroll
        for (int m = 0; m < ITEMS; ++m)
#pragma unroll
            for (int q = 0; q < PARTS; ++q)
#pragma unroll
                for (int k = 0; k < VEC / 4; ++k)
                    acc[((m * PARTS + q) * (VEC / 4) + k) * threads + tid] =
                        make_float4(dwf[m][q][4 * k], dwf[m][q][4 * k + 1], dwf[m][q][4 * k + 2], dwf[m][q][4 * k + 3]);
    }

    // The block's partial weight gradient: each value summed over the threads that hold it, in a
    // fixed order. NORM_HEAD: value (j, e) of part q is held by every head lane of every row;
    // NORM_FULL: value (j, hl, e) of slot m by one thread of every row.
    __syncthreads();
    const float* sums = reinterpret_cast<const float*>(acc);
    float* part = p.part + (i64)blockIdx.x * p.width;
    const u32 lanes = NORM == NORM_HEAD ? (u32)p.tj : blockDim.x;
    for (u32 v = tid; v < (u32)SLOTS * lanes * VEC; v += threads) {
        const u32 slot = v / (lanes * VEC), lane = v / VEC % lanes, e = v % VEC;
        const u32 m = slot / PARTS, q = slot % PARTS;
        const u32 jj = lane % (u32)p.tj, hh = lane / (u32)p.tj + m * (u32)p.th;
        if ((int)jj >= p.lanes_d || (NORM == NORM_FULL && (int)hh >= p.heads)) continue;
        const float* a = sums + ((slot * (VEC / 4) + e / 4) * threads) * 4 + e % 4;
        float sum = 0.f;
        for (u32 y = 0; y < blockDim.y; ++y) {
            if (NORM == NORM_HEAD) {
                for (u32 l = jj; l < blockDim.x; l += (u32)p.tj) sum += a[(y * blockDim.x + l) * 4];
            } else {
                sum += a[(y * blockDim.x + lane) * 4];
            }
        }
        part[(NORM == NORM_FULL ? (int)hh * p.head_dim : 0) + (int)jj * VEC + (int)q * stride + (int)e] = sum;
    }
}

// out[v] = sum over slots of part[slot * width + v] for one weight stream: 32 values a block, 32
// slot lanes each, then the lanes' sums in order. A lane loads REDUCE_BATCH of its slots at once
// (a loop unrolled over a run-time count leaves its remainder one load at a time), then adds
// them in order. out_dtype: DTypeCode of the weight.
constexpr int REDUCE_BATCH = 16;
__device__ __forceinline__ void reduce_slots(const ReduceParams& p) {
    __shared__ float sums[32][33];
    int i = 0;
#pragma unroll
    for (int k = 1; k < REDUCE_STREAMS; ++k)
        if (k < p.streams && (int)blockIdx.x >= p.first[k]) i = k;
    const float* part = p.part[i];
    const int width = p.width[i], slots = p.slots[i];
    const int v = ((int)blockIdx.x - p.first[i]) * 32 + (int)threadIdx.x;
    float s = 0.f;
    wait_for_producer();
    for (int base = threadIdx.y; v < width && base < slots; base += 32 * REDUCE_BATCH) {
        float t[REDUCE_BATCH];
#pragma unroll
        for (int u = 0; u < REDUCE_BATCH; ++u) {
            const int slot = base + 32 * u;
            t[u] = slot < slots ? __ldcg(part + (i64)slot * width + v) : 0.f;
        }
#pragma unroll
        for (int u = 0; u < REDUCE_BATCH; ++u) s += t[u];
    }
    sums[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y != 0 || v >= width) return;
    float t = 0.f;
    for (int y = 0; y < 32; ++y) t += sums[y][threadIdx.x];
    void* out = p.out[i];
    if (p.out_dtype[i] == DT_F32) {
        static_cast<float*>(out)[v] = t;
    } else if (p.out_dtype[i] == DT_F16) {
        static_cast<__half*>(out)[v] = __float2half_rn(t);
    } else {
        static_cast<__nv_bfloat16*>(out)[v] = __float2bfloat16_rn(t);
    }
}

}  // namespace bwd
}  // namespace cudit

// One entry point a variant; the build (cudit/_variants.py BackwardVariant) writes these lines.
#define CUDIT_QKNR_BWD(NAME, T, ROPE, NORM, ITEMS, SHARED, STAGES, HALF, MAX_THREADS)                           \
    extern "C" __global__ void __launch_bounds__(MAX_THREADS, 1) NAME(const cudit::BwdParams p) {         \
        extern __shared__ float4 cudit_sums[];                                                             \
        const cudit::u32 k = blockIdx.x >= p.side_blocks;                                                  \
        cudit::bwd::backward<T, ROPE, NORM, ITEMS, SHARED, STAGES, HALF>(                                  \
            p, cudit_sums, k, k ? blockIdx.x - p.side_blocks : blockIdx.x, k ? gridDim.x - p.side_blocks : p.side_blocks); \
    }

extern "C" __global__ void __launch_bounds__(1024, 2) qknr_bwd_reduce(const cudit::ReduceParams p) {
    cudit::bwd::reduce_slots(p);
}
