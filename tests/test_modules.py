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
    # Unknown names: the same error as ss.pruning.apply_masks (one check, masks.check_masks).
    with pytest.raises(ValueError, match=r"unknown parameter name 'nope.weight'"):
        ss.nn.convert(nn.Sequential(nn.Linear(4, 3)), {"nope.weight": msk})
    with pytest.raises(ValueError, match=r"'1.weight' does not name the weight of a Linear / Conv2d"):
        ss.nn.convert(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)), {"1.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="padding_mode must be 'zeros'"):
        ss.nn.SpikeConv2d(1, 1, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"set_mask: mask has shape \(4, 3\), but the weight has \(3, 4\)"):
        model[0].set_mask(torch.ones(4, 3, dtype=torch.bool))


# Masks that used to be accepted and silently pruned nothing (a float cast to bool is True wherever
# it is not exactly 0, NaN included) or pruned the wrong synapses (a [K] mask broadcast to every row).
def _bad_masks(shape, gen):
    return {
        "scores": (torch.rand(shape, generator=gen), TypeError, "must be a bool tensor"),
        "fraction 0.3": (torch.full(shape, 0.3), TypeError, "must be a bool tensor"),
        "NaN": (torch.full(shape, float("nan")), TypeError, "must be a bool tensor"),
        "0/1 int": (torch.randint(0, 2, shape, generator=gen), TypeError, "must be a bool tensor"),
        "row [K]": (torch.rand(shape[-1], generator=gen) < 0.5, ValueError,
                    rf"has shape \({shape[-1]},\), but the weight has \({shape[0]}, {shape[1]}\)"),
        "transposed": (torch.ones(shape[::-1], dtype=torch.bool), ValueError, "never broadcast"),
        "list": ([[True] * shape[1]] * shape[0], TypeError, "got list"),
    }


def test_set_mask_refuses_non_bool_and_misshaped_masks(rng):
    layer = ss.nn.SpikeLinear(5, 3)
    kept = mask(layer.weight.shape, 0.5, rng)
    layer.set_mask(kept)
    for label, (bad, exc, msg) in _bad_masks((3, 5), rng).items():
        with pytest.raises(exc, match=msg):
            layer.set_mask(bad)
        with pytest.raises(exc, match=r"mask for 'fc.weight'"):
            layer.set_mask(bad, name="fc.weight")
        assert torch.equal(layer.weight_mask, kept), f"{label}: a refused mask changed weight_mask"
    conv = ss.nn.SpikeConv2d(2, 4, 3)
    with pytest.raises(ValueError, match=r"has shape \(2, 3, 3\), but the weight has \(4, 2, 3, 3\)"):
        conv.set_mask(torch.ones(2, 3, 3, dtype=torch.bool))  # would broadcast over output channels
    with pytest.raises(TypeError, match="must be a bool tensor"):
        ss.nn.SpikeLinear.from_dense(nn.Linear(5, 3), torch.full((3, 5), 0.3))


def test_convert_refuses_non_bool_and_misshaped_masks_and_changes_nothing(rng):
    for label, (bad, exc, msg) in _bad_masks((3, 5), rng).items():
        model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
        with pytest.raises(exc, match=msg) as info:
            ss.nn.convert(model, {"2.weight": bad})
        assert "'2.weight'" in str(info.value), f"{label}: the error must name the layer"
        # Checked before anything is swapped: the model is left exactly as it was.
        assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear, label


def test_convert_checks_torch_prune_masks_are_exactly_0_1(rng):
    torch.manual_seed(rng.initial_seed())
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).double()
    prune.random_unstructured(model[0], "weight", amount=0.5)
    prune.l1_unstructured(model[0], "weight", amount=0.3)  # a PruningContainer: still one 0/1 weight_mask
    prune.custom_from_mask(model[2], "weight", mask((4, 5), 0.4, rng))
    x = spikes((3, 2, 6), 0.5, rng, torch.float64)
    with torch.no_grad():
        ref = torch.relu(x @ (model[0].weight_orig * model[0].weight_mask).T + model[0].bias)
        ref = ref @ (model[2].weight_orig * model[2].weight_mask).T + model[2].bias
    masks = [model[i].weight_mask.bool().clone() for i in (0, 2)]
    assert model[0].weight_mask.dtype == torch.float64  # torch keeps them as float 0/1 buffers
    ss.nn.convert(model)
    assert torch.equal(model[0].weight_mask, masks[0]) and torch.equal(model[2].weight_mask, masks[1])
    with torch.no_grad():
        assert_close64(model(x), ref, rtol=1e-12, atol=1e-12)
    for value in (0.3, float("nan"), 2.0):
        bad = nn.Sequential(nn.Linear(6, 5))
        prune.random_unstructured(bad[0], "weight", amount=0.5)
        bad[0].weight_mask[0, 0] = value  # e.g. scores written into torch's buffer
        with pytest.raises(ValueError, match=r"layer '0'.*weight_mask \(torch.nn.utils.prune\) must hold only 0 and 1"):
            ss.nn.convert(bad)
        assert type(bad[0]) is nn.Linear
    bad = nn.Sequential(nn.Linear(6, 5))
    prune.random_unstructured(bad[0], "weight", amount=0.5)
    bad[0].weight_mask[1, 2] = 0.5
    with pytest.raises(ValueError, match=r"'0.weight_mask' \(torch.nn.utils.prune\) must hold only 0 and 1"):
        ss.pruning.get_masks(bad)


