"""torch.compile of a small SNN (pixel-input SpikeConv2d encoding layer -> LIF -> SpikeConv2d -> LIF ->
flatten -> SpikeLinear) on CPU with the cpp backend: outputs equal to eager, weight gradients equal
to eager and to a float64 torch reference with dense_weight_grad both ways, and the input_kind
decision ("auto") made before tracing or refused with a clear error."""
import copy

import pytest
import torch
import torch.nn as nn

import snnsparse as ss
from conftest import assert_close64, mask

pytestmark = pytest.mark.skipif(ss.backends.available()["cpp"] is not True,
                                reason=f"cpp backend unavailable: {ss.backends.available()['cpp']}")

T, B, H = 3, 2, 6
KINDS = {"explicit": ("analog", "spikes", "spikes"), "auto": ("auto", "auto", "auto")}


def _snn(kinds, dwg, gen):
    """The model (float64, cpp kernels, masks of density 0.5), and its float64 torch twin: the same
    weights and masks with backend="dense" Spike* layers and reference LIF neurons."""
    torch.manual_seed(gen.initial_seed())  # the biases' default init: replayable from the printed seed
    f64 = dict(dtype=torch.float64, backend="cpp")
    model = nn.Sequential(ss.nn.SpikeConv2d(1, 4, 3, padding=1, input_kind=kinds[0], **f64), ss.nn.LIF(v_threshold=0.5),
                          ss.nn.SpikeConv2d(4, 6, 3, padding=1, input_kind=kinds[1], **f64), ss.nn.LIF(v_threshold=0.5),
                          nn.Flatten(2), ss.nn.SpikeLinear(6 * H * H, 5, input_kind=kinds[2], **f64))
    for layer in _spike_layers(model):
        layer.set_mask(mask(layer.weight.shape, 0.5, gen))
        layer.dense_weight_grad = dwg
        with torch.no_grad():  # N(0.5, 1): over 400 seeds both LIF layers fired at rates 0.02-0.98
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64) + 0.5)
    twin = copy.deepcopy(model)
    for layer in twin:
        if isinstance(layer, (ss.nn.SpikeConv2d, ss.nn.SpikeLinear, ss.nn.LIF)):
            layer.backend = "dense" if hasattr(layer, "input_kind") else "reference"
    return model, twin


def _spike_layers(model):
    return [m for m in model if hasattr(m, "input_kind")]


def _run(model, x, g, fn=None):
    """Output and weight / bias gradients of sum(fn(x) * g); fn is the model or its compiled form."""
    model.zero_grad(set_to_none=True)
    out = (fn or model)(x)
    (out * g).sum().backward()
    return out.detach(), [(m.weight.grad, m.bias.grad) for m in _spike_layers(model)]


def _inputs(gen):
    x = torch.rand(T, B, 1, H, H, generator=gen, dtype=torch.float64)  # pixels, repeated over T
    g = torch.randn(T, B, 5, generator=gen, dtype=torch.float64)
    return x, g


def _check_rates(model, x):
    with torch.no_grad():
        s1 = model[1](model[0](x))
        s2 = model[3](model[2](s1))
    for s in (s1, s2):
        assert 0 < float(s.mean()) < 1, f"firing rate {float(s.mean()):.3f}: the test would not exercise the LIF"


@pytest.mark.slow  # 10-50 s per case with a cold inductor cache on 2 cores
@pytest.mark.parametrize("dwg", [False, True])
@pytest.mark.parametrize("kinds", ["explicit", "auto"])
def test_compiled_snn_equals_eager_and_reference(rng, kinds, dwg):
    torch._dynamo.reset()
    model, twin = _snn(KINDS[kinds], dwg, rng)
    x, g = _inputs(rng)
    ref_out, ref_grads = _run(twin, x, g)
    eager_out, eager_grads = _run(model, x, g)  # for "auto": this eager forward makes the decision
    assert [m.input_decision for m in _spike_layers(model)] == ["analog", "spikes", "spikes"]
    _check_rates(model, x)
    compiled = torch.compile(model, fullgraph=True)
    for _ in range(2):  # the second call runs the cached graph
        comp_out, comp_grads = _run(model, x, g, compiled)
        assert_close64(eager_out, ref_out, rtol=1e-10, atol=1e-10)
        assert_close64(comp_out, eager_out, rtol=1e-10, atol=1e-10)
        for i, ((wr, br), (we, be), (wc, bc)) in enumerate(zip(ref_grads, eager_grads, comp_grads)):
            assert_close64(we, wr, rtol=1e-9, atol=1e-9, msg=f"layer {i}: eager weight grad vs reference")
            assert_close64(wc, we, rtol=1e-9, atol=1e-9, msg=f"layer {i}: compiled weight grad vs eager")
            assert_close64(bc, be, rtol=1e-9, atol=1e-9, msg=f"layer {i}: compiled bias grad vs eager")
        for layer, (wc, _) in zip(_spike_layers(model), comp_grads):
            pruned = ~layer.weight_mask
            assert bool(wc[pruned].ne(0).any()) == dwg, "dense_weight_grad must reach pruned synapses exactly when set"
    assert [m.last_input_binary for m in _spike_layers(model)] == [False, True, True]


def test_compile_refuses_an_undecided_auto_layer_with_fullgraph(rng):
    torch._dynamo.reset()
    model, twin = _snn(KINDS["auto"], False, rng)
    x, g = _inputs(rng)
    twin(x)  # loads the backends eagerly: their first import is not traceable
    model[2].input_kind, model[5].input_kind = "spikes", "spikes"
    with pytest.raises(Exception, match=r"(?s)input_kind='auto' has not decided yet.*run one eager forward"):
        torch.compile(model, fullgraph=True)(x)
    assert model[0].input_decision is None


@pytest.mark.slow
def test_compile_without_fullgraph_decides_auto_eagerly(rng):
    # Without fullgraph, dynamo runs the undecided layer's frame eagerly (the decision is made there),
    # and later calls trace the decided layer.
    torch._dynamo.reset()
    model, twin = _snn(KINDS["auto"], False, rng)
    x, g = _inputs(rng)
    ref_out, _ = _run(twin, x, g)
    compiled = torch.compile(model)
    for _ in range(2):
        with torch.no_grad():
            assert_close64(compiled(x), ref_out, rtol=1e-10, atol=1e-10)
        assert [m.input_decision for m in _spike_layers(model)] == ["analog", "spikes", "spikes"]


@pytest.mark.slow  # 35 s with a cold inductor cache (its C++ compile)
def test_compiled_spikes_layer_refuses_pixels(rng):
    # Never a silent dense rerun, compiled or not: the kernel's own check raises at run time.
    torch._dynamo.reset()
    model, twin = _snn(("spikes", "spikes", "spikes"), False, rng)
    x, _ = _inputs(rng)
    twin(x)  # loads the backends eagerly
    with pytest.raises(ValueError, match="spikes must be binary"):
        model(x)
    with pytest.raises(ValueError, match="spikes must be binary"):
        torch.compile(model, fullgraph=True)(x)
