"""SpikeLinear / SpikeConv2d equal their torch twins (output and every gradient); masks survive
state_dict round-trips; convert() keeps outputs."""
import io
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

import snnsparse as ss
from conftest import assert_close64, assert_twin_grads, mask, spikes


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
    assert_twin_grads(m, twin, y, yt, x1, x2, msk, rng)


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
    assert_twin_grads(m, twin, y, yt, x1, x2, msk, rng)


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
    for name in [n for n, ok in ss.backends.available().items() if ok is True] + ["auto"]:
        ss.nn.LIF(backend=name)
        ss.nn.SpikeConv2d(1, 2, 3, backend=name)
    ss.nn.SpikeLinear(4, 3, backend="dense")
    with pytest.raises(ValueError, match="padding='same' with an even dilated kernel"):
        ss.nn.SpikeConv2d(1, 2, 2, padding="same")  # refused when built, not at the first forward


def test_valid_but_unavailable_backend_is_refused_when_built_with_the_reason(rng):
    missing = {n: why for n, why in ss.backends.available().items() if why is not True}
    if not missing:
        pytest.skip("every backend is available here")
    for name, why in missing.items():
        for build in (lambda: ss.nn.SpikeLinear(4, 3, backend=name), lambda: ss.nn.LIF(backend=name),
                      lambda: ss.nn.SpikeConv2d.from_dense(nn.Conv2d(1, 2, 3), backend=name)):
            with pytest.raises(ss.backends.BackendUnavailable, match=re.escape(why)):
                build()
        model = nn.Sequential(nn.Linear(4, 3))
        with pytest.raises(ss.backends.BackendUnavailable, match=rf"convert: backend {name!r} is unavailable"):
            ss.nn.convert(model, backend=name)
        assert type(model[0]) is nn.Linear, "a refused convert changes nothing"
    # A model meant to run elsewhere is built with "auto"; a layer set by hand refuses at its forward.
    layer = ss.nn.SpikeLinear(4, 3)
    layer.backend = name
    with pytest.raises(ss.backends.BackendUnavailable, match=name):
        layer(spikes((2, 4), 0.5, rng))


def test_plain_checkpoint_loads_into_a_converted_model_with_all_true_masks(rng):
    torch.manual_seed(rng.initial_seed())
    plain = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 2 * 2, 5))
    state = plain.state_dict()
    assert not any(k.endswith("weight_mask") for k in state)
    conv = ss.nn.convert(nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 2 * 2, 5)),
                         {"0.weight": mask((3, 2, 3, 3), 0.3, rng), "2.weight": mask((5, 12), 0.3, rng)})
    assert conv[0].density() < 1 and conv[2].density() < 1
    result = conv.load_state_dict(state)  # strict
    assert not result.missing_keys and not result.unexpected_keys
    assert conv[0].weight_mask.all() and conv[2].weight_mask.all() and conv[0].weight_mask.dtype == torch.bool
    x = spikes((6, 2, 4, 4), 0.4, rng)
    with torch.no_grad():
        assert_close64(conv(x), plain(x), rtol=1e-5, atol=1e-5)
    # A checkpoint with masks keeps them; one missing the weight too is still reported missing.
    pruned = {k: v.clone() for k, v in conv.state_dict().items()}
    pruned["2.weight_mask"] = mask((5, 12), 0.5, rng)
    conv.load_state_dict(pruned)
    assert torch.equal(conv[2].weight_mask, pruned["2.weight_mask"])
    del pruned["2.weight"], pruned["2.weight_mask"]
    result = conv.load_state_dict(pruned, strict=False)
    assert sorted(result.missing_keys) == ["2.weight", "2.weight_mask"]


def test_spike_layer_repr_shows_density_and_backend(rng):
    layer = ss.nn.SpikeLinear(4, 3, backend="reference")
    assert "density=1, backend='reference'" in repr(layer)
    layer.set_mask(torch.tensor([[1, 0, 0, 0]] * 3, dtype=torch.bool))
    assert "density=0.25, backend='reference'" in repr(layer)
    conv = ss.nn.SpikeConv2d(1, 2, 3, backend="dense")
    conv.set_mask(torch.zeros(2, 1, 3, 3, dtype=torch.bool))
    assert "density=0, backend='dense', input_kind='auto'" in repr(conv)


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
    # An "auto" layer decides its path once, from its first input (test_input_kind_* below): pixels
    # run dense, spikes run the event kernel, and other errors of the kernel are not swallowed.
    m = ss.nn.SpikeLinear(4, 3)
    x = torch.rand(2, 4, generator=rng)
    torch.testing.assert_close(m(x), nn.functional.linear(x, m.weight, m.bias))
    assert m.last_input_binary is False
    m = ss.nn.SpikeLinear(4, 3)
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


