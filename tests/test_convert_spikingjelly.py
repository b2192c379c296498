"""ss.nn.convert on SpikingJelly models (layer.Conv2d / layer.Linear in step modes "m" and "s",
layer.SeqToANNContainer, neuron.LIFNode): same outputs as the original, weights and masks kept."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

import snnsparse as ss
from conftest import assert_close64, mask

sj = pytest.importorskip("spikingjelly.activation_based", reason="spikingjelly 2.0 is a test dependency")
from spikingjelly.activation_based import functional as sjf, layer, neuron, surrogate  # noqa: E402


def _sj_model(step_mode):
    return nn.Sequential(
        layer.Conv2d(2, 8, 3, padding=1, bias=False, step_mode=step_mode),
        layer.BatchNorm2d(8, step_mode=step_mode),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True, step_mode=step_mode),
        layer.MaxPool2d(2, step_mode=step_mode),
        layer.Conv2d(8, 8, 3, padding=1, groups=2, step_mode=step_mode),
        neuron.LIFNode(tau=4.0 / 3.0, v_reset=None, decay_input=False, surrogate_function=surrogate.Sigmoid(alpha=3.0),
                       step_mode=step_mode),
        layer.Flatten(step_mode=step_mode),
        layer.Linear(8 * 4 * 4, 5, step_mode=step_mode),
        neuron.LIFNode(step_mode=step_mode),
    )


def _run(model, x, step_mode):
    """Output and the spikes of every neuron layer (by index), reset first."""
    sjf.reset_net(model)
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: seen.setdefault(k, []).append(o))
             for k, m in enumerate(model) if "LIF" in type(m).__name__]
    out = model(x) if step_mode == "m" else torch.stack([model(xt) for xt in x])
    for h in hooks:
        h.remove()
    return out, {k: torch.cat(v) for k, v in seen.items()}


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_convert_spikingjelly_model(rng, step_mode):
    torch.manual_seed(rng.initial_seed())
    model = _sj_model(step_mode)
    with torch.no_grad():  # strong enough weights that every layer fires sometimes
        for i in (4, 7):
            model[i].weight.mul_(6.0)
    prune.custom_from_mask(model[4], "weight", mask(model[4].weight.shape, 0.5, rng))
    model.eval()
    x = torch.rand(4, 3, 2, 8, 8, generator=rng) * 3
    with torch.no_grad():
        ref, ref_spikes = _run(model, x, step_mode)
    conv = ss.nn.convert(copy.deepcopy(model))
    kinds = [type(m).__name__ for m in conv]
    assert kinds.count("SpikeConv2d") == 2 and kinds.count("SpikeLinear") == 1 and kinds.count("LIF") == 3
    assert torch.equal(conv[4].weight_mask, model[4].weight_mask.bool())
    assert conv[5].v_reset is None and conv[5].surrogate == "sigmoid" and conv[5].alpha == 3.0
    with torch.no_grad():
        out, spikes = _run(conv, x, step_mode)
    assert 0 < ref_spikes[2].mean() < 1, "the first neuron layer must fire sometimes"
    assert torch.equal(out, ref)
    for k in ref_spikes:
        assert torch.equal(spikes[k], ref_spikes[k]), f"neuron layer {k} differs"


def test_convert_seq_to_ann_container(rng):
    torch.manual_seed(rng.initial_seed())
    model = nn.Sequential(layer.SeqToANNContainer(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)),
                          neuron.LIFNode(step_mode="m"),
                          layer.SeqToANNContainer(nn.Flatten(), nn.Linear(4 * 4 * 4, 3)))
    model.eval()
    x = torch.rand(3, 2, 1, 6, 6, generator=rng) * 4
    with torch.no_grad():
        sjf.reset_net(model)
        ref = model(x)
        conv = ss.nn.convert(copy.deepcopy(model))
        sjf.reset_net(conv)
        out = conv(x)
    assert isinstance(conv[0][0], ss.nn.SpikeConv2d) and isinstance(conv[2][1], ss.nn.SpikeLinear)
    torch.testing.assert_close(out, ref)


def test_unsupported_surrogate_is_refused():
    node = neuron.LIFNode(surrogate_function=surrogate.PiecewiseLeakyReLU(), step_mode="m")
    with pytest.raises(ValueError, match="surrogate PiecewiseLeakyReLU is not supported"):
        ss.nn.convert(nn.Sequential(node))


def _load_zoo_module(name):
    from snnsparse.zoo import spikingjelly_zoo
    return spikingjelly_zoo(name)


def _left_names(caught):
    (message,) = [str(w.message) for w in caught if w.category is ss.nn.ConvertWarning]
    return message


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_convert_leaves_weight_standardised_layers(rng, step_mode):
    """layer.WSConv2d / WSLinear subclass Conv2d / Linear but standardise the weight in forward:
    swapping them for plain Spike* layers changed the outputs (by ~0.86 here)."""
    torch.manual_seed(rng.initial_seed())
    model = nn.Sequential(
        layer.WSConv2d(2, 6, 3, padding=1, gain=False, step_mode=step_mode),
        neuron.LIFNode(step_mode=step_mode),
        layer.Conv2d(6, 6, 3, padding=1, step_mode=step_mode),
        neuron.LIFNode(step_mode=step_mode),
        layer.Flatten(step_mode=step_mode),
        layer.WSLinear(6 * 5 * 5, 8, step_mode=step_mode),
        neuron.LIFNode(step_mode=step_mode),
        layer.Linear(8, 4, step_mode=step_mode),
    ).double()
    with torch.no_grad():  # every neuron layer fires sometimes (checked below)
        model[2].weight.uniform_(-0.2, 1.0, generator=rng)
        model[5].gain.fill_(12.0)
    x = torch.rand(3, 2, 2, 5, 5, generator=rng, dtype=torch.float64) * 4
    with torch.no_grad():
        ref, ref_spikes = _run(model, x, step_mode)
    for k in (1, 3, 6):
        assert 0 < ref_spikes[k].mean() < 1, f"neuron layer {k} must fire sometimes"
    with pytest.warns(ss.nn.ConvertWarning) as caught:
        conv = ss.nn.convert(copy.deepcopy(model))
    message = _left_names(caught)
    assert "'0' (WSConv2d)" in message and "'5' (WSLinear)" in message
    assert "forward may compute something else" in message
    assert type(conv[0]) is layer.WSConv2d and type(conv[5]) is layer.WSLinear
    assert isinstance(conv[2], ss.nn.SpikeConv2d) and isinstance(conv[7], ss.nn.SpikeLinear)
    report = {r.name: (r.action, r.result) for r in conv.snnsparse_convert_report}
    assert report == {"0": ("left", "WSConv2d"), "1": ("converted", "LIF"), "2": ("converted", "SpikeConv2d"),
                      "3": ("converted", "LIF"), "5": ("left", "WSLinear"), "6": ("converted", "LIF"),
                      "7": ("converted", "SpikeLinear")}
    with torch.no_grad():
        out, spikes = _run(conv, x, step_mode)
    assert_close64(out, ref, rtol=1e-12, atol=1e-12)
    for k in ref_spikes:
        assert torch.equal(spikes[k], ref_spikes[k]), f"neuron layer {k} differs"


@pytest.mark.slow
def test_convert_ottt_spiking_vgg11_ws_zoo_model(rng):
    """The SpikingJelly zoo model whose outputs convert used to change by 2.1-2.8: every conv and the
    two hidden classifier layers are weight-standardised (left), the last layer.Linear is converted.
    (The model has 130 M parameters, mostly the 25088 x 4096 classifier layer: about 1.8 GB and a few
    seconds on a CPU; the input is kept small.)"""
    zoo = _load_zoo_module("spiking_vggws_ottt")
    torch.manual_seed(rng.initial_seed())
    model = zoo.ottt_spiking_vgg11_ws(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32, generator=rng)

    def run(m):  # OTTT models are single-step: T=2 calls, the second sees the neurons' state
        sjf.reset_net(m)
        return torch.stack([m(x) for _ in range(2)])

    with torch.no_grad():
        ref = run(model)
    assert ref.abs().sum() > 0, "the classifier must see spikes"
    ws = [n for n, m in model.named_modules() if type(m).__name__ in ("WSConv2d", "WSLinear")]
    assert len(ws) == 10
    with pytest.warns(ss.nn.ConvertWarning) as caught:
        ss.nn.convert(model)  # in place: a second copy of the weights would double the memory
    message = _left_names(caught)
    assert all(f"{n!r} (WS" in message for n in ws)
    assert isinstance(model.classifier[10], ss.nn.SpikeLinear)
    report = {r.name: r.action for r in model.snnsparse_convert_report}
    assert report == {**{n: "left" for n in ws}, "classifier.10": "converted"}
    with torch.no_grad():
        torch.testing.assert_close(run(model), ref, rtol=1e-5, atol=1e-5)


def test_convert_error_changes_nothing_and_names_the_layer():
    model = _sj_model("m")
    model[8] = neuron.LIFNode(surrogate_function=surrogate.PiecewiseLeakyReLU(), step_mode="m")
    with pytest.raises(ValueError, match=r"convert: layer '8' \(LIFNode\): .*surrogate PiecewiseLeakyReLU"):
        ss.nn.convert(model)
    # Refused before anything was swapped (the old convert had already replaced layers 0-7).
    assert [type(m) for m in model] == [type(m) for m in _sj_model("m")]


def test_convert_dense_backend_keeps_lif_on_a_kernel_backend(rng):
    torch.manual_seed(rng.initial_seed())
    model = _sj_model("m").eval()
    x = torch.rand(2, 2, 2, 8, 8, generator=rng) * 3
    with torch.no_grad():
        ref, _ = _run(model, x, "m")
    conv = ss.nn.convert(copy.deepcopy(model), backend="dense")
    assert conv[0].backend == "dense" and conv[7].backend == "dense" and conv[2].backend == "auto"
    with torch.no_grad():
        out, _ = _run(conv, x, "m")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_convert_leaves_lif_whose_output_is_not_spikes(rng):
    # A surrogate with spiking=False makes LIFNode output the smooth primitive function, not spikes:
    # swapping in the binary ss.nn.LIF would change the outputs silently.
    torch.manual_seed(rng.initial_seed())
    model = nn.Sequential(layer.Linear(6, 5, step_mode="m"),
                          neuron.LIFNode(surrogate_function=surrogate.Sigmoid(spiking=False), step_mode="m"))
    x = torch.rand(3, 2, 6, generator=rng) * 3
    with torch.no_grad():
        sjf.reset_net(model)
        ref = model(x)
    with pytest.warns(ss.nn.ConvertWarning, match="not in spiking mode"):
        ss.nn.convert(model)
    assert type(model[1]).__name__ == "LIFNode"
    with torch.no_grad():
        sjf.reset_net(model)
        torch.testing.assert_close(model(x), ref)
