"""Autograd never gets a silently wrong gradient (#12): the calls that record none (the generic
entry point, the in-place operators) raise under autograd, naming the tensor; the functional
operators carry a backward, and the modes it lacks raise by argument. On the CPU: the guards run
before the host-array check."""
import pytest

import cudit

torch = pytest.importorskip("torch")
import cudit.torch  # noqa: E402  (registers the operators)

D = 64
GUARD = r"^{}: expected a tensor autograd does not track, got one with requires_grad=True while grad mode is on"
HOST = r"expected a GPU array, got a host"


def inputs():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, 8, 3 * 2 * D, generator=g)
    w = torch.rand(D, generator=g) + 0.5
    ang = torch.rand(8, D, generator=g) * 6.28
    return qkv, w, w.clone(), torch.cos(ang), torch.sin(ang)


def split(a):
    return (a[0][..., :2 * D], a[0][..., 2 * D:4 * D])


# Calls that record no gradient.
UNRECORDED = {
    "api": lambda a: cudit.qk_norm_rope(*a, num_heads=2),
    "op in place": lambda a: cudit.torch.qk_norm_rope(*a, num_heads=2),
    "op split in place": lambda a: cudit.torch.qk_norm_rope(split(a), *a[1:], num_heads=2),
}
FUNCTIONAL = {
    "op functional": lambda a, **kw: cudit.torch.qk_norm_rope(*a, num_heads=2, inplace=False, **kw),
    "op split": lambda a, **kw: cudit.torch.qk_norm_rope(split(a), *a[1:], num_heads=2, inplace=False, **kw),
}


@pytest.mark.parametrize("call", UNRECORDED)
@pytest.mark.parametrize("role,index", [("qkv", 0), ("q_weight", 1), ("k_weight", 2)])
def test_a_tracked_tensor_raises_by_name_where_no_gradient_is_recorded(call, role, index):
    a = list(inputs())
    a[index].requires_grad_()
    if call == "op split in place" and role == "qkv":
        role = "q"
    with pytest.raises(cudit.PlanError, match=GUARD.format(role) + ".*inplace=False"):
        UNRECORDED[call](a)


@pytest.mark.parametrize("call", FUNCTIONAL)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_functional_operators_take_tracked_tensors(call, index):
    a = list(inputs())
    a[index].requires_grad_()
    with pytest.raises(cudit.PlanError, match=HOST):   # past every guard, stopped only by the CPU tensors
        FUNCTIONAL[call](a)


NO_BACKWARD = {
    "norm": dict(norm="layer"),
    "positions": dict(positions=torch.zeros(8, dtype=torch.int32)),
    "rotary_dim": dict(rotary_dim=32),
    "rope3d": dict(rope=cudit.Rope3D((2, 2, 2), (16, 24, 24))),
    "sumsq": dict(sumsq=torch.zeros(8, 2), norm_width=2 * D),
}


@pytest.mark.parametrize("call", FUNCTIONAL)
@pytest.mark.parametrize("arg", NO_BACKWARD)
def test_a_mode_with_no_backward_raises_by_name_under_autograd(call, arg):
    a = list(inputs())
    a[1].requires_grad_()
    with pytest.raises(cudit.PlanError, match=rf"^{arg}: expected .*no backward yet"):
        FUNCTIONAL[call](a, **NO_BACKWARD[arg])
    with torch.no_grad(), pytest.raises(cudit.PlanError) as err:   # the forward's own checks only
        FUNCTIONAL[call](a, **NO_BACKWARD[arg])
    assert "no backward" not in str(err.value)


@pytest.mark.parametrize("call", FUNCTIONAL)
@pytest.mark.parametrize("arg", NO_BACKWARD)
def test_a_mode_with_no_backward_runs_when_nothing_is_tracked(call, arg):
    with pytest.raises(cudit.PlanError) as err:   # grad mode on, no tensor requires grad: the forward's checks only
        FUNCTIONAL[call](list(inputs()), **NO_BACKWARD[arg])
    assert "no backward" not in str(err.value)


@pytest.mark.parametrize("call", {**UNRECORDED, **FUNCTIONAL})
def test_without_grad_mode_the_guards_stay_quiet(call):
    a = list(inputs())
    a[1] = torch.nn.Parameter(a[1])
    with torch.no_grad(), pytest.raises(cudit.PlanError, match=HOST):
        {**UNRECORDED, **FUNCTIONAL}[call](a)


def test_the_in_place_operator_raises_under_torch_compile_too():
    a = list(inputs())
    w = torch.nn.Parameter(a[1])
    f = torch.compile(lambda x, w: cudit.torch.qk_norm_rope(x, w, w, *a[3:], num_heads=2),
                      fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="q_weight: expected a tensor autograd does not track"):
        f(a[0], w)