# ------------------------------------------------- input_kind: encoding vs event path, decided once
def _layer(cls, **kw):
    """A float64 layer of each class with a half-pruned mask, its input shape and its float64 reference."""
    if cls is ss.nn.SpikeLinear:
        m = ss.nn.SpikeLinear(13, 7, dtype=torch.float64, **kw)
        return m, (3, 2, 13), lambda x: nn.functional.linear(x.double(), torch.where(m.weight_mask, m.weight, 0),
                                                             m.bias)
    m = ss.nn.SpikeConv2d(3, 5, 3, padding=1, dtype=torch.float64, **kw)
    return m, (2, 3, 3, 6, 7), lambda x: nn.functional.conv2d(
        x.double().flatten(0, 1), torch.where(m.weight_mask, m.weight, 0), m.bias, padding=1).reshape(
            *x.shape[:2], 5, 6, 7)


_CLASSES = [ss.nn.SpikeLinear, ss.nn.SpikeConv2d]
_EVENT = {ss.nn.SpikeLinear: "spike_linear", ss.nn.SpikeConv2d: "spike_conv2d"}


def _no_event_kernel(monkeypatch, cls):
    def refuse(*args, **kwargs):
        raise AssertionError("the event kernel ran for an analog layer")
    monkeypatch.setattr(ss.functional, _EVENT[cls], refuse)


def _count_is_binary(monkeypatch):
    calls = []
    real = ss.functional.is_binary
    monkeypatch.setattr(ss.functional, "is_binary", lambda x: calls.append(1) or real(x))
    return calls


@pytest.mark.parametrize("cls", _CLASSES)
def test_input_kind_analog_always_runs_dense(rng, monkeypatch, cls):
    m, shape, ref = _layer(cls, input_kind="analog")
    m.set_mask(mask(m.weight.shape, 0.5, rng))
    assert m.input_kind == "analog" and m.input_decision == "analog"
    _no_event_kernel(monkeypatch, cls)
    pixels = torch.rand(shape, generator=rng, dtype=torch.float64)
    binary = spikes(shape, 0.3, rng, torch.float64)
    for x in (pixels, binary, binary.bool(), binary.to(torch.uint8), (pixels * 255).to(torch.uint8)):
        assert_close64(m(x), ref(x), rtol=1e-12, atol=1e-12)
        assert m.last_input_binary is False  # the energy counter charges MACs
    c = ss.energy.count(m, binary).layers[cls.__name__]  # binary values, but this layer ran dense: MACs
    positions = 6 * 7 if cls is ss.nn.SpikeConv2d else 1
    assert c.input == "analog" and c.sop == 0 and c.mac == 6 * int(m.weight_mask.sum()) * positions


@pytest.mark.parametrize("cls", _CLASSES)
def test_input_kind_spikes_always_runs_the_event_kernel(rng, cls):
    m, shape, ref = _layer(cls, input_kind="spikes")
    m.set_mask(mask(m.weight.shape, 0.5, rng))
    x = spikes(shape, 0.3, rng, torch.float64)
    for xx in (x, x.bool(), x.to(torch.uint8)):  # bool / uint8 spikes are accepted
        assert_close64(m(xx), ref(x), rtol=1e-12, atol=1e-12)
        assert m.last_input_binary is True
    assert ss.energy.count(m, x).layers[cls.__name__].mac == 0
    pixels = x.clone()
    pixels.view(-1)[int(torch.randint(pixels.numel(), (1,), generator=rng))] = 0.625
    with pytest.raises(ss.functional.NonBinarySpikesError,
                       match=rf"{cls.__name__} with weight \[{', '.join(map(str, m.weight.shape))}\]: "
                             rf"input_kind='spikes', but this input is not binary .*0\.625.*set input_kind='analog'"):
        m(pixels)
    assert m.input_kind == "spikes", "a refused input must not change the setting"


