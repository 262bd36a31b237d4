"""cudit.torch's autograd wiring on the CPU: the kernels replaced by the float64 reference (forward
and gradients), so that what is checked is the plumbing: which gradients reach which inputs,
trailing defaults, split and packed, dual-stream, and torch.library.opcheck's registration checks."""
import pytest

torch = pytest.importorskip("torch")
import cudit.torch  # noqa: E402
from reference_kernels import use_reference_kernels  # noqa: E402

D = 32


@pytest.fixture(autouse=True)
def reference_kernels(monkeypatch):
    use_reference_kernels(monkeypatch)


def plain(x, qw, kw, cos, sin, heads, qa=None, ka=None, n_txt=0):
    """The same forward in torch ([B, S, H*D] sides, per-head norm, interleaved)."""
    def side(t, w, wa, h):
        t = t.unflatten(-1, (h, D))
        r = torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6)
        wt = w.expand(t.shape).clone() if wa is None else torch.cat(
            (wa.expand(t[:, :n_txt].shape), w.expand(t[:, n_txt:].shape)), 1)
        y = t * r * wt
        a, b = y[..., 0::2], y[..., 1::2]
        c, s = cos[None, :, None], sin[None, :, None]
        return torch.stack((a * c[..., 0::2] - b * s[..., 0::2], b * c[..., 1::2] + a * s[..., 1::2]), -1).flatten(-3)
    return side(x[0], qw, qa, heads[0]), side(x[1], kw, ka, heads[1])


def inputs(heads=(2, 2), s=6, dual=False):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, s, heads[0] * D, generator=g, dtype=torch.float64).requires_grad_()
    k = torch.randn(1, s, heads[1] * D, generator=g, dtype=torch.float64).requires_grad_()
    w = [(torch.rand(D, generator=g, dtype=torch.float64) + 0.5).requires_grad_() for _ in range(4 if dual else 2)]
    ang = torch.rand(s, D // 2, generator=g, dtype=torch.float64) * 6.28
    return (q, k), w, torch.cos(ang).repeat_interleave(2, -1), torch.sin(ang).repeat_interleave(2, -1)


@pytest.mark.parametrize("dual", [False, True])
def test_split_gradients_reach_each_input(dual):
    (q, k), w, cos, sin = inputs(heads=(4, 2), dual=dual)
    extra = dict(q_add_weight=w[2], k_add_weight=w[3], num_txt_tokens=2) if dual else {}
    out = cudit.torch.qk_norm_rope((q, k), w[0], w[1], cos, sin, num_heads=(4, 2), inplace=False, **extra)
    dy = [torch.randn_like(o) for o in out]
    got = torch.autograd.grad(out, (q, k, *w), dy)
    want = torch.autograd.grad(plain((q, k), w[0], w[1], cos, sin, (4, 2), *(w[2:] or (None, None)),
                                     n_txt=2 if dual else 0), (q, k, *w), dy)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)


def test_packed_gradients_and_the_v_part():
    (q, k), w, cos, sin = inputs()
    v = torch.randn_like(q)
    qkv = torch.cat((q, k, v), -1).detach().requires_grad_()
    out = cudit.torch.qk_norm_rope(qkv, w[0], w[1], cos, sin, num_heads=2, inplace=False)
    dy = torch.randn_like(out)
    gx, gq, gk = torch.autograd.grad(out, (qkv, w[0], w[1]), dy)
    q2, k2 = (t.detach().requires_grad_() for t in (qkv[..., :2 * D], qkv[..., 2 * D:4 * D]))
    want = torch.autograd.grad(plain((q2, k2), w[0], w[1], cos, sin, (2, 2)), (q2, k2, w[0], w[1]),
                               (dy[..., :2 * D], dy[..., 2 * D:4 * D]))
    torch.testing.assert_close(gx, torch.cat((want[0], want[1], dy[..., 4 * D:]), -1))   # V's passes through
    torch.testing.assert_close(gq, want[2])
    torch.testing.assert_close(gk, want[3])


def test_only_the_gradients_asked_for_are_computed():
    (q, k), w, cos, sin = inputs()
    w[1].requires_grad_(False)
    q2 = q.detach()   # no gradient for Q's data
    out = cudit.torch.qk_norm_rope((q2, k), w[0], w[1], cos, sin, num_heads=2, inplace=False)
    sum(o.sum() for o in out).backward()
    assert q2.grad is None and w[1].grad is None and k.grad is not None and w[0].grad is not None


def test_opcheck_passes_with_autograd():
    (q, k), w, cos, sin = inputs()
    qkv = torch.cat((q, k, torch.randn_like(q)), -1).detach().requires_grad_()
    torch.library.opcheck(torch.ops.cudit.qk_norm_rope.default, (qkv, w[0], w[1], cos, sin, [2]))
    torch.library.opcheck(torch.ops.cudit.qk_norm_rope_split.default, (q, k, w[0], w[1], cos, sin, [2, 2]))
