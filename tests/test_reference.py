"""The float64 oracle against cases worked by hand."""
import math
import zlib

import numpy as np
import pytest

from cudit.reference import qk_norm_rope_ref, qk_norm_rope_ref_vjp, qk_sumsq_ref

R = 1 / math.sqrt(12.5)   # RMS of (3, 4) is sqrt(12.5)


def test_per_head_norm_hand_worked():
    q = np.array([[3.0, 4.0, 0.0, 2.0]])          # one token, 2 heads of D=2
    k = np.array([[1.0, 1.0]])                    # one token, 1 head
    qo, ko = qk_norm_rope_ref((q, k), np.array([1.0, 2.0]), np.array([1.0, 1.0]),
                              num_heads=(2, 1), eps=0.0)
    # head 0: (3, 4) / sqrt(12.5) * (1, 2); head 1: (0, 2) / sqrt(2) * (1, 2)
    np.testing.assert_allclose(qo, [[3 * R, 8 * R, 0.0, 4 / math.sqrt(2)]])
    np.testing.assert_allclose(ko, [[1.0, 1.0]])


def test_full_dim_norm_uses_all_heads_and_eps_inside_root():
    q = np.array([[3.0, 4.0, 0.0, 0.0]])          # RMS over all 4 values: sqrt(25 / 4)
    w = np.array([1.0, 1.0, 1.0, 2.0])
    qo, _ = qk_norm_rope_ref((q, q), w, w, num_heads=2, eps=0.75)
    r = 1 / math.sqrt(25 / 4 + 0.75)
    np.testing.assert_allclose(qo, [[3 * r, 4 * r, 0.0, 0.0]])


def test_interleaved_rope_rotates_adjacent_pairs():
    q = np.array([[1.0, 2.0, 3.0, 4.0]])          # 1 head, D=4
    cos = np.array([[0.0, 0.0, 1.0, 1.0]])        # pair 0 by 90 degrees, pair 1 not at all
    sin = np.array([[1.0, 1.0, 0.0, 0.0]])
    qo, _ = qk_norm_rope_ref((q, q), None, None, cos, sin, num_heads=1)
    np.testing.assert_allclose(qo, [[-2.0, 1.0, 3.0, 4.0]])


def test_rotate_half_pairs_i_with_i_plus_half():
    q = np.array([[1.0, 2.0, 3.0, 4.0]])          # pairs (1, 3) and (2, 4)
    cos = np.array([[0.0, 1.0, 0.0, 1.0]])
    sin = np.array([[1.0, 0.0, 1.0, 0.0]])
    qo, _ = qk_norm_rope_ref((q, q), None, None, cos, sin, num_heads=1, interleave=False)
    np.testing.assert_allclose(qo, [[-3.0, 2.0, 1.0, 4.0]])


