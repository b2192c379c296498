"""ss.nn.convert on SpikingJelly models (layer.Conv2d / layer.Linear in step modes "m" and "s",
layer.SeqToANNContainer, neuron.LIFNode): same outputs as the original, weights and masks kept."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

import snnsparse as ss
from conftest import mask

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
