"""Bad input is refused with a message that names the argument."""
import pytest
import torch

import snnsparse as ss

F = ss.functional


def _lin():
    return torch.ones(2, 4), torch.randn(3, 4)


@pytest.mark.parametrize("value", [0.5, 2.0, -1.0])
def test_non_binary_spikes_raise(value):
    s, w = _lin()
    s[1, 2] = value
    with pytest.raises(ValueError, match=r"spike_linear: spikes must be binary") as e:
        F.spike_linear(s, w)
    assert float(str(e.value).split("found value ")[1].split(". ")[0].split()[0]) == value
    with pytest.raises(ValueError, match="spike_conv2d: spikes must be binary"):
        F.spike_conv2d(torch.full((1, 2, 4, 4), value), torch.randn(3, 2, 3, 3))


def test_nan_spikes_raise():
    s, w = _lin()
    s[0, 0] = float("nan")
    with pytest.raises(ValueError, match="binary"):
        F.spike_linear(s, w)


@pytest.mark.parametrize("kwargs,match", [
    (dict(spikes=torch.ones(2, 5)), r"spikes must have shape \[\.\.\., 4\]"),
    (dict(weight=torch.randn(3, 4, 1)), "weight must have rank 2"),
    (dict(weight=torch.ones(3, 4, dtype=torch.int32)), "weight must be floating point"),
    (dict(bias=torch.randn(4)), r"bias must have shape \(3,\)"),
    (dict(bias=torch.randn(3, dtype=torch.float64)), "bias must match"),
    (dict(mask=torch.ones(3, 4)), "mask must be a bool tensor"),
    (dict(mask=torch.ones(4, 3, dtype=torch.bool)), "mask must have the weight's shape"),
    (dict(spikes=torch.ones(2, 4, dtype=torch.float64)), "spikes dtype torch.float64 does not match"),
    (dict(spikes=torch.ones(2, 4, dtype=torch.int64)), "spikes must be float, bool or uint8"),
    (dict(spikes=[[1.0, 0.0]]), "spikes must be a torch.Tensor"),
])
def test_linear_bad_input(kwargs, match):
    s, w = _lin()
    args = dict(spikes=s, weight=w, bias=None, mask=None)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        F.spike_linear(args["spikes"], args["weight"], args["bias"], mask=args["mask"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(spikes=torch.ones(2, 3, 5)), r"spikes must be \[T, B, C, H, W\] or \[N, C, H, W\]"),
    (dict(spikes=torch.ones(1, 5, 6, 6)), "spikes has 5 channels but weight expects in_channels"),
    (dict(groups=4), "not divisible by groups=4"),
    (dict(groups=0), "groups must be a positive int"),
    (dict(stride=0), "stride and dilation must be >= 1"),
    (dict(padding=(1, 2, 3)), "padding must be an int or a pair"),
    (dict(spikes=torch.ones(1, 4, 1, 1)), "smaller than the dilated kernel"),
    (dict(mask=torch.ones(6, 2, 3, 3, dtype=torch.bool)), "mask must have the weight's shape"),
])
def test_conv_bad_input(kwargs, match):
    args = dict(spikes=torch.ones(1, 4, 6, 6), weight=torch.randn(6, 4, 3, 3), stride=1, padding=0, groups=1,
                mask=None)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        F.spike_conv2d(args["spikes"], args["weight"], None, args["stride"], args["padding"], 1, args["groups"],
                       mask=args["mask"])


def test_device_mismatch_meta():
    with pytest.raises(ValueError, match="spikes is on meta but weight is on cpu"):
        F.spike_linear(torch.ones(2, 4, device="meta"), torch.randn(3, 4))
    with pytest.raises(ValueError, match="mask is on meta"):
        F.spike_linear(torch.ones(2, 4), torch.randn(3, 4), mask=torch.ones(3, 4, dtype=torch.bool, device="meta"))


@pytest.mark.parametrize("kwargs,match", [
    (dict(tau=1.0), "tau must be > 1"),
    (dict(tau=float("nan")), "tau must be a finite number"),
    (dict(v_threshold=float("inf")), "v_threshold must be a finite number"),
    (dict(v_reset=float("nan")), "v_reset must be a finite number or None"),
    (dict(surrogate="relu"), "surrogate must be one of"),
    (dict(alpha=-1.0), "alpha must be a positive"),
    (dict(v0=torch.zeros(3)), r"v0 must have shape \(2, 5\)"),
    (dict(v0=torch.zeros(2, 5, dtype=torch.float64)), "v0 must match x_seq's dtype"),
])
def test_lif_bad_input(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        F.lif(torch.randn(4, 2, 5), **kwargs)
    with pytest.raises(TypeError, match="x_seq must be floating point"):
        F.lif(torch.ones(4, 2, dtype=torch.int32))


def test_explicit_missing_backend_raises_with_reason(monkeypatch):
    monkeypatch.setitem(ss.backends._errors, "cuda", "test: no CUDA here")
    monkeypatch.delitem(ss.backends._loaded, "cuda", raising=False)
    with pytest.raises(ss.backends.BackendUnavailable, match="test: no CUDA here"):
        F.spike_linear(torch.ones(2, 4), torch.randn(3, 4), backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        F.spike_linear(torch.ones(2, 4), torch.randn(3, 4), backend="nope")


@pytest.mark.parametrize("backend", [b for b in ("reference", "cpp") if ss.backends.available()[b] is True])
def test_non_binary_error_type_is_the_same_on_every_backend(backend):
    s = torch.zeros(3, 4)
    s[2, 3] = 0.25
    with pytest.raises(F.NonBinarySpikesError, match="spike_linear: spikes must be binary"):
        F.spike_linear(s, torch.randn(2, 4), backend=backend)
    with pytest.raises(F.NonBinarySpikesError, match="spike_conv2d: spikes must be binary"):
        F.spike_conv2d(s.reshape(1, 1, 3, 4), torch.randn(2, 1, 2, 2), backend=backend)