def test_convert_and_modules_refuse_bad_arguments_early():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(TypeError, match="convert: model must be a torch.nn.Module, got Tensor"):
        ss.nn.convert(torch.ones(3, 4))
    with pytest.raises(TypeError, match=r"convert: masks must be a dict .* got list"):
        ss.nn.convert(model, masks=[torch.ones(3, 4, dtype=torch.bool)])
    with pytest.raises(TypeError, match="masks must be keyed by parameter name"):
        ss.nn.convert(model, masks={0: torch.ones(3, 4, dtype=torch.bool)})
    valid = r"\('reference', 'cpp', 'cuda', 'triton', 'auto', 'dense'\)"
    valid_lif = r"\('reference', 'cpp', 'cuda', 'triton', 'auto'\)"
    with pytest.raises(ValueError, match=rf"convert: backend must be one of {valid}, got 'gpu'"):
        ss.nn.convert(model, backend="gpu")
    assert type(model[0]) is nn.Linear
    with pytest.raises(ValueError, match=rf"SpikeLinear: backend must be one of {valid}, got 'cpu'"):
        ss.nn.SpikeLinear(4, 3, backend="cpu")
    with pytest.raises(ValueError, match=rf"SpikeConv2d: backend must be one of {valid}, got 'Triton'"):
        ss.nn.SpikeConv2d(1, 2, 3, backend="Triton")
    with pytest.raises(ValueError, match=rf"SpikeLinear: backend must be one of {valid}, got 'torch'"):
        ss.nn.SpikeLinear.from_dense(nn.Linear(4, 3), backend="torch")
    with pytest.raises(ValueError, match=rf"LIF: backend must be one of {valid_lif}, got 'dense'; 'dense' is a"):
        ss.nn.LIF(backend="dense")
    with pytest.raises(ValueError, match=rf"LIF: backend must be one of {valid_lif}, got 'cupy'"):
        ss.nn.LIF(backend="cupy")
    with pytest.raises(TypeError, match="LIF: backend must be a str"):
        ss.nn.LIF(backend=None)
    for name in ss.backends.NAMES + ("auto",):
        ss.nn.LIF(backend=name)
        ss.nn.SpikeConv2d(1, 2, 3, backend=name)
    ss.nn.SpikeLinear(4, 3, backend="dense")
    with pytest.raises(ValueError, match="padding='same' with an even dilated kernel"):
        ss.nn.SpikeConv2d(1, 2, 2, padding="same")  # refused when built, not at the first forward


