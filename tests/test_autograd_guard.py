"""cudit computes no gradient yet: a call autograd would record raises, naming the tensor,
in every PyTorch entry point (#12). On the CPU: the guard runs before the host-array check."""
import pytest

import cudit

torch = pytest.importorskip("torch")
import cudit.torch  # noqa: E402  (registers the operators)

D = 64
GUARD = r"^{}: expected a tensor autograd does not track, got one with requires_grad=True while grad mode is on"


def inputs():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, 8, 3 * 2 * D, generator=g)
    w = torch.rand(D, generator=g) + 0.5
    ang = torch.rand(8, D, generator=g) * 6.28
    return qkv, w, w.clone(), torch.cos(ang), torch.sin(ang)


CALLS = {
    "api": lambda a: cudit.qk_norm_rope(*a, num_heads=2),
    "op in place": lambda a: cudit.torch.qk_norm_rope(*a, num_heads=2),
    "op functional": lambda a: cudit.torch.qk_norm_rope(*a, num_heads=2, inplace=False),
    "op split": lambda a: cudit.torch.qk_norm_rope((a[0][..., :2 * D], a[0][..., 2 * D:4 * D]), *a[1:],
                                                   num_heads=2, inplace=False),
}


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("role,index", [("qkv", 0), ("q_weight", 1), ("k_weight", 2)])
def test_a_tracked_tensor_raises_by_name(call, role, index):
    a = list(inputs())
    a[index].requires_grad_()
    if call == "op split" and role == "qkv":
        role = "q"
    with pytest.raises(cudit.PlanError, match=GUARD.format(role)):
        CALLS[call](a)


@pytest.mark.parametrize("call", CALLS)
def test_without_grad_mode_the_guard_stays_quiet(call):
    a = list(inputs())
    a[1] = torch.nn.Parameter(a[1])
    with torch.no_grad(), pytest.raises(cudit.PlanError, match=r"expected a GPU array, got a host"):
        CALLS[call](a)


def test_the_operators_raise_under_torch_compile_too():
    a = list(inputs())
    w = torch.nn.Parameter(a[1])
    f = torch.compile(lambda x, w: cudit.torch.qk_norm_rope(x, w, w, *a[3:], num_heads=2, inplace=False),
                      fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="q_weight: expected a tensor autograd does not track"):
        f(a[0], w)
