// Kernel parameters of the qk_norm_rope family, passed by value as one struct.
// Plain C on purpose: the CPU tests compile it with the host compiler and check that
// cudit/_params.py (ctypes) lays it out byte for byte the same way.
#pragma once

#ifdef __cplusplus
namespace cudit {
#endif

typedef long long cudit_i64;
typedef unsigned int cudit_u32;

// n / d as a multiply-high and a shift (magic numbers from the host).
#ifndef __CUDACC__
typedef struct FastDiv { cudit_u32 d, m, s; } FastDiv;
#endif

enum RopeMode { ROPE_NONE = 0, ROPE_INTERLEAVED = 1, ROPE_HALF = 2 };
enum NormKind { NORM_NONE = 0, NORM_HEAD = 1, NORM_FULL = 2 };
// Full-dim rows under tensor parallelism (Params.stats, [tokens, 2] fp32: Q's and K's sums of
// squares), a variant's template argument: STATS_WRITE stores each row's sum over this rank's
// heads and writes no output; STATS_READ normalises by the all-reduced sums instead of summing;
// STATS_EXCHANGE sums the local heads, then trades each row's sum with the other ranks through
// their exchange buffers (Params.xchg) in the same pass.
enum StatsMode { STATS_NONE = 0, STATS_WRITE = 1, STATS_READ = 2, STATS_EXCHANGE = 3 };
// STATS_EXCHANGE: each rank's buffer is a header of XCHG_HEADER 64-bit words (word 0: the calls
// completed, word 1: blocks finished in this call) and then two halves, used by turns, of
// [ranks][xchg_rows] words; a word is a row's sum (low 32 bits) and the call's epoch (high).
enum ExchangeLayout { MAX_RANKS = 8, XCHG_HEADER = 16 };
// Where a token's rotation comes from, a variant's template argument: SRC_TABLE, cos/sin rows by
// token; SRC_POS, the same tables, or rows picked by position ids (Params.pos), and rotating the
// first rotary_dim values only; SRC_GRID, no table: 3-D RoPE angles computed from the token's
// place on a (frames, height, width) grid.
enum RopeSource { SRC_TABLE = 0, SRC_POS = 1, SRC_GRID = 2 };
// A variant's output, its template argument: the activations' dtype; fp8 with scales; or fp8 that
// also tracks the amax of |y| (its slots cost registers the others keep for warps).
enum OutKind { OUT_SAME = 0, OUT_FP8 = 1, OUT_FP8_AMAX = 2 };
// fp8 output's format, a launch parameter (Params.out_kind).
enum Fp8Kind { FP8_E4M3 = 0, FP8_E5M2 = 1 };
enum { MAX_PAIRS = 128 };   // D / 2 for the largest head_dim

typedef struct SideParams {
    cudit_i64 in_sb, in_ss, in_hs;    // batch, sequence, head strides of the input
    cudit_i64 out_sb, out_ss, out_hs; // same for the output (equal to the input's in place)
    int heads;                  // heads on this side
    int w_dtype;                // DTypeCode of both weights
    int b_dtype;                // DTypeCode of both LayerNorm biases
    float inv_n;                // 1 / values normalised together (D or H*D)
} SideParams;

// The pointers come first and together: the host writes all of them with one store per call.
typedef struct Params {
    const void* in[2];          // 0 = Q, 1 = K: head 0 of token 0
    void* out[2];
    const void* w[2];           // norm weight (image stream), length D or H*D
    const void* w_txt[2];       // norm weight of the first num_txt tokens (dual-stream)
    const void* b[2];           // LayerNorm bias (image stream), like w; null: none
    const void* b_txt[2];       // LayerNorm bias of the first num_txt tokens
    const void* cos;
    const void* sin;
    float* stats;               // [tokens, 2] sums of squares (StatsMode variants), else null
    const void* pos;            // position ids, int32 or int64 (SRC_POS), else null
    // fp8 output variants: V of packed input, quantised by the blocks past qk_grid (null: none);
    // each side's scale (0 = Q, 1 = K, 2 = V; null: scale_val) and |y| maxima (null: none).
    const void* v_in;
    void* v_out;
    const float* scale[3];
    float* amax[3];
    SideParams side[2];         // 0 = Q, 1 = K
    SideParams v;               // V: strides and heads
    cudit_i64 cos_rb, cos_rs, cos_hs; // table strides: outer row, inner row, head (0: shared by heads)
    cudit_i64 sin_rb, sin_rs, sin_hs;
    FastDiv tab_rows;                 // R: token t reads table row t mod R
    FastDiv tab_inner;                // rows of the table's inner row axis
    FastDiv seq;                      // S: tokens per batch element
    FastDiv lanes;                    // tj as a divisor: a full-dim team's tj need not be a power of two
    cudit_u32 num_txt;                // dual-stream text tokens at the start of each batch element
    cudit_u32 total_rows;             // tokens * 2: a row is one side (Q or K) of one token
    cudit_u32 team;                   // threads per row (blockDim.x): tj * th
    cudit_u32 tj;                     // lanes along the head dim (a power of two >= lanes_d)
    cudit_u32 tj_shift;               // log2(tj) where tj is a power of two, else 0
    cudit_u32 th;                     // lanes along the heads: thread takes heads hl, hl + th, ...
    cudit_u32 iters;                  // row groups a block processes in turn
    cudit_u32 ahead;                  // rows: also ask L2 for row + ahead, a later wave's (0: no; the launcher sets it)
    int head_dim;
    int lanes_d;                // items along the head dim: D / (2 * VEC) for rotate_half, else D / VEC
    float eps;
    int tab_dtype;              // DTypeCode of cos/sin (kernels built for 16-bit tables serve f16 and bf16)
    // SRC_POS: token (b, s) reads table row pos[b * pos_sb + s * pos_ss], clamped to [0, max_pos).
    cudit_i64 pos_sb, pos_ss;
    int pos_wide;               // 1: int64 ids, 0: int32
    cudit_u32 max_pos;
    int rotary_dim;             // values of a head that rotate, from its start (SRC_POS; D otherwise)
    // SRC_GRID: token s is grid cell g = s + grid_shift - grid_first when that is below grid_count
    // (cell g = (f * H + h) * W + w), else a text token at txt_pos.
    FastDiv grid_hw, grid_w;    // H * W and W
    cudit_u32 grid_first, grid_count, grid_shift;
    cudit_u32 band1, band2;     // pairs [0, band1) turn with the frame, [band1, band2) the height, the rest the width
    float grid_origin[3];       // positions of cell (0, 0, 0) along frames, height, width
    float grid_scale[3];        // a position is (index + origin) * scale along each axis
    float txt_pos[3];
    // fp8 output: y * scale rounded once; scale[i][h * scale_hs[i]] (scale_hs 0: one a side), and
    // amax[i][h * amax_hs[i]] raised to max |y| (atomically: zeroed by the caller).
    float scale_val[3];
    int scale_hs[3], amax_hs[3];
    int out_kind;                     // Fp8Kind
    cudit_u32 qk_grid;                // blocks of Q and K rows (gridDim.x less V's blocks)
    // Blocks come in periods of `sides`: k_ratio = sides - 1 blocks of Q rows, then one of K rows.
    // Where K has fewer heads (GQA), a Q row's threads take k_ratio K rows of 1 << k_shift threads
    // (k_th head lanes), so a block takes k_ratio times Q's tokens; else k_ratio is 1 and k_shift
    // 16 (past any team), and K's rows are shaped as Q's.
    FastDiv sides;
    cudit_u32 k_ratio, k_shift, k_th;
    cudit_u32 step;                   // tokens between a block's row groups (the same on both sides)
    // V's blocks (after Q's and K's): column c = one 16-byte vector of a token's V (v_cols = Hv *
    // D / VEC of them, v_lanes = D / VEC a head), v_col_blocks blocks across them; token group g
    // of v_groups takes tokens g, g + v_groups, ...
    cudit_u32 v_cols, v_col_blocks, v_groups;
    FastDiv v_lanes;
    // STATS_EXCHANGE: every rank's exchange buffer (mapped here: symmetric memory or peer
    // access), this rank's index among them, how many there are, and the rows a rank's part of
    // a half holds (two a token the buffers have room for).
    unsigned long long xchg[MAX_RANKS];
    cudit_u32 xchg_rank, xchg_ranks, xchg_rows;
    float freq[MAX_PAIRS];      // each pair's angular frequency, radians per position
} Params;

// The backward kernel (qk_norm_rope_bwd.cu): one or both sides (Q, K) of the tokens (b, s) of one
// or two weight streams, s in [s_begin, s_begin + span) of its stream; rows are those tokens,
// b-major. Per-side fields are indexed by the launch's side: blocks [0, side_blocks) take side 0
// (Q, or the launch's one side), the rest side 1 (K).
typedef struct BwdParams {
    const void* x[2];           // the forward's input, head 0 of token 0
    const void* dy[2];          // gradient of the forward's output
    void* dx[2];                // gradient of the input (may alias dy)
    const void* w[2][2];        // [side][stream] norm weight of each stream's rows (null: RoPE only)
    const void* cos;
    const void* sin;
    float* part;                // [gridDim.x, width] fp32 partial weight gradients (null: none wanted)
    cudit_i64 x_sb[2], x_ss[2], x_hs[2];
    cudit_i64 dy_sb[2], dy_ss[2], dy_hs[2];
    cudit_i64 dx_sb[2], dx_ss[2], dx_hs[2];
    cudit_i64 cos_rb, cos_rs, cos_hs;
    cudit_i64 sin_rb, sin_rs, sin_hs;
    FastDiv tab_rows, tab_inner;      // as in Params
    // Two weight streams (dual-stream: the text tokens, then the others) in one launch: a side's
    // first split[side] blocks take stream 0's rows, the rest stream 1's (one stream: all of them).
    FastDiv span[2];                  // sequence positions a batch element has in each stream
    cudit_u32 s_begin[2];             // the first of them
    cudit_u32 rows[2];                // batch * span
    cudit_u32 split[2];
    cudit_u32 side_blocks;
    cudit_u32 seq;                    // S
    int heads;
    int tj;                           // lanes along a head: lanes_d, or the next power of two
    int th;                           // lanes along the heads: a thread takes heads hl, hl + th, ...
    int chunks;                       // ... ITEMS at a time, `chunks` times (full-dim rows: once)
    int lanes_d;                      // items along a head (D / VEC, or D / (2 * VEC) for rotate_half)
    int head_dim;
    int width;                        // the weight's length: D (per head) or heads * D (full-dim)
    int w_dtype, tab_dtype;
    float inv_n, eps;
} BwdParams;

// The backward's second pass, for each weight stream i of a call (up to two a side, both sides):
// out[i][v] = the sum over its slots of part[i][slot * width[i] + v], in order. Blocks
// [first[i], first[i + 1]) take stream i (first[streams] is the grid).
#define REDUCE_STREAMS 4
typedef struct ReduceParams {
    const float* part[REDUCE_STREAMS];
    void* out[REDUCE_STREAMS];
    int slots[REDUCE_STREAMS];
    int width[REDUCE_STREAMS];
    int out_dtype[REDUCE_STREAMS];
    int first[REDUCE_STREAMS + 1];
    int streams;
} ReduceParams;

#ifdef __cplusplus
}  // namespace cudit
#endif
