"""SpikeLinear / SpikeConv2d equal their torch twins (output and every gradient); masks survive
state_dict round-trips; convert() keeps outputs."""
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

import snnsparse as ss
from conftest import assert_close64, mask, randn, spikes


def _backends():
    av = ss.backends.available()
    return [b for b in ("reference", "cpp") if av[b] is True]


@pytest.mark.parametrize("backend", _backends())
def test_spike_linear_vs_twin(rng, backend):
    torch.manual_seed(rng.initial_seed())
    twin = nn.Linear(13, 7).double()
    m = ss.nn.SpikeLinear.from_dense(twin, backend=backend)
    msk = mask(m.weight.shape, 0.5, rng)
    m.set_mask(msk)
    with torch.no_grad():
        twin.weight.mul_(msk)
    x = spikes((4, 3, 13), 0.3, rng, torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, yt = m(x1), twin(x2)
    assert m.last_input_binary
    assert_close64(y, yt, rtol=1e-12, atol=1e-12)
    g = randn(y.shape, rng, torch.float64)
    y.backward(g)
    yt.backward(g)
    assert_close64(x1.grad, x2.grad, rtol=1e-12, atol=1e-12)
    assert_close64(m.weight.grad, twin.weight.grad * msk, rtol=1e-12, atol=1e-12)
    assert_close64(m.bias.grad, twin.bias.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("cfg", [dict(kernel_size=3, padding=1), dict(kernel_size=(1, 3), stride=2, groups=2),
                                 dict(kernel_size=3, padding="same", dilation=2, bias=False)])
def test_spike_conv_vs_twin(rng, backend, cfg):
    torch.manual_seed(rng.initial_seed())
    twin = nn.Conv2d(4, 6, **cfg).double()
    m = ss.nn.SpikeConv2d.from_dense(twin, backend=backend)
    msk = mask(m.weight.shape, 0.3, rng)
    m.set_mask(msk)
    with torch.no_grad():
        twin.weight.mul_(msk)
    x = spikes((2, 3, 4, 7, 9), 0.2, rng, torch.float64)  # time-major [T, B, C, H, W]
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = m(x1)
    yt = twin(x2.flatten(0, 1)).reshape(2, 3, *y.shape[2:])
    assert_close64(y, yt, rtol=1e-12, atol=1e-12)
    g = randn(y.shape, rng, torch.float64)
    y.backward(g)
    yt.backward(g)
    assert_close64(x1.grad, x2.grad, rtol=1e-12, atol=1e-12)
    assert_close64(m.weight.grad, twin.weight.grad * msk, rtol=1e-12, atol=1e-12)


def test_non_binary_input_uses_dense_path(rng):
    m = ss.nn.SpikeConv2d(1, 3, 3, padding=1)
    m.set_mask(mask(m.weight.shape, 0.5, rng))
    x = torch.rand(2, 1, 5, 5, generator=rng)
    y = m(x)
    assert m.last_input_binary is False
    torch.testing.assert_close(y, nn.functional.conv2d(x, m.weight * m.weight_mask, m.bias, padding=1))


def test_state_dict_round_trip_keeps_mask(rng):
    model = nn.Sequential(ss.nn.SpikeConv2d(2, 4, 3), ss.nn.LIF(), nn.Flatten(2), ss.nn.SpikeLinear(144, 3))
    model[0].set_mask(mask(model[0].weight.shape, 0.4, rng))
    model[3].set_mask(mask(model[3].weight.shape, 0.1, rng))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    clone = nn.Sequential(ss.nn.SpikeConv2d(2, 4, 3), ss.nn.LIF(), nn.Flatten(2), ss.nn.SpikeLinear(144, 3))
    clone.load_state_dict(torch.load(buf))
    for a, b in zip(model.state_dict().values(), clone.state_dict().values()):
        assert torch.equal(a, b)
    assert clone[0].weight_mask.dtype == torch.bool
    x = spikes((3, 2, 2, 8, 8), 0.3, rng)
    assert torch.equal(model(x), clone(x))


def test_convert_keeps_outputs_and_prune_masks(rng):
    torch.manual_seed(rng.initial_seed())
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    prune.random_unstructured(model[2], "weight", amount=0.6)
    x = spikes((4, 3, 6, 6), 0.5, rng)
    with torch.no_grad():
        ref = model(x)
    expected_mask = model[2].weight_mask.bool().clone()
    ss.nn.convert(model)
    assert isinstance(model[0], ss.nn.SpikeConv2d) and isinstance(model[4], ss.nn.SpikeLinear)
    assert torch.equal(model[2].weight_mask, expected_mask)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_convert_with_named_masks_and_errors(rng):
    model = nn.Sequential(nn.Linear(4, 3))
    msk = mask((3, 4), 0.5, rng)
    ss.nn.convert(model, {"0.weight": msk})
    assert torch.equal(model[0].weight_mask, msk)
    with pytest.raises(KeyError, match="nope.weight"):
        ss.nn.convert(nn.Sequential(nn.Linear(4, 3)), {"nope.weight": msk})
    with pytest.raises(ValueError, match="padding_mode must be 'zeros'"):
        ss.nn.SpikeConv2d(1, 1, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="mask must be a tensor of the weight's shape"):
        model[0].set_mask(torch.ones(4, 3, dtype=torch.bool))


def test_fuse_conv_bn_keeps_outputs_and_masks(rng):
    torch.manual_seed(rng.initial_seed())
    model = ss.models.SpikingCNN(in_channels=2, image_size=8, channels=(6, "M", 8), classes=3, t=3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics and affine parameters
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.features[4].set_mask(mask(model.features[4].weight.shape, 0.5, rng))
    model.double().eval()
    x = torch.rand(5, 2, 8, 8, generator=rng, dtype=torch.float64) * 2
    with torch.no_grad():
        ref = model(x)
    masks = {n: m.weight_mask.clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")}
    ss.nn.fuse_conv_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-9, atol=1e-9)
    for n, m in model.named_modules():
        if hasattr(m, "weight_mask"):
            assert torch.equal(m.weight_mask, masks[n])
    with pytest.raises(ValueError, match="call model.eval"):
        ss.nn.fuse_conv_bn(model.train())


def test_module_falls_back_to_dense_for_pixels_and_raises_other_errors(rng):
    m = ss.nn.SpikeLinear(4, 3)
    x = torch.rand(2, 4, generator=rng)
    torch.testing.assert_close(m(x), nn.functional.linear(x, m.weight, m.bias))
    assert m.last_input_binary is False
    m((x > 0.5).float())
    assert m.last_input_binary is True
    with pytest.raises(ValueError, match=r"spikes must have shape \[\.\.\., 4\]"):
        m(torch.ones(2, 5))


def test_dense_module_mode_matches_event_path(rng):
    m = ss.nn.SpikeConv2d(3, 4, 3, padding=1)
    m.set_mask(mask(m.weight.shape, 0.5, rng))
    x = spikes((2, 3, 3, 6, 6), 0.3, rng)
    y_event = m(x)
    m.backend = "dense"
    torch.testing.assert_close(m(x), y_event, rtol=1e-5, atol=1e-5)
    assert m.last_input_binary is None