@pytest.mark.parametrize("cls", _CLASSES)
def test_input_kind_auto_decides_once_at_the_first_forward(rng, monkeypatch, cls):
    calls = _count_is_binary(monkeypatch)
    # Pixels first: "analog" is cached; later inputs, binary ones too, run dense without a check.
    m, shape, ref = _layer(cls)
    m.set_mask(mask(m.weight.shape, 0.5, rng))
    assert m.input_kind == "auto" and m.input_decision is None and m.last_input_binary is None
    pixels = torch.rand(shape, generator=rng, dtype=torch.float64)
    binary = spikes(shape, 0.3, rng, torch.float64)
    for x in (pixels, binary, pixels):
        assert_close64(m(x), ref(x), rtol=1e-12, atol=1e-12)
        assert m.input_decision == "analog" and m.last_input_binary is False
    assert len(calls) == 1, "the decision must be made once, with ss.functional.is_binary"
    assert "input_kind='auto' (decided 'analog')" in repr(m)
    # Spikes first: "spikes" is cached; a later non-binary input raises, naming the layer and the decision.
    m, shape, ref = _layer(cls)
    for x in (binary.bool(), binary, binary.to(torch.uint8)):
        assert_close64(m(x), ref(binary), rtol=1e-12, atol=1e-12)
        assert m.input_decision == "spikes" and m.last_input_binary is True
    assert len(calls) == 2
    with pytest.raises(ss.functional.NonBinarySpikesError,
                       match=r"input_kind='auto' decided at its first forward \(binary input\) that it sees spikes, "
                             r"but this input is not binary"):
        m(pixels)
    assert m.input_decision == "spikes"
    # Setting input_kind clears the decision; an empty input decides nothing.
    m.input_kind = "auto"
    assert m.input_decision is None
    empty = torch.zeros(0, *shape[1:], dtype=torch.float64)
    assert_close64(m(empty), ref(empty))
    assert m.input_decision is None
    m(pixels)
    assert m.input_decision == "analog"


def test_input_kind_is_validated_in_the_constructor_and_setter():
    listed = r"\('spikes', 'analog', 'auto'\)"
    with pytest.raises(ValueError, match=rf"SpikeLinear: input_kind must be one of {listed}.*got 'pixels'"):
        ss.nn.SpikeLinear(4, 3, input_kind="pixels")
    with pytest.raises(ValueError, match=rf"SpikeConv2d: input_kind must be one of {listed}.*got 'Spikes'"):
        ss.nn.SpikeConv2d(1, 2, 3, input_kind="Spikes")
    with pytest.raises(TypeError, match=rf"SpikeConv2d: input_kind must be a str, one of {listed}, got NoneType"):
        ss.nn.SpikeConv2d(1, 2, 3, input_kind=None)
    with pytest.raises(ValueError, match=rf"SpikeLinear: input_kind must be one of {listed}"):
        ss.nn.SpikeLinear.from_dense(nn.Linear(4, 3), input_kind="binary")
    m = ss.nn.SpikeLinear(4, 3, input_kind="spikes")
    with pytest.raises(ValueError, match=rf"SpikeLinear: input_kind must be one of {listed}.*got 'dense'"):
        m.input_kind = "dense"
    assert m.input_kind == "spikes"
    for kind in ("spikes", "analog", "auto"):
        assert ss.nn.SpikeConv2d.from_dense(nn.Conv2d(1, 2, 3), input_kind=kind).input_kind == kind