def test_half_head_tables_give_values_i_and_i_plus_half_one_entry():
    rng = np.random.default_rng(5)
    b, s, h, d = 2, 3, 2, 8
    x = rng.standard_normal((b, s, h, d))
    cos, sin = rng.standard_normal((2, b, s, h, d // 2))      # [B, S, H, D/2], as LTX-2's split RoPE
    qo, _ = qk_norm_rope_ref((x, x), None, None, cos, sin, interleave=False)
    lo, hi = x[..., :d // 2], x[..., d // 2:]                   # LTX-2's formula, worked here
    np.testing.assert_allclose(qo, np.concatenate([lo * cos - hi * sin, hi * cos + lo * sin], axis=-1))
    dq, _ = qk_norm_rope_ref_vjp((x, x), (x, x), None, None, cos, sin, interleave=False)[0]
    whole = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
    np.testing.assert_allclose(dq, qk_norm_rope_ref_vjp((x, x), (x, x), None, None, *whole, interleave=False)[0][0])


def test_rope_reads_each_elements_own_table_index():
    q = np.array([[1.0, 1.0]])
    cos = np.array([[2.0, 3.0]])
    sin = np.array([[5.0, 7.0]])
    qo, _ = qk_norm_rope_ref((q, q), None, None, cos, sin, num_heads=1)
    # out0 = 1*2 - 1*5, out1 = 1*3 + 1*7
    np.testing.assert_allclose(qo, [[-3.0, 10.0]])


def test_dual_stream_text_tokens_of_every_batch_element_use_add_weights():
    q = np.ones((2, 3, 2))                        # B=2, S=3, one head of D=2
    w, w_add = np.array([2.0, 2.0]), np.array([5.0, 5.0])
    qo, _ = qk_norm_rope_ref((q, q), w, w, num_heads=1, q_add_weight=w_add, k_add_weight=w_add,
                             num_txt_tokens=1, eps=0.0)
    assert np.all(qo[:, 0] == 5.0) and np.all(qo[:, 1:] == 2.0)


def test_table_rows_broadcast_over_batch():
    q = np.ones((2, 2, 2))                        # B=2, S=2, D=2
    cos = np.array([[0.0, 0.0], [1.0, 1.0]])      # one row per position, shared by the batch
    sin = np.array([[1.0, 1.0], [0.0, 0.0]])
    qo, _ = qk_norm_rope_ref((q, q), None, None, cos, sin, num_heads=1)
    np.testing.assert_allclose(qo[:, 0], [[-1.0, 1.0]] * 2)
    np.testing.assert_allclose(qo[:, 1], [[1.0, 1.0]] * 2)


def test_packed_leaves_v_and_handles_gqa():
    x = np.arange(1, 9, dtype=np.float64).reshape(1, 8)    # Hq=2, Hk=1, Hv=1, D=2
    out = qk_norm_rope_ref(x, None, None, np.zeros((1, 2)), np.ones((1, 2)), num_heads=(2, 1, 1))
    np.testing.assert_allclose(out, [[-2, 1, -4, 3, -6, 5, 7, 8]])


@pytest.mark.parametrize("ndim", [2, 3, 4])
def test_layouts_agree(ndim):
    rng = np.random.default_rng(1)
    b, s, h, d = 2, 3, 2, 4
    x4 = rng.standard_normal((b, s, 3 * h, d))
    w = rng.uniform(0.5, 1.5, d)
    cos, sin = rng.standard_normal((s, d)), rng.standard_normal((s, d))
    ref = qk_norm_rope_ref(x4, w, w, cos, sin, num_heads=h)
    x = {2: x4.reshape(b * s, -1), 3: x4.reshape(b, s, -1), 4: x4}[ndim]
    got = qk_norm_rope_ref(x, w, w, cos, sin, num_heads=h, seq_len=s if ndim == 2 else None)
    np.testing.assert_allclose(got.reshape(ref.shape), ref)
    np.testing.assert_array_equal(got.reshape(ref.shape)[:, :, 2 * h:], x4[:, :, 2 * h:])


# ------------------------------------------------------------ gradients against finite differences

def _numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar f() with respect to every element of x (changed in place)."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        hi = f()
        flat[i] = old - eps
        lo = f()
        flat[i] = old
        gflat[i] = (hi - lo) / (2 * eps)
    return g


def _loss(out, dout):
    if isinstance(out, tuple):
        return sum(float(np.sum(o * g)) for o, g in zip(out, dout))
    return float(np.sum(out * dout))


@pytest.mark.parametrize("case", ["packed-head-interleaved", "packed-full-half", "split-gqa-head-dual",
                                  "split-full-dual-perhead-table", "norm-only", "rope-only-4d-table",
                                  "packed-2d-seq-len-batch-table"])
def test_gradients_match_finite_differences(case):
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    b, s, d = 2, 3, 8
    kw = dict(eps=1e-3, interleave="half" not in case)
    w = lambda n: rng.uniform(0.5, 1.5, n)   # noqa: E731
    tab = lambda *shape: (np.cos(a := rng.uniform(0, 6.3, shape)), np.sin(a))   # noqa: E731
    if case.startswith("packed"):
        hq, hk, hv = 2, 2, 1
        x = rng.normal(size=(b, s, (hq + hk + hv) * d)) if "2d" not in case else rng.normal(size=(b * s, 5 * d))
        full = "full" in case
        args = [x, w(hq * d if full else d), w(hk * d if full else d)]
        kw.update(num_heads=(hq, hk, hv))
        if "2d" in case:
            kw.update(seq_len=s)
        args += list(tab(s, d) if "batch-table" not in case else tab(b, s, d))
    else:
        hq, hk = (4, 2) if "gqa" in case else (2, 2)
        x = (rng.normal(size=(b, s, hq * d)), rng.normal(size=(b, s, hk * d)))
        full = "full" in case
        qw, kw_ = (None, None) if "rope-only" in case else (w(hq * d if full else d), w(hk * d if full else d))
        args = [x, qw, kw_]
        if "norm-only" in case:
            args += [None, None]
        elif "perhead-table" in case:
            args += list(tab(b * s, hq * d))
        elif "4d-table" in case:
            args += list(tab(b, s, 1, d))
        else:
            args += list(tab(s, d))
        kw.update(num_heads=(hq, hk))
        if "dual" in case:
            kw.update(q_add_weight=w(np.size(qw)), k_add_weight=w(np.size(kw_)), num_txt_tokens=1)
    out = qk_norm_rope_ref(*args, **kw)
    dout = tuple(rng.normal(size=o.shape) for o in out) if isinstance(out, tuple) else rng.normal(size=out.shape)
    dx, dqw, dkw, dqa, dka = qk_norm_rope_ref_vjp(args[0], dout, *args[1:], **kw)

    def f():
        return _loss(qk_norm_rope_ref(*args, **kw), dout)

    inputs = list(args[0]) if isinstance(args[0], tuple) else [args[0]]
    grads = list(dx) if isinstance(dx, tuple) else [dx]
    for t, g in zip(inputs, grads):
        np.testing.assert_allclose(g, _numeric_grad(f, t), rtol=1e-5, atol=1e-7)
    for t, g in ((args[1], dqw), (args[2], dkw), (kw.get("q_add_weight"), dqa), (kw.get("k_add_weight"), dka)):
        assert (t is None) == (g is None)
        if t is not None:
            np.testing.assert_allclose(g, _numeric_grad(f, t), rtol=1e-5, atol=1e-7)


def test_gradient_of_v_passes_through_and_tables_get_none():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1, 2, 3 * 8))
    dout = rng.normal(size=x.shape)
    c, s = np.cos(rng.uniform(0, 6.3, (2, 8))), np.sin(rng.uniform(0, 6.3, (2, 8)))
    dx, *dws = qk_norm_rope_ref_vjp(x, dout, None, None, c, s, num_heads=1)
    np.testing.assert_array_equal(dx[..., 16:], dout[..., 16:])
    assert dws == [None] * 4


def _wan_like(rng, heads=6, d=8, b=2, s=5):
    qkv = rng.standard_normal((b, s, 3 * heads * d))
    qw, kw = rng.uniform(0.5, 1.5, heads * d), rng.uniform(0.5, 1.5, heads * d)
    ang = rng.uniform(0, 6, (s, d // 2)).repeat(2, axis=-1)
    return qkv, qw, kw, np.cos(ang), np.sin(ang)


def test_tensor_parallel_ranks_recompose_the_whole():
    heads, d = 6, 8
    qkv, qw, kw, cos, sin = _wan_like(np.random.default_rng(1), heads, d)
    whole = qk_norm_rope_ref(qkv, qw, kw, cos, sin, num_heads=heads).reshape(2, 5, 3, heads, d)
    x = qkv.reshape(2, 5, 3, heads, d)
    groups = ([0, 1, 2], [3, 4], [5])   # uneven ranks
    local = [x[:, :, :, g].reshape(2, 5, -1) for g in groups]
    total = sum(qk_sumsq_ref(t, num_heads=len(g)) for t, g in zip(local, groups))
    np.testing.assert_allclose(total, qk_sumsq_ref(qkv, num_heads=heads))
    for t, g in zip(local, groups):
        cols = slice(g[0] * d, (g[-1] + 1) * d)
        got = qk_norm_rope_ref(t, qw[cols], kw[cols], cos, sin, num_heads=len(g), sumsq=total,
                               norm_width=heads * d).reshape(2, 5, 3, len(g), d)
        np.testing.assert_allclose(got, whole[:, :, :, g], rtol=1e-12)


def test_rope_offset_reads_the_rows_a_slice_would():
    qkv, qw, kw, cos, sin = _wan_like(np.random.default_rng(2), s=6)
    whole = qk_norm_rope_ref(qkv, qw, kw, cos, sin, num_heads=6)
    for start in (0, 3):
        part = qk_norm_rope_ref(qkv[:, start:start + 3], qw, kw, cos, sin, num_heads=6, rope_offset=start)
        np.testing.assert_array_equal(part, whole[:, start:start + 3])


def test_layer_norm_subtracts_the_mean_and_adds_the_bias():
    x = np.array([[1.0, 3.0]])                    # one token, one head, D=2: mean 2, var 1
    w, b = np.array([2.0, 3.0]), np.array([0.5, -0.5])
    qo, _ = qk_norm_rope_ref((x, x), w, w, num_heads=1, eps=0.0, norm="layer", q_bias=b, k_bias=b)
    np.testing.assert_allclose(qo, [[-2.0 + 0.5, 3.0 - 0.5]])


def test_layer_norm_full_dim_and_text_tokens_use_their_own_bias():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 2 * 4))          # 3 tokens, 2 heads of D=4, full-dim
    w, wa = rng.uniform(0.5, 1.5, 8), rng.uniform(0.5, 1.5, 8)
    b, ba = rng.standard_normal(8), rng.standard_normal(8)
    qo, _ = qk_norm_rope_ref((x, x), w, w, num_heads=2, norm="layer", q_bias=b, k_bias=b, q_add_weight=wa,
                             k_add_weight=wa, q_add_bias=ba, k_add_bias=ba, num_txt_tokens=1)
    z = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(qo[0, 0], z[0, 0] * wa + ba)
    np.testing.assert_allclose(qo[0, 1:], z[0, 1:] * w + b)


def test_partial_rotary_rotates_the_first_values_only():
    q = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])        # 1 head, D=6; rotary_dim 4
    cos = np.array([[0.0, 0.0, 0.0, 0.0]])                # 90 degrees
    sin = np.array([[1.0, 1.0, 1.0, 1.0]])
    qi, _ = qk_norm_rope_ref((q, q), None, None, cos, sin, num_heads=1)
    np.testing.assert_allclose(qi, [[-2.0, 1.0, -4.0, 3.0, 5.0, 6.0]])
    qh, _ = qk_norm_rope_ref((q, q), None, None, cos, sin, num_heads=1, interleave=False)
    np.testing.assert_allclose(qh, [[-3.0, -4.0, 1.0, 2.0, 5.0, 6.0]])   # pairs (0, 2), (1, 3)


