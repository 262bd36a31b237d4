"""Bad input fails by name before anything touches the driver, and a missing cuda-bindings,
driver or GPU each get their own message. Runs on machines with no GPU and no driver."""
from types import SimpleNamespace

import numpy as np
import pytest

import cudit
from cudit import _errors, _launch, api
from cudit.__main__ import COMMANDS, main, parser

D = 128


@pytest.fixture
def no_driver(monkeypatch):
    """Any step that would ask the driver or a stream fails the test."""
    def touched(*args, **kwargs):
        raise AssertionError("the driver was asked before the arguments were checked")

    monkeypatch.setattr(api, "driver_module", touched)
    monkeypatch.setattr(_launch, "resolve_stream", touched)
    monkeypatch.setattr(_launch, "is_capturing", touched)


def host_inputs(heads=4, d=D, dtype=np.float32):
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((2, 16, 3 * heads * d)).astype(dtype)
    w = rng.random(d, dtype=np.float32) + 0.5
    ang = rng.random((16, d)) * 6.28
    return qkv, w, w.copy(), np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


BAD = {
    "host array": (lambda i: cudit.qk_norm_rope(*i, num_heads=4), r"^qkv: expected a GPU array, got a host"),
    "num_heads": (lambda i: cudit.qk_norm_rope(*i, num_heads=5), r"^qkv: expected a last-axis width divisible"),
    "int dtype": (lambda i: cudit.qk_norm_rope(i[0].astype(np.int32), *i[1:], num_heads=4), r"^qkv: expected dtype"),
    "odd head_dim": (lambda i: cudit.qk_norm_rope(np.zeros((1, 4, 3 * 4 * 33), np.float32), None, None,
                                                  num_heads=4, eps=0.1), r"^head_dim: expected an even"),
    "weight length": (lambda i: cudit.qk_norm_rope(i[0], i[1][:64], *i[2:], num_heads=4), r"^q_weight: expected a 1-D"),
    "table rows": (lambda i: cudit.qk_norm_rope(*i[:3], i[3][:5], i[4][:5], num_heads=4), r"^cos: expected a row count"),
    "eps": (lambda i: cudit.qk_norm_rope(*i, num_heads=4, eps=-1.0), r"^eps: expected a non-negative"),
    "not an array": (lambda i: cudit.qk_norm_rope(*i[:3], "cos", i[4], num_heads=4), r"^cos: expected a GPU array"),
    "three arrays": (lambda i: cudit.qk_norm_rope((i[0], i[0], i[0]), *i[1:], num_heads=4), r"^qkv: expected one packed"),
    "num_txt_tokens": (lambda i: cudit.qk_norm_rope(*i, num_heads=4, num_txt_tokens=99), r"^num_txt_tokens: expected"),
    "k missing": (lambda i: cudit.qk_norm_rope((i[0], None), *i[1:], num_heads=4), r"^qkv: expected one packed"),
    "pair out for packed": (lambda i: cudit.qk_norm_rope(*i, num_heads=4, out=(i[0], i[0])),
                            r"^out: expected one array for packed input"),
    # tensor and sequence parallelism
    "sumsq shape": (lambda i: cudit.qk_sumsq(i[0], np.zeros((16, 2), np.float32), num_heads=4), r"^sumsq: expected shape"),
    "sumsq dtype": (lambda i: cudit.qk_sumsq(i[0], np.zeros((2, 16, 2)), num_heads=4), r"^sumsq: expected dtype f32"),
    "sumsq strides": (lambda i: cudit.qk_sumsq(i[0], np.zeros((2, 16, 4), np.float32)[..., ::2], num_heads=4),
                      r"^sumsq: expected a contiguous array"),
    "norm_width alone": (lambda i: cudit.qk_norm_rope(*i, num_heads=4, norm_width=1024), r"^norm_width: expected None"),
    "norm_width missing": (lambda i: cudit.qk_norm_rope(i[0], *full_weights(), *i[3:], num_heads=4, sumsq=sums()),
                           r"^norm_width: expected the values"),
    "norm_width small": (lambda i: cudit.qk_norm_rope(i[0], *full_weights(), *i[3:], num_heads=4, sumsq=sums(),
                                                      norm_width=2 * D), r"^norm_width: expected multiples"),
    "per-head weight with sumsq": (lambda i: cudit.qk_norm_rope(*i, num_heads=4, sumsq=sums(), norm_width=8 * D),
                                   r"^q_weight: expected this rank's full-dim weight"),
    "exchange not an Exchange": (lambda i: cudit.qk_norm_rope(i[0], *full_weights(), *i[3:], num_heads=4,
                                                              exchange=(1, 2), norm_width=8 * D),
                                 r"^exchange: expected a cudit.Exchange, got tuple"),
    "exchange too small": (lambda i: cudit.qk_norm_rope(i[0], *full_weights(), *i[3:], num_heads=4, norm_width=8 * D,
                                                        exchange=cudit.Exchange((4096, 8192), 0, 16)),
                           r"^exchange: expected buffers with room for at least the call's 32 tokens"),
    "exchange with sumsq": (lambda i: cudit.qk_norm_rope(i[0], *full_weights(), *i[3:], num_heads=4, sumsq=sums(),
                                                         norm_width=8 * D, exchange=cudit.Exchange((4096, 8192), 0, 32)),
                            r"^sumsq: expected None with exchange"),
    "rope_offset past the table": (lambda i: cudit.qk_norm_rope(*i, num_heads=4, rope_offset=1),
                                   r"^cos: expected at least rope_offset \+ S = 1 \+ 16 rows"),
    "rope_offset negative": (lambda i: cudit.qk_norm_rope(*i, num_heads=4, rope_offset=-1),
                             r"^rope_offset: expected None or a non-negative int"),
    "rope_offset without a table": (lambda i: cudit.qk_norm_rope(*i[:3], num_heads=4, rope_offset=0),
                                    r"^rope_offset: expected None without cos/sin"),
    # LayerNorm
    "norm name": (lambda i: cudit.qk_norm_rope(*i, num_heads=4, norm="batch"), r"^norm: expected 'rms' or 'layer'"),
    "bias with rms": (lambda i: cudit.qk_norm_rope(*i, num_heads=4, q_bias=i[1], k_bias=i[2]),
                      r"^q_bias: expected None with norm='rms'"),
    "layer without weights": (lambda i: cudit.qk_norm_rope(i[0], None, None, *i[3:], num_heads=4, norm="layer"),
                              r"^norm: expected 'rms' without weights"),
    "bias length": (lambda i: cudit.qk_norm_rope(*i, num_heads=4, norm="layer", q_bias=i[1][:64], k_bias=i[2]),
                    r"^q_bias: expected a bias shaped like q_weight"),
    "one bias": (lambda i: cudit.qk_norm_rope(*i, num_heads=4, norm="layer", q_bias=i[1]),
                 r"^k_bias: expected biases for Q and K together"),
}