def test_input_kind_and_decision_survive_state_dict_deepcopy_and_pickle(rng):
    import copy
    import pickle

    def build(kinds=("analog", "auto", "spikes")):
        return nn.Sequential(ss.nn.SpikeConv2d(1, 4, 3, padding=1, input_kind=kinds[0]), ss.nn.LIF(),
                             ss.nn.SpikeConv2d(4, 4, 3, padding=1, input_kind=kinds[1]), ss.nn.LIF(),
                             nn.Flatten(2), ss.nn.SpikeLinear(4 * 36, 3, input_kind=kinds[2]))

    model = build()
    x = torch.rand(2, 3, 1, 6, 6, generator=rng) * 8  # strong enough that the first LIF fires (an all-zero
    # input leaves an "auto" layer undecided)
    ref = model(x)
    state = {i: (model[i].input_kind, model[i].input_decision) for i in (0, 2, 5)}
    assert state == {0: ("analog", "analog"), 2: ("auto", "spikes"), 5: ("spikes", "spikes")}
    sd = model.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values()), "every state_dict value stays a tensor"
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    clone = build(("auto", "auto", "auto"))
    clone.load_state_dict(torch.load(buf))  # weights_only=True (torch's default) loads it
    assert {i: (clone[i].input_kind, clone[i].input_decision) for i in (0, 2, 5)} == state
    assert torch.equal(clone(x), ref)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert {i: (other[i].input_kind, other[i].input_decision) for i in (0, 2, 5)} == state
        assert torch.equal(other(x), ref)
    # A checkpoint from before input_kind existed loads, strict too, and keeps each layer's setting.
    old = {k: v for k, v in sd.items() if not k.endswith("_extra_state")}
    assert len(old) == len(sd) - 3
    fresh = build(("analog", "spikes", "auto"))
    fresh.load_state_dict(old)
    assert [fresh[i].input_kind for i in (0, 2, 5)] == ["analog", "spikes", "auto"]
    assert torch.equal(fresh(x), ref)
    # A checkpoint taken before the first forward (a LotteryTicket rewind point) keeps the decision made since.
    undecided = build(("auto", "auto", "auto")).state_dict()
    model.load_state_dict(undecided)
    assert model[2].input_decision == "spikes" and model[0].input_kind == "auto" and model[0].input_decision is None
    # A module pickled before input_kind existed unpickles as "auto", undecided.
    legacy = ss.nn.SpikeLinear(4, 3)
    del legacy.__dict__["_input_kind"], legacy.__dict__["_input_decision"]
    legacy = pickle.loads(pickle.dumps(legacy))
    assert legacy.input_kind == "auto" and legacy.input_decision is None
    legacy(torch.rand(2, 4, generator=rng))
    assert legacy.input_decision == "analog"
    # A malformed entry is refused, naming it.
    bad = dict(sd)
    bad["0._extra_state"] = torch.tensor([1, 7, 0], dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"SpikeConv2d: _extra_state must be a uint8 tensor \[1, input_kind code"):
        build().load_state_dict(bad)


def _pixel_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 36, 3))