def test_positions_pick_table_rows_and_clamp():
    q = np.ones((4, 2))                                   # 4 tokens, 1 head, D=2
    ang = np.array([0.1, 0.2, 0.3])                       # max_pos 3
    cos, sin = np.repeat(np.cos(ang)[:, None], 2, 1), np.repeat(np.sin(ang)[:, None], 2, 1)
    qo, _ = qk_norm_rope_ref((q, q), None, None, cos, sin, num_heads=1, positions=np.array([2, 0, -5, 9]))
    want = [ang[2], ang[0], ang[0], ang[2]]               # -5 -> row 0, 9 -> row 2
    np.testing.assert_allclose(qo[:, 0], [math.cos(a) - math.sin(a) for a in want])


def test_rope3d_turns_each_band_by_its_axis_position():
    import cudit

    rope = cudit.Rope3D((2, 2, 3), (2, 2, 4), theta=(10.0, 100.0, 1000.0), offset=(0, 0, 5), text_tokens=1)
    d, seq = 8, 13                                        # text token first, then 12 cells
    x = np.tile(np.array([1.0, 0.0]), d // 2)[None, :].repeat(seq, 0)   # every pair (1, 0): out = (cos, sin)
    qo, _ = qk_norm_rope_ref((x, x), None, None, num_heads=1, rope=rope)
    np.testing.assert_allclose(qo[0], x[0])              # the text token, at position 0: unchanged
    f, h, w = 1, 0, 2                                     # token 1 + 8 = cell 8 of a 2 x 2 x 3 grid
    assert (f * 2 + h) * 3 + w == 8
    freqs = [1.0, 1.0, 1.0, 1000.0 ** -0.5]               # pair 0: frames, pair 1: height, pairs 2-3: width
    pos = [f, h, w + 5, w + 5]
    angle = [np.float32(np.float32(p) * np.float32(fr)) for p, fr in zip(pos, freqs)]
    assert np.allclose(rope.frequencies(), freqs)
    np.testing.assert_allclose(qo[9], np.ravel([[math.cos(a), math.sin(a)] for a in angle]), rtol=1e-12)


def test_fp8_quantisation_rounds_to_nearest_even_saturates_and_keeps_nan():
    from cudit.reference import quantize_fp8

    # e4m3fn: 3 mantissa bits; 1.0625 sits halfway between 1 and 1.125 (ties to even: 1), 1.1875
    # halfway between 1.125 and 1.25 (to 1.25); past 448 saturates, below 2^-6 subnormal steps of 2^-9.
    x = np.array([1.0625, 1.1875, -1.0625, 460.0, 1e6, -1e6, 2.0**-9 * 1.5, 2.0**-10, 0.0, np.nan])
    got = quantize_fp8(x, 1.0)
    want = [1.0, 1.25, -1.0, 448.0, 448.0, -448.0, 2.0**-8, 0.0, 0.0, np.nan]
    np.testing.assert_array_equal(got, want)
    # the scale multiplies before rounding; e5m2: 2 mantissa bits, largest finite 57344
    np.testing.assert_array_equal(quantize_fp8(np.array([0.3, 1e9]), 10.0, "float8_e5m2"), [3.0, 57344.0])
    # one value a head along axis -2
    y = np.ones((2, 3, 4))
    assert quantize_fp8(y, np.array([1.0, 2.0, 4.0])[:, None]).tolist() == (y * [[1], [2], [4]]).tolist()