def test_valid_but_unavailable_backend_is_refused_at_forward_with_the_reason(rng):
    missing = {n: why for n, why in ss.backends.available().items() if why is not True}
    if not missing:
        pytest.skip("every backend is available here")
    name, why = next(iter(missing.items()))
    layer = ss.nn.SpikeLinear(4, 3, backend=name)  # a model may be built here and run elsewhere
    with pytest.raises(ss.backends.BackendUnavailable, match=name):
        layer(spikes((2, 4), 0.5, rng))


class _DoubledLinear(nn.Linear):
    """A user layer: nn.Linear's parameters, another forward."""

    def forward(self, x):
        return 2.0 * super().forward(x) + 1.0


class _ShiftedConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x - 0.5)


def test_convert_leaves_subclasses_with_unknown_forward_and_reports(rng):
    torch.manual_seed(rng.initial_seed())
    shared = nn.Linear(6, 6)
    model = nn.Sequential(_ShiftedConv(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 6), _DoubledLinear(6, 6), shared, nn.ReLU(), shared,
                          nn.Conv2d(3, 3, 2, padding="same"),  # unused in forward; left for its padding
                          nn.utils.parametrizations.weight_norm(nn.Linear(6, 6)),
                          nn.Linear(6, 5))
    model[3].register_forward_hook(lambda mod, inp, out: out * 3.0)
    model.double()
    x = spikes((5, 2, 4, 4), 0.5, rng, torch.float64)

    def run(m):
        h = m[0:3](x)
        h = m[3](h)
        for i in (4, 5, 6, 7, 9, 10):
            h = m[i](h)
        return h

    with torch.no_grad():
        ref = run(model)
    with pytest.warns(ss.nn.ConvertWarning) as caught:
        out_model = ss.nn.convert(model)
    assert out_model is model
    (message,) = [str(w.message) for w in caught if w.category is ss.nn.ConvertWarning]
    for name in ("'0' (_ShiftedConv)", "'3' (Linear)", "'4' (_DoubledLinear)", "'8' (Conv2d)",
                 "'9' (ParametrizedLinear)"):
        assert name in message, name
    assert "forward hook" in message and "parametrize" in message and "asymmetric padding" in message
    kinds = {r.name: (r.original, r.action, r.result) for r in model.snnsparse_convert_report}
    assert kinds == {
        "0": ("_ShiftedConv", "left", "_ShiftedConv"), "1": ("Conv2d", "converted", "SpikeConv2d"),
        "3": ("Linear", "left", "Linear"), "4": ("_DoubledLinear", "left", "_DoubledLinear"),
        "5": ("Linear", "converted", "SpikeLinear"), "8": ("Conv2d", "left", "Conv2d"),
        "9": ("ParametrizedLinear", "left", "ParametrizedLinear"), "10": ("Linear", "converted", "SpikeLinear")}
    assert type(model[0]) is _ShiftedConv and type(model[4]) is _DoubledLinear
    assert isinstance(model[5], ss.nn.SpikeLinear) and model[7] is model[5], "a shared layer must stay shared"
    with torch.no_grad():
        assert_close64(run(model), ref, rtol=1e-12, atol=1e-12)
    # A mask for a layer convert leaves would not be applied: refused, naming the layer.
    fresh = nn.Sequential(_DoubledLinear(4, 3))
    with pytest.raises(ValueError, match=r"mask was given for '0.weight', but convert leaves that layer unchanged"):
        ss.nn.convert(fresh, {"0.weight": torch.ones(3, 4, dtype=torch.bool)})
    # A bare layer: returned as it is (and reported), or as its Spike* twin.
    with pytest.warns(ss.nn.ConvertWarning, match="_DoubledLinear"):
        same = ss.nn.convert(fresh)
    assert same is fresh and same.snnsparse_convert_report[0].action == "left"
    plain = ss.nn.convert(nn.Linear(4, 3), {"weight": mask((3, 4), 0.5, rng)})
    assert isinstance(plain, ss.nn.SpikeLinear) and plain.snnsparse_convert_report[0].name == ""


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
