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
    (dict(alpha=-1.0), "lif: alpha must be a finite number > 0"),
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


# -- lif: every argument's type, not only its value ---------------------------------------------------
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(decay_input="no"), TypeError, "lif: decay_input must be a bool"),      # a truthy str was True
    (dict(detach_reset="yes"), TypeError, "lif: detach_reset must be a bool"),
    (dict(detach_reset=1), TypeError, "lif: detach_reset must be a bool"),
    (dict(tau=True), TypeError, "lif: tau must be a finite number"),              # bool is not 1.0
    (dict(v_threshold=True), TypeError, "lif: v_threshold must be a finite number"),
    (dict(v_threshold="1.0"), TypeError, "lif: v_threshold must be a finite number"),
    (dict(v_reset=False), TypeError, "lif: v_reset must be a finite number or None"),
    (dict(surrogate=["atan"]), TypeError, "lif: surrogate must be a name"),
    (dict(alpha="4"), TypeError, "lif: alpha must be a finite number > 0"),
    (dict(alpha=float("inf")), ValueError, "lif: alpha must be a finite number > 0"),
])
def test_lif_argument_types(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        F.lif(torch.randn(4, 2, 5), **kwargs)


def test_lif_scalar_checks_remembered_by_value_and_type():
    # The scalar checks are cached for plain Python scalars: a value that passed must not let the same value
    # of another type (True for 1, "1.0" for 1.0) through, a bad value must raise on every call (NaN included),
    # and a module whose attribute changed is checked again; -0.0 and 0.0 (one cache key) keep their own sign.
    x = torch.randn(3, 2)
    for _ in range(2):
        F.lif(x, tau=2.0, v_threshold=1, v_reset=0.0, detach_reset=True)
        with pytest.raises(TypeError, match="lif: v_threshold must be a finite number"):
            F.lif(x, tau=2.0, v_threshold=True, v_reset=0.0, detach_reset=True)
        with pytest.raises(TypeError, match="lif: detach_reset must be a bool"):
            F.lif(x, tau=2.0, v_threshold=1, v_reset=0.0, detach_reset=1)
        with pytest.raises(ValueError, match="lif: v_threshold must be a finite number"):
            F.lif(x, v_threshold=float("nan"))
        with pytest.raises(TypeError, match="lif: tau must be a finite number"):
            F.lif(x, tau=torch.tensor(2.0))  # a tensor (never cached: it can change in place)
    assert str(F._lif_args(x, None, 2.0, 1.0, 0.0, "sigmoid", None)[2]) == "0.0"
    assert str(F._lif_args(x, None, 2.0, 1.0, -0.0, "sigmoid", None)[2]) == "-0.0"
    m = ss.nn.LIF()
    m(x)
    m.tau = 0.5
    with pytest.raises(ValueError, match="tau must be > 1"):
        m(x)


def test_lif_accepts_numpy_scalars_and_none():
    np = pytest.importorskip("numpy")
    s, v = F.lif(torch.randn(3, 2), tau=np.float32(2.0), v_threshold=np.float64(1.0), v_reset=None,
                 decay_input=np.bool_(False), detach_reset=True, alpha=None)
    assert s.shape == (3, 2) and v.shape == (2,)


# -- pruners: NaN / inf / negative / wrongly typed hyperparameters, refused by the constructor ----------
def _param():
    return [torch.nn.Parameter(torch.ones(2, 3))]


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(lr=float("inf")), ValueError, "GradRewiring: lr must be a finite number >= 0, got inf"),
    (dict(lr=float("nan")), ValueError, "GradRewiring: lr must be a finite number >= 0"),
    (dict(lr=-1e-3), ValueError, "GradRewiring: lr must be a finite number >= 0"),
    (dict(lr="1e-3"), TypeError, "GradRewiring: lr must be a finite number"),
    (dict(lr=True), TypeError, "GradRewiring: lr must be a finite number"),
    (dict(alpha=float("inf")), ValueError, "GradRewiring: alpha must be a finite number >= 0"),
    (dict(eps=float("inf")), ValueError, "GradRewiring: eps must be a finite number >= 0, got inf"),
    (dict(eps=float("nan")), ValueError, "GradRewiring: eps must be a finite number >= 0"),
    (dict(betas=0.9), TypeError, "GradRewiring: betas must be a pair"),
    (dict(betas=(0.9, 0.99, 0.999)), TypeError, "GradRewiring: betas must be a pair"),
    (dict(betas=(float("nan"), 0.999)), ValueError, r"GradRewiring: betas\[0\] must be a finite number in \[0, 1\)"),
    (dict(betas=(0.9, float("inf"))), ValueError, r"GradRewiring: betas\[1\]"),
    (dict(target_sparsity=float("nan")), ValueError, "GradRewiring: target_sparsity must be a finite number"),
    (dict(target_sparsity=float("inf")), ValueError, "GradRewiring: target_sparsity must be a finite number"),
    (dict(target_sparsity=1.0), ValueError, r"GradRewiring: target_sparsity must be in \[0.5, 1\)"),
])
def test_gradrewiring_hyperparameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ss.pruning.GradRewiring(_param(), **kwargs)


def test_gradrewiring_param_group_overrides_are_checked():
    with pytest.raises(ValueError, match="GradRewiring: lr must be a finite number >= 0, got inf"):
        ss.pruning.GradRewiring([{"params": _param(), "lr": float("inf")}])
    opt = ss.pruning.GradRewiring(_param())
    with pytest.raises(ValueError, match="GradRewiring: eps"):
        opt.add_param_group({"params": _param(), "eps": float("nan")})
    good = ss.pruning.GradRewiring(_param(), lr=1, betas=[0.5, 0.9])
    assert good.param_groups[0]["lr"] == 1.0 and good.param_groups[0]["betas"] == (0.5, 0.9)


