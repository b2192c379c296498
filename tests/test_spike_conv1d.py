"""SpikeConv1d equals nn.Conv1d with a masked weight (output, input / weight / bias gradients) for
every geometry (the conv2d kernels on the [N, C, 1, L] view), in every input layout; convert() swaps
nn.Conv1d and SpikingJelly's layer.Conv1d and leaves what it cannot swap exactly; energy.count agrees
with the kernels' own counts."""
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune

import snnsparse as ss
from conftest import DENSITIES, RATES, assert_close64, assert_twin_grads, mask, randn, spikes


def _backends():
    av = ss.backends.available()
    return [b for b in ("reference", "cpp") if av[b] is True]


def _reference(x, weight, bias, conv):
    """float64 F.conv1d of any layout SpikeConv1d takes ([T, B, C, L], [N, C, L], [C, L])."""
    xf = x.double().flatten(0, 1) if x.dim() == 4 else x.double()
    y = F.conv1d(xf, weight.double(), None if bias is None else bias.double(), conv.stride, conv.padding,
                 conv.dilation, conv.groups)
    return y.reshape(*x.shape[:2], *y.shape[1:]) if x.dim() == 4 else y


CONFIGS = [dict(kernel_size=1), dict(kernel_size=1, bias=False), dict(kernel_size=3, padding=1),
           dict(kernel_size=3, stride=2, dilation=2, groups=2), dict(kernel_size=5, padding="same", bias=False),
           dict(kernel_size=1, stride=2), dict(kernel_size=1, padding=1), dict(kernel_size=1, groups=2)]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("shape", [(2, 3, 4, 9), (3, 4, 1), (4, 7)])
