"""The float64 oracle against cases worked by hand."""
import math

import numpy as np
import pytest

from cudit.reference import qk_norm_rope_ref

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