def test_convert_sets_input_kind_and_reports_it(rng, monkeypatch):
    torch.manual_seed(rng.initial_seed())
    model = _pixel_model().double()
    with torch.no_grad():  # every layer after a ReLU must see non-binary values: an all-zero ReLU output
        for m in model:    # (seed 4009926142) decides nothing, and nothing below would be checked
            if isinstance(m, nn.Conv2d):
                m.bias.uniform_(0.5, 1.0, generator=rng)
    x = torch.rand(5, 1, 6, 6, generator=rng, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    default = ss.nn.convert(model, inplace=False)
    assert [default[i].input_kind for i in (0, 2, 5)] == ["auto"] * 3
    assert [(r.name, r.input_kind, r.reason) for r in default.snnsparse_convert_report] == [
        ("0", "auto", ""), ("2", "auto", ""), ("5", "auto", "")]
    analog = ss.nn.convert(model, first_layer="analog", input_kinds={"2": "auto", "5": "spikes"}, inplace=False)
    assert [analog[i].input_kind for i in (0, 2, 5)] == ["analog", "auto", "spikes"]
    assert {r.name: (r.input_kind, r.reason) for r in analog.snnsparse_convert_report} == {
        "0": ("analog", "input_kind 'analog' from first_layer='analog'"),
        "2": ("auto", "input_kind 'auto' from input_kinds['2']"),
        "5": ("spikes", "input_kind 'spikes' from input_kinds['5']")}
    # The encoding layer runs dense without being asked (ReLU outputs are not spikes: the later layers
    # decide "analog" themselves, and a "spikes" layer would refuse them).
    calls = _count_is_binary(monkeypatch)
    with torch.no_grad():
        assert_close64(default(x), ref, rtol=1e-12, atol=1e-12)
        assert len(calls) == 3
        first = ss.nn.convert(model, first_layer="analog", inplace=False)
        assert_close64(first(x), ref, rtol=1e-12, atol=1e-12)
        assert len(calls) == 5, "first_layer='analog' needs no decision for the first layer"
        with pytest.raises(ss.functional.NonBinarySpikesError, match=r"SpikeLinear with weight \[3, 144\]"):
            analog(x)
    # An already converted model: kept layers keep their kind unless told; the first one is set.
    again = ss.nn.convert(default, first_layer="analog", input_kinds={"5": "analog"})
    assert [again[i].input_kind for i in (0, 2, 5)] == ["analog", "auto", "analog"]
    assert [r.action for r in again.snnsparse_convert_report] == ["kept"] * 3
    assert again[2].input_decision == "analog", "a kept layer not named keeps its decision"
    # The first layer left unchanged (it runs as plain torch): no other layer becomes analog.
    odd = nn.Sequential(nn.Conv2d(1, 2, 2, padding="same"), nn.Conv2d(1, 2, 3))
    with pytest.warns(ss.nn.ConvertWarning, match="asymmetric padding"):
        ss.nn.convert(odd, first_layer="analog")
    assert type(odd[0]) is nn.Conv2d and odd[1].input_kind == "auto"
    assert [r.input_kind for r in odd.snnsparse_convert_report] == ["", "auto"]


def test_convert_refuses_bad_input_kinds_and_changes_nothing():
    listed = r"\('spikes', 'analog', 'auto'\)"
    cases = [
        (dict(first_layer="spikes"), ValueError, r"convert: first_layer must be one of \('analog', 'auto'\).*'spikes'"),
        (dict(first_layer=True), TypeError, r"convert: first_layer must be one of \('analog', 'auto'\)"),
        (dict(input_kinds=[("0", "analog")]), TypeError, r"convert: input_kinds must be a dict .* got list"),
        (dict(input_kinds={0: "analog"}), TypeError, r"keyed by module name .* got key 0"),
        (dict(input_kinds={"0": "pixels"}), ValueError, rf"convert: input_kinds\['0'\] must be one of {listed}"),
        (dict(input_kinds={"9": "analog"}), ValueError, r"input_kinds names '9', which is not a module of the model"),
        (dict(input_kinds={"0.weight": "analog"}), ValueError, r"not parameter names: '0'"),
        (dict(input_kinds={"1": "analog"}), ValueError, r"input_kinds names '1' \(ReLU\), which is not a Linear"),
        (dict(input_kinds={"0": "spikes"}, first_layer="analog"), ValueError,
         r"input_kinds\['0'\] = 'spikes', but first_layer='analog' makes that layer .* 'analog'"),
    ]
    for kwargs, exc, msg in cases:
        model = _pixel_model()
        with pytest.raises(exc, match=msg):
            ss.nn.convert(model, **kwargs)
        assert type(model[0]) is nn.Conv2d and type(model[5]) is nn.Linear, kwargs
    left = nn.Sequential(_DoubledLinear(4, 3))
    with pytest.raises(ValueError, match=r"input_kinds names '0', but convert leaves that layer unchanged"):
        ss.nn.convert(left, input_kinds={"0": "analog"})
    assert ss.nn.convert(_pixel_model(), first_layer="analog", input_kinds={"0": "analog"})[0].input_kind == "analog"


def test_input_kind_auto_does_not_decide_on_an_all_zero_input(rng):
    # The first step of a single-step model can be all zero while later inputs are scaled spikes or
    # pixels (SpikingJelly's OTTT VGG): deciding "spikes" there would refuse every later input.
    layer = ss.nn.SpikeLinear(6, 3)
    zero = torch.zeros(4, 6)
    assert torch.equal(layer(zero), layer.bias.expand(4, 3)) and layer.input_decision is None
    x = torch.rand(4, 6, generator=rng) * 2.5
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert layer.input_decision == "analog"


@pytest.mark.parametrize("make", [lambda: nn.Linear(6, 5), lambda: nn.Conv2d(3, 4, 3, bias=False),
                                  lambda: nn.Conv1d(3, 4, 2)])
def test_from_dense_copies_every_tensor_and_leaves_the_global_rng_alone(rng, make):
    """from_dense builds without the constructor's random init (skip_init): every tensor is the module's
    (weight, bias, mask: an uninitialised one would show here), and the caller's random stream is unchanged."""
    torch.manual_seed(rng.initial_seed())
    dense = make()
    prune.custom_from_mask(dense, "weight", mask(dense.weight.shape, 0.5, rng))
    cls = {nn.Linear: ss.nn.SpikeLinear, nn.Conv2d: ss.nn.SpikeConv2d, nn.Conv1d: ss.nn.SpikeConv1d}[type(dense)]
    state = torch.random.get_rng_state()
    new = cls.from_dense(dense)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(new.weight, dense.weight_orig) and torch.equal(new.weight_mask, dense.weight_mask.bool())
    assert (new.bias is None) == (dense.bias is None)
    if dense.bias is not None:
        assert torch.equal(new.bias, dense.bias)