def full_weights(heads=4):
    w = np.ones(heads * D, np.float32)
    return w, w.copy()


def sums():
    return np.zeros((2, 16, 2), np.float32)


@pytest.mark.parametrize("case", BAD)
def test_bad_host_input_is_named_without_a_driver(no_driver, case):
    call, message = BAD[case]
    with pytest.raises(cudit.PlanError, match=message):
        call(host_inputs())


def test_missing_cuda_bindings_names_the_extras(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "cuda.bindings", None)
    with pytest.raises(_errors.CudaUnavailableError, match=r"cudit\[cu12\].*cudit\[cu13\]"):
        _errors.driver_module()
    assert "cudit[cu12]" in _errors.cuda_problem()


def fake_driver(init=None, count=1):
    ok, no_device = "ok", "no_device"
    result = SimpleNamespace(CUDA_SUCCESS=ok, CUDA_ERROR_NO_DEVICE=no_device)

    def cu_init(flags):
        if init is not None:
            raise init
        return (ok if count else no_device,)
    return SimpleNamespace(CUresult=result, cuInit=cu_init, cuDeviceGetCount=lambda: (ok, count))


@pytest.mark.parametrize("driver,message", [
    (fake_driver(init=RuntimeError("libcuda.so.1 not found")), r"^no NVIDIA driver: libcuda could not be loaded"),
    (fake_driver(count=0), r"^no GPU: the NVIDIA driver is installed but sees no CUDA device"),
    (fake_driver(), None),
])
def test_no_driver_and_no_gpu_are_told_apart(monkeypatch, driver, message):
    monkeypatch.setattr(_errors, "driver_module", lambda: driver)
    got = _errors.cuda_problem()
    assert got is None if message is None else __import__("re").match(message, got), got


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in COMMANDS)


def test_main_job_without_a_gpu_says_why_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(_errors, "cuda_problem", lambda: "no GPU: the NVIDIA driver is installed but sees no CUDA device")
    assert main([]) == 1
    out = capsys.readouterr().out.strip()
    assert out == "cudit: cannot run 'check' here: no GPU: the NVIDIA driver is installed but sees no CUDA device"
    assert main(["info"]) == 0 and "shipped:" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bogus"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err