def _snn():
    return torch.nn.Sequential(ss.nn.SpikeLinear(6, 5), ss.nn.LIF(), ss.nn.SpikeLinear(5, 3))


@pytest.mark.parametrize("make,exc,match", [
    (lambda: ss.pruning.LotteryTicket(_snn(), prune_fraction=float("nan")), ValueError, "prune_fraction"),
    (lambda: ss.pruning.LotteryTicket(_snn(), zero_grad_hooks="no"), TypeError,
     "LotteryTicket: zero_grad_hooks must be a bool"),
    (lambda: ss.pruning.MultiPrizeTicket(_snn(), binarize="no"), TypeError,
     "MultiPrizeTicket: binarize must be a bool"),
    (lambda: ss.pruning.MultiPrizeTicket(_snn(), sparsity=float("inf")), ValueError, "sparsity"),
    (lambda: ss.pruning.CriticalityPruner(_snn(), final_sparsity=float("nan")), ValueError, "final_sparsity"),
    (lambda: ss.pruning.CriticalityPruner(_snn(), prune_every=True), TypeError,
     "CriticalityPruner: prune_every must be an integer >= 1"),
    (lambda: ss.pruning.CriticalityPruner(_snn(), prune_steps=2.0), TypeError,
     "CriticalityPruner: prune_steps must be an integer >= 1"),
    (lambda: ss.pruning.CriticalityPruner(_snn(), start_step=-1), ValueError,
     "CriticalityPruner: start_step must be an integer >= 0"),
    (lambda: ss.pruning.CriticalityPruner(_snn(), alpha=3.0), ValueError,
     "alpha=3.0 needs surrogate"),                                    # was silently ignored
    (lambda: ss.pruning.CriticalityPruner(_snn(), surrogate="atan", alpha=float("nan")), ValueError,
     "alpha must be a finite number > 0"),
    (lambda: ss.pruning.slimming_penalty(_snn(), lam=float("nan")), ValueError,
     "slimming_penalty: lam must be a finite number >= 0"),
    (lambda: ss.pruning.early_time_steps(lambda x, t: x, torch.zeros(2, 3), 5, lam=float("inf")), ValueError,
     "early_time_steps: lam must be a finite number > 0"),
    (lambda: ss.pruning.early_time_steps(lambda x, t: x, torch.zeros(2, 3), 5.0), TypeError,
     "early_time_steps: T must be an integer >= 2"),
])
def test_other_pruners_hyperparameters(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(T=0), ValueError, "MultiSpSLT: T must be an integer >= 1, got 0"),          # NaN logits before
    (dict(patch_size=0), ValueError, "MultiSpSLT: patch_size must be an integer >= 1"),  # ZeroDivisionError
    (dict(T=2.5), TypeError, "MultiSpSLT: T must be an integer"),
    (dict(img_size=0), ValueError, "MultiSpSLT: img_size"),
    (dict(num_heads=0), ValueError, "MultiSpSLT: num_heads"),
    (dict(embed_dim=-4), ValueError, "MultiSpSLT: embed_dim"),
    (dict(depth=-1), ValueError, "MultiSpSLT: depth must be an integer >= 0"),
    (dict(num_classes=0), ValueError, "MultiSpSLT: num_classes"),
])
def test_multisp_constructor(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ss.pruning.MultiSpSLT(**kwargs)


def test_multisp_refuses_zero_time_steps_in_the_input():
    m = ss.pruning.MultiSpSLT()
    with pytest.raises(ValueError, match=r"MultiSpSLT: input \[T, B, C, H, W\] needs T >= 1"):
        m(torch.rand(0, 2, 1, 8, 8))
    assert torch.isfinite(m(torch.rand(2, 1, 8, 8))).all()


# -- recipes: the networks and the settings of `snnsparse prune` / run_prune -------------------------
def test_spiking_net_time_steps():
    from snnsparse import recipes
    with pytest.raises(ValueError, match="SpikingNet: T must be an integer >= 1, got 0"):
        recipes.digits_cnn(T=0)
    net = recipes.digits_cnn(T=2)
    with pytest.raises(ValueError, match="SpikingNet: T must be an integer >= 1, got 0"):
        net(torch.rand(2, 1, 8, 8), 0)


@pytest.mark.parametrize("field,value,exc", [
    ("epochs", -1, ValueError), ("epochs", 0, ValueError), ("T", 0, ValueError), ("batch_size", 0, ValueError),
    ("lr", float("nan"), ValueError), ("lr", 0.0, ValueError), ("weight_decay", -1.0, ValueError),
    ("epochs", 2.5, TypeError), ("optimizer", "rmsprop", ValueError), ("loss", "l1", ValueError),
])
def test_recipe_fields_are_checked_before_training(monkeypatch, field, value, exc):
    from snnsparse import recipes

    def trained(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(recipes, "run_recipe", trained)
    with pytest.raises(exc, match=f"recipe 'dense-digits': {field} must be"):
        recipes.get_recipe("dense-digits", **{field: value})
    with pytest.raises(exc, match=f"{field} must be"):
        recipes.run_prune("dense", **{"dataset": "digits", "log": lambda s: None, field: value})
