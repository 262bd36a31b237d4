"""cudit.diffusers on a GPU: whole tiny transformers with cudit's processors against the stock
ones, eager and under torch.compile(fullgraph=True)."""
import pytest

pytest.importorskip("diffusers")

import torch  # noqa: E402

import cudit.diffusers as cd  # noqa: E402
import diffusers_models as tiny  # noqa: E402

pytestmark = pytest.mark.gpu

# fp32: one rounding (cudit) against the stock processor's fp32 steps; bf16: the stock rounds
# after the norm and after the rope, cudit once, and the difference goes through every layer.
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _cudit_calls(model) -> int:
    return sum(m.processor.cudit_calls for m in model.modules() if isinstance(getattr(m, "processor", None), cd._Processor))


def _rel_err(got, want) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("build,swapped", [(tiny.wan, 2), (tiny.flux, 2), (tiny.flux2, 1), (tiny.hunyuan_video, 2), (tiny.cosmos, 2),
                                             (tiny.ltx_video, 2), (tiny.ltx2, 2), (tiny.ltx2_gated, 2), (tiny.ltx2_split, 2),
                                             (tiny.lumina2, 3), (tiny.qwen_image, 2)])
def test_transformer_matches_the_stock_processors(build, swapped, dtype):
    model, inputs = build(dtype=dtype, device="cuda")
    want = tiny.run(model, inputs)
    assert sum(s.swapped for s in cd.enable(model)) == swapped
    got = tiny.run(model, inputs)
    assert _cudit_calls(model) == swapped          # every swapped module ran cudit, once
    assert got.dtype == want.dtype and got.shape == want.shape
    assert _rel_err(got, want) < TOL[dtype]
    cd.disable(model)
    assert torch.equal(tiny.run(model, inputs), want)


# Lumina-2's stock model does not compile fullgraph (its mask length is data-dependent).
@pytest.mark.parametrize("build", [tiny.wan, tiny.flux, tiny.hunyuan_video, tiny.qwen_image, tiny.ltx2_gated])
def test_fullgraph_compile_keeps_the_cudit_step(build):
    model, inputs = build(dtype=torch.bfloat16, device="cuda")
    cd.enable(model)
    eager = tiny.run(model, inputs)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        got = compiled(**inputs, return_dict=False)[0]
        with torch._dynamo.config.patch(error_on_recompile=True):   # the next steps reuse the graph
            again = compiled(**inputs, return_dict=False)[0]
    assert _rel_err(got, eager) < TOL[torch.bfloat16]
    assert torch.equal(again, got)


@pytest.mark.parametrize("build", [tiny.wan, tiny.flux, tiny.hunyuan_video, tiny.cosmos, tiny.lumina2, tiny.qwen_image])
def test_training_gives_the_stock_gradients(build):
    # fp32: cudit's forward and backward round once where the stock's fp32 steps round several times
    model, inputs = build(dtype=torch.float32, device="cuda")
    want = tiny.grads(model, inputs)
    cd.enable(model)
    got = tiny.grads(model, inputs)
    assert _cudit_calls(model) > 0
    tiny.assert_grads_match(got, want, 1e-3)


@pytest.mark.parametrize("build", [tiny.wan, tiny.flux])
def test_compiled_training_keeps_the_cudit_step(build):
    model, inputs = build(dtype=torch.float32, device="cuda")
    want = tiny.grads(model, inputs)
    cd.enable(model)
    compiled = torch.compile(model, fullgraph=True)
    tiny.assert_grads_match(tiny.grads(model, inputs, compiled), want, 1e-3)
