"""cudit.diffusers wiring, without a GPU: which processors are swapped and why, disable, and the
calls that go back to the stock processor."""
import logging

import pytest
import torch

pytest.importorskip("diffusers")

import cudit.diffusers as cd  # noqa: E402
import diffusers_models as tiny  # noqa: E402


def test_wan_self_attention_is_swapped_and_cross_attention_kept_with_its_reason(caplog):
    model, _ = tiny.wan()
    with caplog.at_level(logging.INFO, logger="cudit.diffusers"):
        report = cd.enable(model)
    swapped = {s.name for s in report if s.swapped}
    kept = {s.name: s.why for s in report if not s.swapped}
    assert swapped == {"blocks.0.attn1", "blocks.1.attn1"}
    assert set(kept) == {"blocks.0.attn2", "blocks.1.attn2"} and all("cross-attention" in w for w in kept.values())
    assert isinstance(model.blocks[0].attn1.processor, cd.WanProcessor)
    assert not isinstance(model.blocks[0].attn2.processor, cd._Processor)
    # one line a reason, not one a module
    lines = [r.getMessage() for r in caplog.records if r.name == "cudit.diffusers"]
    assert len(lines) == 2 and any("2 x WanAttention keep the stock processor: cross-attention" in m for m in lines)


def test_flux_double_and_single_blocks_are_swapped():
    model, _ = tiny.flux()
    report = cd.enable(model)
    assert [(s.name, s.swapped) for s in report] == [("transformer_blocks.0.attn", True),
                                                      ("single_transformer_blocks.0.attn", True)]


def test_flux2_double_blocks_are_swapped_and_its_parallel_single_blocks_kept():
    model, _ = tiny.flux2()
    report = {s.name: s for s in cd.enable(model)}
    assert report["transformer_blocks.0.attn"].swapped
    assert not report["single_transformer_blocks.0.attn"].swapped
    assert "Flux2ParallelSelfAttnProcessor is not a processor cudit replaces" in report["single_transformer_blocks.0.attn"].why


@pytest.mark.parametrize("build", [tiny.cosmos, tiny.ltx_video])
def test_cosmos_and_ltx_self_attention_is_swapped_and_cross_attention_kept(build):
    model, _ = build()
    report = {s.name: s for s in cd.enable(model)}
    assert report["transformer_blocks.0.attn1"].swapped and report["transformer_blocks.1.attn1"].swapped
    assert not report["transformer_blocks.0.attn2"].swapped and "cross-attention" in report["transformer_blocks.0.attn2"].why


def test_hunyuan_video_dual_and_single_blocks_are_swapped_and_the_refiner_kept():
    model, _ = tiny.hunyuan_video()
    report = {s.name: s for s in cd.enable(model)}
    assert report["transformer_blocks.0.attn"].swapped and report["single_transformer_blocks.0.attn"].swapped
    refiner = [s for n, s in report.items() if n.startswith("context_embedder")]
    assert refiner and not any(s.swapped for s in refiner)
    assert all("is not a processor cudit replaces" in s.why for s in refiner)