def test_spike_conv1d_vs_twin_output_and_every_gradient(rng, backend, cfg, shape):
    torch.manual_seed(rng.initial_seed())
    twin = nn.Conv1d(4, 6, **cfg).double()
    m = ss.nn.SpikeConv1d.from_dense(twin, backend=backend, input_kind="spikes")
    msk = mask(m.weight.shape, 0.4, rng)
    m.set_mask(msk)
    with torch.no_grad():
        twin.weight.mul_(msk)
    x = spikes(shape, 0.3, rng, torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    xt = x2.flatten(0, 1) if x2.dim() == 4 else x2
    try:
        yt = twin(xt)
    except RuntimeError:  # input shorter than the dilated kernel: refused too, with a ValueError
        with pytest.raises(ValueError, match="smaller than the dilated kernel"):
            m(x1)
        return
    y = m(x1)
    yt = yt.reshape(*shape[:2], *yt.shape[1:]) if x.dim() == 4 else yt
    assert y.shape == yt.shape and y.is_contiguous()
    assert_twin_grads(m, twin, y, yt, x1, x2, msk, rng)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("kernel", [1, 3])
def test_spike_conv1d_grid_fp32_vs_float64(rng, backend, rate, density, kernel):
    m = ss.nn.SpikeConv1d(127, 3, kernel, padding=kernel // 2, backend=backend, input_kind="spikes")
    with torch.no_grad():
        m.weight.copy_(randn(m.weight.shape, rng))
        m.bias.copy_(randn(m.bias.shape, rng))
    m.set_mask(mask(m.weight.shape, density, rng))
    x = spikes((4, 2, 127, 5), rate, rng)
    y = m(x)
    assert_close64(y, _reference(x, m.weight * m.weight_mask, m.bias, m))


@pytest.mark.parametrize("kernel", [1, 3])
def test_dense_weight_grad_gives_pruned_entries_too(rng, kernel):
    torch.manual_seed(rng.initial_seed())
    twin = nn.Conv1d(5, 4, kernel).double()
    m = ss.nn.SpikeConv1d.from_dense(twin, input_kind="spikes")
    msk = mask(m.weight.shape, 0.5, rng)
    m.set_mask(msk)
    m.dense_weight_grad = True
    x = spikes((3, 5, 8), 0.4, rng, torch.float64)
    y = m(x)
    w = (twin.weight * msk).detach().requires_grad_()
    yt = F.conv1d(x, w, twin.bias)
    g = randn(y.shape, rng, torch.float64)
    y.backward(g)
    yt.backward(g)
    assert_close64(m.weight.grad, w.grad, rtol=1e-12, atol=1e-12)  # dL/dw of pruned entries too
    assert bool((w.grad * ~msk).abs().sum() > 0) or msk.all()


@pytest.mark.parametrize("kernel", [1, 3])
def test_gradcheck(rng, kernel):
    m = ss.nn.SpikeConv1d(3, 2, kernel, padding=kernel // 2, dtype=torch.float64, input_kind="spikes")
    m.set_mask(mask(m.weight.shape, 0.6, rng))
    x = spikes((2, 3, 5), 0.5, rng, torch.float64)

    def f(w, b):
        return torch.func.functional_call(m, {"weight": w, "bias": b}, (x,))

    w = m.weight.detach().clone().requires_grad_()
    b = m.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (w, b))


def test_analog_input_runs_dense_and_spikes_refuse_non_binary(rng):
    m = ss.nn.SpikeConv1d(4, 3, 1)
    x = torch.rand(2, 4, 6, generator=rng)
    y = m(x)
    assert m.input_decision == "analog" and m.last_input_binary is False
    assert_close64(y, _reference(x, m.weight, m.bias, m))
    s = ss.nn.SpikeConv1d(4, 3, 1, input_kind="spikes")
    with pytest.raises(ss.functional.NonBinarySpikesError, match="SpikeConv1d.*not binary"):
        s(x)
    s3 = ss.nn.SpikeConv1d(4, 3, 3, input_kind="spikes")
    with pytest.raises(ss.functional.NonBinarySpikesError, match="SpikeConv1d"):
        s3(x)


def test_bad_shapes_and_geometry_are_refused_early():
    m = ss.nn.SpikeConv1d(4, 3, 1, input_kind="spikes")
    for bad in (torch.zeros(4), torch.zeros(1, 2, 3, 4, 6), torch.zeros(2, 5, 6)):
        with pytest.raises(ValueError, match=r"input must be \[T, B, 4, L\]"):
            m(bad)
    with pytest.raises(ValueError, match="padding_mode"):
        ss.nn.SpikeConv1d(4, 3, 3, padding=1, padding_mode="circular")
    with pytest.raises(ValueError, match="asymmetric"):
        ss.nn.SpikeConv1d(4, 3, 4, padding="same")
    with pytest.raises(ValueError, match="backend"):
        ss.nn.SpikeConv1d(4, 3, 1, backend="nope")


def test_empty_inputs(rng):
    m = ss.nn.SpikeConv1d(4, 3, 1, input_kind="spikes")
    assert m(torch.zeros(0, 4, 5)).shape == (0, 3, 5)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):  # nn.Conv1d refuses L = 0 too
        m(torch.zeros(2, 4, 0))
    y = m(torch.zeros(2, 4, 5))  # no spikes: the bias
    assert_close64(y, m.bias.view(1, -1, 1).expand(2, 3, 5))


def test_state_dict_round_trip(rng):
    m = ss.nn.SpikeConv1d(4, 3, 3, padding=1, input_kind="spikes")
    m.set_mask(mask(m.weight.shape, 0.5, rng))
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    n = ss.nn.SpikeConv1d(4, 3, 3, padding=1)
    n.load_state_dict(torch.load(buf))
    assert torch.equal(n.weight_mask, m.weight_mask) and n.input_kind == "spikes"
    x = spikes((2, 4, 7), 0.3, rng)
    assert torch.equal(n(x), m(x))


def test_convert_swaps_conv1d_keeps_prune_mask_and_outputs(rng):
    torch.manual_seed(rng.initial_seed())
    model = nn.Sequential(nn.Conv1d(4, 8, 1, bias=False), nn.BatchNorm1d(8), nn.Conv1d(8, 3, 3, padding=1)).eval()
    msk = mask(model[2].weight.shape, 0.3, rng)
    prune.custom_from_mask(model[2], "weight", msk)
    x = spikes((2, 4, 9), 0.3, rng)
    expected = model(x)
    ss.nn.convert(model)
    assert isinstance(model[0], ss.nn.SpikeConv1d) and isinstance(model[2], ss.nn.SpikeConv1d)
    assert torch.equal(model[2].weight_mask, msk)
    assert_close64(model(x), expected)
    assert [r.result for r in model.snnsparse_convert_report] == ["SpikeConv1d", "SpikeConv1d"]


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_convert_spikingjelly_conv1d(rng, step_mode):
    layer = pytest.importorskip("spikingjelly.activation_based.layer")
    torch.manual_seed(rng.initial_seed())
    model = nn.Sequential(layer.Conv1d(4, 6, 1, step_mode=step_mode), layer.Conv1d(6, 2, 3, padding=1,
                                                                                step_mode=step_mode))
    x = spikes((3, 2, 4, 7) if step_mode == "m" else (2, 4, 7), 0.3, rng)
    expected = model[0](x)
    converted = ss.nn.convert(model, inplace=False)
    assert isinstance(converted[0], ss.nn.SpikeConv1d) and isinstance(converted[1], ss.nn.SpikeConv1d)
    assert_close64(converted[0](x), expected)


def test_convert_leaves_conv1d_subclasses_and_hooks_and_reports():
    class Scaled(nn.Conv1d):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(Scaled(4, 4, 1), nn.Conv1d(4, 4, 1), nn.Conv1d(4, 4, 1, padding_mode="reflect"))
    model[1].register_forward_hook(lambda m, i, o: o)
    with pytest.warns(ss.nn.ConvertWarning) as w:
        ss.nn.convert(model)
    text = str(w[0].message)
    assert "subclasses nn.Conv1d" in text and "hooks" in text and "padding_mode" in text
    assert type(model[0]) is Scaled and type(model[1]) is nn.Conv1d and type(model[2]) is nn.Conv1d
    assert {r.action for r in model.snnsparse_convert_report} == {"left"}


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("cfg", [dict(kernel_size=1), dict(kernel_size=3, padding="same"),
                                 dict(kernel_size=3, stride=2, padding=1, groups=2)])
def test_energy_count_of_conv1d_equals_the_kernels_own_count(rng, backend, cfg):
    """ss.energy.count's sop for a SpikeConv1d (and the same layer as plain nn.Conv1d with a prune mask) is
    what the event-driven kernel executed (counting mode); synops is the dense-weight count."""
    m = ss.nn.SpikeConv1d(6, 8, **cfg, backend=backend, input_kind="spikes")
    msk = mask(m.weight.shape, 0.4, rng)
    m.set_mask(msk)
    x = spikes((4, 3, 6, 11), 0.3, rng)  # [T, B, C, L]
    _, n = ss.functional.spike_conv2d(x.unsqueeze(-2), m.weight.unsqueeze(-2), m.bias, (1, m.stride[0]),
                                      (0, m._explicit_padding()), (1, m.dilation[0]), m.groups,
                                      mask=msk.unsqueeze(-2), backend=backend, return_count=True)
    report = ss.energy.count(m, x)
    counts = report.layers["SpikeConv1d"]
    assert counts.sop == int(n) and counts.mac == 0
    ones = torch.ones_like(m.weight, dtype=torch.float64)
    synops = _reference(x, ones, None, m).sum()
    assert counts.synops == int(synops.round())
    plain = nn.Conv1d(6, 8, **cfg)
    prune.custom_from_mask(plain, "weight", msk)
    counts_plain = ss.energy.count(plain, x.flatten(0, 1)).layers["Conv1d"]
    assert counts_plain.sop == int(n) and counts_plain.synops == counts.synops