def test_ltx2_self_attention_is_swapped_and_its_cross_attention_kept():
    model, _ = tiny.ltx2()
    report = {s.name: s for s in cd.enable(model)}
    assert {n for n, s in report.items() if s.swapped} == {"transformer_blocks.0.attn1", "transformer_blocks.0.audio_attn1"}
    for name in ("attn2", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn"):
        assert "cross-attention" in report[f"transformer_blocks.0.{name}"].why


def test_ltx2_split_rope_self_attention_is_swapped():
    model, _ = tiny.ltx2_split()
    report = {s.name: s for s in cd.enable(model)}
    assert {n for n, s in report.items() if s.swapped} == {"transformer_blocks.0.attn1", "transformer_blocks.0.audio_attn1"}


@pytest.mark.parametrize("build,swapped", [
    (tiny.lumina2, {"noise_refiner.0.attn", "context_refiner.0.attn", "layers.0.attn"}),
    (tiny.qwen_image, {"transformer_blocks.0.attn", "transformer_blocks.1.attn"})])
def test_lumina2_and_qwen_image_attention_is_swapped(build, swapped):
    model, _ = build()
    report = cd.enable(model)
    assert {s.name for s in report if s.swapped} == swapped == {s.name for s in report}
    assert all("complex rotations" in s.why for s in report)


def test_rotations_cudit_cannot_take_as_they_are_go_to_the_stock_processor(caplog):
    model, _ = tiny.lumina2()
    cd.enable(model)
    attn = model.layers[0].attn
    proc = attn.processor
    proc.stock = lambda *args, **kwargs: "stock"
    h = torch.randn(1, 5, attn.inner_dim)
    d = attn.inner_dim // attn.heads
    with caplog.at_level(logging.INFO, logger="cudit.diffusers"):
        assert proc(attn, h, h, None, torch.randn(1, 5, d // 2)) == "stock"
        assert proc(attn, h, h, None, torch.randn(1, 4, d // 2, dtype=torch.complex64)) == "stock"
    assert "runs its stock processor: a rotary embedding that is not complex" in caplog.text
    assert "runs its stock processor: a rotation table of another token count" in caplog.text
    assert proc.cudit_calls == 0


def test_disable_restores_the_stock_processors_and_enable_twice_swaps_once():
    model, _ = tiny.wan()
    stock = [m.processor for m in model.modules() if hasattr(m, "processor")]
    cd.enable(model)
    assert all(s.why == "already enabled" for s in cd.enable(model) if s.swapped)
    assert cd.disable(model) == 2
    assert [m.processor for m in model.modules() if hasattr(m, "processor")] == stock
    assert cd.disable(model) == 0


def test_a_pipeline_is_reached_through_its_transformers():
    class Pipe:   # what enable() reads of a pipeline: its transformer attributes
        pass

    pipe = Pipe()
    pipe.transformer, _ = tiny.wan()
    pipe.transformer_2, _ = tiny.wan(layers=1)
    assert sum(s.swapped for s in cd.enable(pipe)) == 3
    with pytest.raises(TypeError, match="expected a diffusers pipeline or a torch.nn.Module"):
        cd.enable(object())


@pytest.mark.parametrize("change,reason", [
    (lambda a: setattr(a.norm_k, "eps", 1e-5), "different eps"),
    (lambda a: setattr(a, "norm_q", torch.nn.LayerNorm(a.inner_dim)), "not RMSNorm with weights"),
])
def test_modules_cudit_cannot_serve_keep_the_stock_processor(change, reason):
    model, _ = tiny.wan(layers=1)
    change(model.blocks[0].attn1)
    report = {s.name: s for s in cd.enable(model)}
    assert not report["blocks.0.attn1"].swapped and reason in report["blocks.0.attn1"].why


def test_head_dims_outside_the_kernels_range_keep_the_stock_processor():
    model, _ = tiny.flux(head_dim=24)
    report = cd.enable(model)
    assert not any(s.swapped for s in report) and all("head_dim" in s.why for s in report)


@pytest.mark.parametrize("build", [tiny.wan, tiny.flux, tiny.hunyuan_video])
def test_calls_cudit_cannot_serve_run_the_stock_processor_and_say_why(build, caplog):
    model, inputs = build()
    expected = tiny.run(model, inputs)
    cd.enable(model)
    with caplog.at_level(logging.INFO, logger="cudit.diffusers"):
        got = tiny.run(model, inputs)                       # host tensors
    assert torch.equal(got, expected)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "runs its stock processor: host tensors" in text
    assert all(p.cudit_calls == 0 for p in (m.processor for m in model.modules() if hasattr(m, "processor"))
               if isinstance(p, cd._Processor))


def _reference_kernel(qk, q_weight, k_weight, cos=None, sin=None, **kw):
    """cudit.torch.qk_norm_rope as the float64 reference computes it, in place on host tensors."""
    from cudit.reference import qk_norm_rope_ref

    kw.pop("inplace", None)
    assert cos is None or cos.dtype in (torch.float32, torch.bfloat16, torch.float16), cos.dtype   # what cudit takes
    arrays = tuple(t.detach().cpu().numpy() if t is not None else None
                   for t in (q_weight, k_weight, cos, sin, kw.pop("q_add_weight", None), kw.pop("k_add_weight", None)))
    q, k = qk
    outs = qk_norm_rope_ref((q.float().numpy(), k.float().numpy()), *arrays[:4], q_add_weight=arrays[4],
                            k_add_weight=arrays[5], **kw)
    for t, o in zip(qk, outs):
        t.copy_(torch.from_numpy(o).to(t.dtype))
    return qk


@pytest.mark.parametrize("build", [tiny.wan, tiny.flux, tiny.flux2, tiny.hunyuan_video, tiny.cosmos,
                                   tiny.ltx_video, tiny.ltx2, tiny.ltx2_gated, tiny.ltx2_split, tiny.lumina2,
                                   tiny.qwen_image])
def test_processors_pass_the_modules_weights_tables_and_text_tokens_as_the_stock_uses_them(build, monkeypatch):
    # The kernel replaced by the float64 reference (the GPU tests check the kernel against it):
    # whole fp32 transformers then agree with the stock processors to fp32 rounding.
    model, inputs = build()
    want = tiny.run(model, inputs)
    monkeypatch.setattr(cd._Processor, "_runtime_reason", staticmethod(lambda attn, h: None))   # host tensors pass
    monkeypatch.setattr(cd.cudit_torch, "qk_norm_rope", _reference_kernel)
    cd.enable(model)
    got = tiny.run(model, inputs)
    assert sum(p.cudit_calls for p in (m.processor for m in model.modules() if hasattr(m, "processor"))
               if isinstance(p, cd._Processor)) > 0
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5


@pytest.mark.parametrize("build", [tiny.wan, tiny.flux, tiny.hunyuan_video, tiny.cosmos, tiny.lumina2, tiny.qwen_image])
def test_training_through_the_processors_gives_the_stock_gradients(build, monkeypatch):
    # The kernels replaced by the float64 reference and its gradient (the GPU tests check the
    # kernels against them): under autograd the processors take cudit's functional operator, and
    # every parameter's gradient, the norms' weights and those before them included, is the stock one.
    from reference_kernels import use_reference_kernels

    model, inputs = build()
    want = tiny.grads(model, inputs)
    use_reference_kernels(monkeypatch)
    monkeypatch.setattr(cd._Processor, "_runtime_reason", staticmethod(lambda attn, h: None))   # host tensors pass
    cd.enable(model)
    got = tiny.grads(model, inputs)
    assert sum(p.cudit_calls for p in (m.processor for m in model.modules() if hasattr(m, "processor"))
               if isinstance(p, cd._Processor)) > 0
    tiny.assert_grads_match(got, want, 1e-4)
