"""ss.energy.count: hand-computed counts, and `sop` / `synops` / `sop_dense` checked against the
kernels' own counting mode, an independent per-frame count, SpikingJelly's SynOpCounter and the
syops-counter formula."""
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import snnsparse as ss
from snnsparse.nn import LIF, SpikeConv2d, SpikeLinear

from conftest import DENSITIES, RATES, mask as rand_mask, spikes as rand_spikes

energy = ss.energy


def _cpp_reason():
    av = ss.backends.available()["cpp"]
    return None if av is True else av


KERNEL_BACKENDS = [
    "reference",
    pytest.param("cpp", marks=pytest.mark.skipif(_cpp_reason() is not None,
                                                  reason=f"cpp backend unavailable: {_cpp_reason()}")),
]


# ---------------------------------------------------------------- helpers (independent of energy/)

class Spike(nn.Module):
    """Deterministic spike function (x > 0) so that multi-layer test models carry binary activity."""

    def forward(self, x):
        return (x > 0).to(x.dtype)


def record_inputs(model, *inputs):
    """Run `model` and return {layer name: [input tensor of each call]} for every Linear / Conv2d."""
    seen, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            handles.append(m.register_forward_hook(
                lambda mod, args, out, name=name: seen.setdefault(name, []).append(args[0].detach().clone())))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def module_mask(m):
    wm = getattr(m, "weight_mask", None)
    if isinstance(wm, torch.Tensor):
        return wm != 0
    return m.weight != 0


def per_frame_count(m, s, mask):
    """DESIGN.md section 5 literally: sum(conv2d(s, mask)) / sum(s @ mask^T), frame by frame."""
    mask = mask.double()
    if isinstance(m, nn.Conv2d):
        x = s.reshape(-1, *s.shape[-3:]).double()
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            x = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
            pad = 0
        else:
            pad = m.padding
        return sum(int(F.conv2d(f[None], mask, None, m.stride, pad, m.dilation, m.groups).sum().round())
                   for f in x)
    x = s.reshape(-1, m.in_features).double()
    return int(sum((f @ mask.t()).sum().round() for f in x))


def kernel_count(m, s, backend):
    """Accumulations executed by the backend's event-driven kernel (counting mode)."""
    mask = module_mask(m)
    if isinstance(m, nn.Conv2d):
        pad = m._explicit_padding() if hasattr(m, "_explicit_padding") else m.padding
        _, n = ss.functional.spike_conv2d(s, m.weight, m.bias, m.stride, pad, m.dilation, m.groups,
                                          mask=mask, backend=backend, return_count=True)
    else:
        _, n = ss.functional.spike_linear(s, m.weight, m.bias, mask=mask, backend=backend, return_count=True)
    return int(n)


def syops_sop_dense(m, s):
    """syops-counter's formula (syops/ops.py conv/linear hooks, spiking input, bias left out):
    ACs = rate x (dense MACs of the call), rate = s.sum() / s.numel()."""
    rate = float(s.double().sum() / s.numel())
    if isinstance(m, nn.Conv2d):
        x = s.reshape(-1, *s.shape[-3:])
        out = F.conv2d(x.double(), m.weight.double(), None, m.stride, m.padding, m.dilation, m.groups) \
            if m.padding_mode == "zeros" else m(x.to(m.weight.dtype))
        batch, (ho, wo) = x.shape[0], out.shape[-2:]
        per_position = int(math.prod(m.kernel_size)) * m.in_channels * (m.out_channels // m.groups)
        return rate * per_position * batch * ho * wo
    return rate * int(math.prod(s.shape)) * m.out_features


def random_model(density, gen, bias=True):
    """T-major model: conv (pad, dilation) -> spike -> grouped strided conv -> spike -> linear."""
    model = nn.Sequential(
        SpikeConv2d(3, 6, 3, padding=2, dilation=2, bias=bias),
        Spike(),
        SpikeConv2d(6, 4, 3, stride=2, padding=1, groups=2, bias=bias),
        Spike(),
        nn.Flatten(2),
        SpikeLinear(4 * 5 * 5, 5, bias=bias),
    )
    for m in model.modules():
        if isinstance(m, (SpikeConv2d, SpikeLinear)):
            m.set_mask(rand_mask(m.weight.shape, density, gen))
    return model


# ---------------------------------------------------------------- hand-computed counts

def test_conv_padding_borders_by_hand():
    conv = SpikeConv2d(1, 1, 3, padding=1, bias=False)
    x = torch.ones(1, 1, 1, 3, 3)                 # [T, B, C, H, W], every input fires
    r = energy.count(conv, x)
    c = r.layers["SpikeConv2d"]
    # in-bounds taps per output: corners 4, edges 6, centre 9 -> 4*4 + 4*6 + 9 = 49
    assert (c.sop, c.synops, c.mac) == (49, 49, 0)
    assert c.sop_dense == pytest.approx(81.0)     # rate 1 x T 1 x 9 positions x 9 MACs: borders charged
    assert c.firing_rate == 1.0 and c.weight_density == 1.0 and c.input == "spikes"
    # prune the centre tap: every output loses one op -> 49 - 9
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    mask[0, 0, 1, 1] = False
    conv.set_mask(mask)
    c = energy.count(conv, x).layers["SpikeConv2d"]
    assert (c.sop, c.synops) == (40, 49)
    assert c.weight_density == pytest.approx(8 / 9)
    assert c.sop == kernel_count(conv, x, "reference")


def test_conv_stride_by_hand():
    conv = nn.Conv2d(1, 2, 3, stride=2, padding=1, bias=False)   # 5x5 -> 3x3
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = x[0, 0, 2, 2] = 1
    c = energy.count(conv, x).layers["Conv2d"]
    # (0,0) is used by output (0,0) only; (1,1) by outputs (0..1, 0..1); (2,2) by output (1,1): 1+4+1 taps
    assert c.synops == 6 * 2 and c.sop == 6 * 2
    assert c.sop_dense == pytest.approx(3 / 25 * 1 * (2 * 9 * 9))
    # a spike the stride never reaches costs nothing exactly, but is charged by sop_dense
    conv2 = nn.Conv2d(1, 1, 3, stride=2, bias=False)              # 4x4 -> 1x1: row/col 3 unused
    x2 = torch.zeros(1, 1, 4, 4)
    x2[0, 0, 3, 3] = 1
    c2 = energy.count(conv2, x2).layers["Conv2d"]
    assert (c2.sop, c2.synops) == (0, 0)
    assert c2.sop_dense == pytest.approx(9 / 16)


def test_conv_groups_by_hand():
    conv = SpikeConv2d(4, 6, 1, groups=2, bias=False)   # group 0: in 0..1 -> out 0..2
    mask = torch.ones(6, 2, 1, 1, dtype=torch.bool)
    mask[1, 0] = False                                   # out 1 no longer listens to in 0
    conv.set_mask(mask)
    x = torch.zeros(2, 1, 4, 2, 2)                       # T=2, B=1
    x[0, 0, 0, 0, 0] = x[1, 0, 0, 1, 1] = 1              # two spikes on input channel 0
    x[1, 0, 3, 0, 1] = 1                                 # one spike on channel 3 (group 1)
    c = energy.count(conv, x).layers["SpikeConv2d"]
    assert c.synops == 3 * 3                             # fan-out 3 per spike, dense
    assert c.sop == 2 * 2 + 3                            # channel 0 keeps 2 of 3 outputs
    assert c.sop == kernel_count(conv, x, "reference") == per_frame_count(conv, x, conv.weight_mask)
    assert c.sop_dense == pytest.approx(3 / 32 * 2 * (6 * 4 * 2))


def test_linear_by_hand():
    fc = SpikeLinear(3, 2, bias=True)
    fc.set_mask(torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool))   # fan-out per input [2, 1, 1]
    x = torch.tensor([[[1., 1., 0.]], [[0., 1., 1.]]])                    # [T=2, B=1, K=3]
    c = energy.count(fc, x).layers["SpikeLinear"]
    assert c.sop == 2 + 1 + 1 + 1
    assert c.synops == 4 * 2
    assert c.sop_dense == pytest.approx(8.0)           # linear: no borders, sop_dense == synops
    assert c.firing_rate == pytest.approx(4 / 6)
    assert c.energy_pj == pytest.approx(0.9 * 5)


@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_all_zero_and_all_one_spikes(layer):
    if layer == "conv":
        m = SpikeConv2d(2, 3, 3, padding=1, stride=1)
        shape = (2, 3, 2, 5, 5)
    else:
        m = SpikeLinear(7, 4)
        shape = (2, 3, 7)
    gen = torch.Generator().manual_seed(0)
    m.set_mask(rand_mask(m.weight.shape, 0.5, gen))
    zero = energy.count(m, torch.zeros(shape))
    c = zero.layers[type(m).__name__]
    assert (c.sop, c.synops, c.sop_dense, c.mac, c.energy_pj, c.firing_rate) == (0, 0, 0.0, 0, 0.0, 0.0)
    assert zero.energy_ratio == 0.0
    ones = torch.ones(shape)
    c = energy.count(m, ones).layers[type(m).__name__]
    frames = shape[0] * shape[1]
    if layer == "linear":
        assert c.sop == frames * int(m.weight_mask.sum())
        assert c.synops == frames * m.weight.numel()
    else:
        # every tap that lands inside the image: conv of ones with ones/mask, per frame
        inside = F.conv2d(torch.ones(1, 2, 5, 5, dtype=torch.float64), m.weight_mask.double(), None, 1, 1)
        assert c.sop == frames * int(inside.sum())
        assert c.synops < c.sop_dense == frames * 3 * 25 * 2 * 9   # rate 1: sop_dense charges the borders
    assert c.firing_rate == 1.0
    assert c.sop == kernel_count(m, ones, "reference")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_empty_mask(backend):
    conv = SpikeConv2d(2, 3, 3, padding=1)
    conv.set_mask(torch.zeros_like(conv.weight_mask))
    x = torch.ones(3, 2, 2, 4, 4)
    c = energy.count(conv, x).layers["SpikeConv2d"]
    assert c.sop == 0 == kernel_count(conv, x, backend)
    assert c.energy_pj == 0 and c.weight_density == 0.0
    assert c.synops == int(F.conv2d(torch.ones(6, 2, 4, 4), torch.ones(3, 2, 3, 3), padding=1).sum())
    fc = SpikeLinear(5, 4)
    fc.set_mask(torch.zeros_like(fc.weight_mask))
    c = energy.count(fc, torch.ones(2, 5)).layers["SpikeLinear"]
    assert (c.sop, c.synops) == (0, 2 * 5 * 4)


def test_time_major_and_flat_inputs_agree():
    gen = torch.Generator().manual_seed(1)
    conv = SpikeConv2d(3, 4, 3, padding=1, stride=2, groups=1)
    conv.set_mask(rand_mask(conv.weight.shape, 0.5, gen))
    s = rand_spikes((4, 2, 3, 7, 7), 0.3, gen)
    tm = energy.count(conv, s)
    flat = energy.count(conv, s.flatten(0, 1))
    a, b = tm.layers["SpikeConv2d"], flat.layers["SpikeConv2d"]
    assert (a.sop, a.synops, a.mac, a.frames) == (b.sop, b.synops, b.mac, b.frames) == (a.sop, a.synops, 0, 8)
    assert a.sop_dense == pytest.approx(b.sop_dense)
    assert tm.timesteps == 4 and flat.timesteps == 1           # flat: T unknown unless given
    assert energy.count(conv, s.flatten(0, 1), timesteps=4).ann_energy_pj == pytest.approx(tm.ann_energy_pj)
    assert any("timesteps=" in n for n in flat.notes)
    assert tm.batch_size == 2 and flat.batch_size is None
    assert tm.energy_per_sample_pj == pytest.approx(tm.total.energy_pj / 2)
    assert energy.count(conv, s.flatten(0, 1), batch_size=2).energy_per_sample_pj == pytest.approx(
        tm.energy_per_sample_pj)
    fc = SpikeLinear(6, 3)
    s = rand_spikes((4, 2, 6), 0.5, gen)
    assert energy.count(fc, s).layers["SpikeLinear"].sop == energy.count(fc, s.flatten(0, 1)).layers["SpikeLinear"].sop


# ---------------------------------------------------------------- encoding layer, presets, ANN

def test_encoding_layer_counted_as_macs():
    gen = torch.Generator().manual_seed(2)
    conv = SpikeConv2d(1, 4, 3, padding=1)
    conv.set_mask(rand_mask(conv.weight.shape, 0.5, gen))
    pixels = torch.rand(4, 2, 1, 6, 6, generator=gen)      # T=4, B=2 repeated images: not binary
    r = energy.count(conv, pixels)
    c = r.layers["SpikeConv2d"]
    assert conv.last_input_binary is False
    assert c.input == "analog" and c.firing_rate is None
    assert (c.sop, c.synops, c.sop_dense) == (0, 0, 0.0)
    assert c.mac == 8 * int(conv.weight_mask.sum()) * 36    # frames x kept weights x output positions
    assert c.energy_pj == pytest.approx(4.6 * c.mac)
    assert c.ann_mac == 2 * 4 * 9 * 36                      # dense, once per sample
    assert r.energy_ratio == pytest.approx(c.energy_pj / (4.6 * c.ann_mac))
    fc = nn.Linear(5, 3)                                    # a plain encoder: mask = weight != 0
    with torch.no_grad():
        fc.weight[0, :2] = 0
    c = energy.count(fc, torch.rand(2, 5) + 0.5).layers["Linear"]
    assert c.mac == 2 * 13 and c.sop == 0


def test_mixed_calls_and_encoding_then_spikes():
    # backend="dense": one layer fed both pixels and spikes (an "auto" layer decides once and then
    # refuses the other kind); the counter checks each input itself.
    conv = SpikeConv2d(2, 2, 1, bias=False, backend="dense")

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv((self.conv(x) > 0).float())    # pixels first, then spikes

    r = energy.count(Twice(), torch.rand(3, 2, 4, 4) + 0.1)
    c = r.layers["conv"]
    assert c.input == "mixed" and c.calls == 2 and c.mac == 3 * 4 * 16 and c.sop == c.synops


def test_keyword_input_and_inputs_containers():
    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, a, b=None):
            return self.fc(input=a) + self.fc(input=b)

    a, b = torch.ones(2, 4), torch.zeros(2, 4)
    for inputs in ((a, b), [a, b], {"a": a, "b": b}):
        c = energy.count(Kw(), inputs).layers["fc"]
        assert c.calls == 2 and c.synops == 2 * 4 * 3 and c.firing_rate == 0.5


def test_presets_and_user_constants():
    fc = SpikeLinear(4, 2)
    x = torch.ones(1, 4)
    expect = {"fp32": 0.9, "fp16": 0.4, "int8": 0.03}
    for name, e_ac in expect.items():
        r = energy.count(fc, x, preset=name)
        assert r.total.energy_pj == pytest.approx(e_ac * 8)
        assert r.constants.e_ac == e_ac and r.constants.e_mac == energy.PRESETS[name].e_mac
    assert tuple(energy.PRESETS[n].e_mac for n in ("fp32", "fp16", "int8")) == (4.6, 1.5, 0.23)
    r = energy.count(fc, x, e_ac=2.0, e_mac=10.0)
    assert r.total.energy_pj == pytest.approx(16.0) and r.ann_energy_pj == pytest.approx(80.0)
    r = energy.count(fc, x, preset=energy.EnergyConstants(1.0, 3.0))
    assert r.energy_ratio == pytest.approx(8 / 24)
    assert r.total.energy(r.constants, ops="synops") == pytest.approx(8.0)
    with pytest.raises(ValueError, match="preset"):
        energy.count(fc, x, preset="fp64")
    with pytest.raises(ValueError, match="e_ac"):
        energy.EnergyConstants(-1.0, 1.0)
    with pytest.raises(ValueError, match="timesteps"):
        energy.count(fc, x, timesteps=0)


def test_ann_equivalent_static_encoder_and_masked():
    gen = torch.Generator().manual_seed(3)

    class Static(nn.Module):      # SpikingJelly's static-conv pattern: encode once, then repeat over T
        def __init__(self):
            super().__init__()
            self.enc = nn.Conv2d(1, 2, 3, padding=1, bias=False)
            self.lif = LIF(v_threshold=0.1)
            self.fc = SpikeLinear(2 * 16, 3, bias=False)

        def forward(self, x):
            y = self.enc(x).unsqueeze(0).repeat(4, 1, 1, 1, 1)
            return self.fc(self.lif(y).flatten(2))

    m = Static()
    m.fc.set_mask(rand_mask(m.fc.weight.shape, 0.5, gen))
    r = energy.count(m, torch.rand(2, 1, 4, 4, generator=gen))
    assert r.timesteps == 4
    assert r.layers["enc"].mac == 2 * 18 * 16            # run once per sample by the SNN ...
    assert r.layers["enc"].ann_mac == 2 * 18 * 16        # ... and by the ANN equivalent
    assert r.layers["fc"].ann_mac == 2 * 32 * 3           # T-major: / T
    masked = energy.count(m, torch.rand(2, 1, 4, 4, generator=gen), ann="masked")
    assert masked.layers["fc"].ann_mac == 2 * int(m.fc.weight_mask.sum())


# ---------------------------------------------------------------- verified against the kernels

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("density", DENSITIES)
def test_sop_equals_kernel_count(backend, rate, density, rng):
    model = random_model(density, rng)
    x = rand_spikes((2, 3, 3, 9, 9), rate, rng)          # [T, B, C, H, W]
    report = energy.count(model, x, backend=backend)
    seen = record_inputs(model, x)
    assert set(report.layers) == set(seen) == {"0", "2", "5"}
    total = 0
    for name, calls in seen.items():
        m = model.get_submodule(name)
        want = sum(kernel_count(m, s, backend) for s in calls)
        indep = sum(per_frame_count(m, s, m.weight_mask) for s in calls)
        c = report.layers[name]
        assert c.sop == want == indep, f"{name} (seed {rng.seed_value})"
        assert c.synops == sum(per_frame_count(m, s, torch.ones_like(m.weight_mask)) for s in calls)
        assert c.sop_dense == pytest.approx(sum(syops_sop_dense(m, s) for s in calls), rel=1e-9, abs=1e-9)
        assert c.sop <= c.synops
        total += want
    assert report.total.sop == total
    assert report.total.energy_pj == pytest.approx(0.9 * total)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_model_with_bn_pool_lif(backend, rng):
    from snnsparse.models import SpikingCNN
    model = SpikingCNN(in_channels=2, image_size=8, channels=(4, "M", 6, "M"), hidden=7, t=3,
                       lif_kwargs={"v_threshold": 0.2}).eval()
    for m in model.modules():
        if isinstance(m, (SpikeConv2d, SpikeLinear)):
            with torch.no_grad():
                m.weight.mul_(3)
            m.set_mask(rand_mask(m.weight.shape, 0.5, rng))
    x = rand_spikes((3, 2, 2, 8, 8), 0.4, rng)            # spiking input (e.g. event frames)
    r = energy.count(model, x, backend=backend)
    seen = record_inputs(model, x)
    assert list(r.layers) == list(seen)
    for name, calls in seen.items():
        m = model.get_submodule(name)
        assert r.layers[name].sop == sum(kernel_count(m, s, backend) for s in calls)
    assert all(k == "BatchNorm2d" for k in r.skipped.values()) and len(r.skipped) == 2
    assert r.timesteps == 3
    assert r.total.mac == 0 and r.total.sop > 0
    # the same model fed pixels: the first conv becomes MACs, everything after stays SOPs
    model.features[0].input_kind = "auto"  # it decided "spikes" on the spike input above: decide again
    r2 = energy.count(model, torch.rand(2, 2, 8, 8, generator=rng))
    first = next(iter(r2.layers.values()))
    assert first.input == "analog" and first.mac > 0 and first.sop == 0
    assert all(c.input == "spikes" for c in list(r2.layers.values())[1:])


@pytest.mark.slow  # a subprocess (heavy); make test runs every slow test too
def test_triton_kernel_count_under_interpreter():
    """The Triton kernels' counting mode on CPU (TRITON_INTERPRET=1, set before triton loads: own process)."""
    script = textwrap.dedent("""
        import json, sys, torch
        sys.path.insert(0, %r)
        import snnsparse as ss
        from test_energy import random_model, record_inputs, kernel_count
        from conftest import spikes
        av = ss.backends.available()["triton"]
        if av is not True:
            print(json.dumps({"skip": str(av)})); sys.exit(0)
        out = []
        for seed, rate, density in [(0, 0.3, 0.5), (1, 1.0, 1.0), (2, 0.05, 0.1), (3, 0.5, 0.0)]:
            g = torch.Generator().manual_seed(seed)
            model = random_model(density, g)
            x = spikes((2, 1, 3, 9, 9), rate, g)
            r = ss.energy.count(model, x, backend="reference")
            for name, calls in record_inputs(model, x).items():
                m = model.get_submodule(name)
                out.append([seed, name, r.layers[name].sop, sum(kernel_count(m, s, "triton") for s in calls)])
        print(json.dumps({"counts": out}))
    """) % os.path.dirname(__file__)
    env = dict(os.environ, TRITON_INTERPRET="1")
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if "skip" in res:
        pytest.skip(f"triton backend unavailable under TRITON_INTERPRET=1: {res['skip']}")
    for seed, name, sop, n in res["counts"]:
        assert sop == n, f"seed {seed} layer {name}: energy sop {sop} != triton count {n}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_sop_equals_gpu_kernel_count(backend):
    av = ss.backends.available()[backend]
    if av is not True:
        pytest.skip(f"{backend} backend unavailable: {av}")
    g = torch.Generator().manual_seed(5)
    model = random_model(0.3, g).cuda()
    x = rand_spikes((4, 2, 3, 9, 9), 0.2, g).cuda()
    r = energy.count(model, x, backend=backend)
    for name, calls in record_inputs(model, x).items():
        m = model.get_submodule(name)
        assert r.layers[name].sop == sum(kernel_count(m, s, backend) for s in calls)
        assert r.layers[name].sop == sum(per_frame_count(m, s.cpu(), m.weight_mask.cpu()) for s in calls)


# ---------------------------------------------------------------- plain torch layers and SpikingJelly

def test_plain_layers_with_prune_and_zero_weights(rng):
    import torch.nn.utils.prune as prune
    conv = nn.Conv2d(2, 3, 3, padding=1)
    prune.random_unstructured(conv, "weight", amount=0.6)
    fc = nn.Linear(3 * 16, 4)
    with torch.no_grad():
        fc.weight[:, ::2] = 0                                 # no weight_mask: weight != 0
    model = nn.Sequential(conv, Spike(), nn.Flatten(1), fc)
    x = rand_spikes((5, 2, 4, 4), 0.5, rng)
    r = energy.count(model, x)
    seen = record_inputs(model, x)
    for name in ("0", "3"):
        m = model.get_submodule(name)
        s = seen[name][0]
        assert r.layers[name].sop == per_frame_count(m, s, module_mask(m)) == kernel_count(m, s, "reference")
    assert r.layers["0"].weight_density == pytest.approx(float(conv.weight_mask.mean()))
    assert r.layers["3"].weight_density == pytest.approx(0.5)
    assert "prune" in " ".join(r.layers["0"].notes) and "weight != 0" in " ".join(r.layers["3"].notes)


@pytest.mark.parametrize("padding,mode", [("same", "zeros"), (2, "reflect"), (1, "circular"), ("valid", "zeros")])
def test_padding_modes(padding, mode, rng):
    conv = nn.Conv2d(2, 3, (3, 4) if padding != "same" else (3, 3), padding=padding, padding_mode=mode)
    x = rand_spikes((3, 2, 6, 7), 0.4, rng)
    c = energy.count(conv, x).layers["Conv2d"]
    assert c.sop == per_frame_count(conv, x, module_mask(conv))
    assert c.synops == per_frame_count(conv, x, torch.ones_like(conv.weight, dtype=torch.bool))


def sj(name="spikingjelly"):
    """SpikingJelly is a test-only dependency: skip (with the reason) where it is not installed."""
    return pytest.importorskip(name, reason="spikingjelly is not installed (test-only dependency)")


def _sj_synops_per_layer(model, x):
    from spikingjelly.activation_based import functional as sjf
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter
    counter = SynOpCounter()
    with torch.no_grad(), DispatchCounterMode([counter]):
        model(x)
    sjf.reset_net(model)
    root = type(model).__name__
    return {k[len(root) + 1:]: sum(v.values()) for k, v in counter.get_counts().items() if k.startswith(root + ".")}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_synops_equals_spikingjelly_on_sj_model(rng):
    sj()
    from spikingjelly.activation_based import layer, neuron
    model = nn.Sequential(
        layer.Conv2d(2, 6, 3, padding=1, bias=False, step_mode="m"),
        layer.BatchNorm2d(6, step_mode="m"),
        neuron.LIFNode(v_threshold=0.3, step_mode="m"),
        layer.SeqToANNContainer(nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2), nn.BatchNorm2d(4)),
        neuron.LIFNode(v_threshold=0.3, step_mode="m"),
        layer.Conv2d(4, 4, 3, padding=1, padding_mode="reflect", step_mode="m"),
        neuron.LIFNode(v_threshold=0.3, step_mode="m"),
        layer.Conv2d(4, 4, 4, padding="same", step_mode="m"),   # even kernel: asymmetric padding
        neuron.LIFNode(v_threshold=0.3, step_mode="m"),
        layer.MaxPool2d(2, step_mode="m"),
        layer.Flatten(step_mode="m"),
        layer.Linear(4 * 2 * 2, 5, step_mode="m"),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(3)
    model.eval()
    x = rand_spikes((4, 2, 2, 8, 8), 0.3, rng)
    want = _sj_synops_per_layer(model, x)
    r = energy.count(model, x)
    assert set(r.layers) == {"0", "3.0", "5", "7", "11"}
    assert r.timesteps == 4
    for name, c in r.layers.items():
        assert c.synops == want[name], f"{name}: {c.synops} != SpikingJelly {want[name]} (seed {rng.seed_value})"
    assert all(r.layers[n].firing_rate > 0 for n in ("3.0", "5", "7", "11"))
    # SpikingJelly layers pruned with torch.nn.utils.prune: synops unchanged, sop = the masked count
    import torch.nn.utils.prune as prune
    prune.random_unstructured(model[0], "weight", amount=0.5)
    r = energy.count(model, x)
    seen = record_inputs(model, x)
    assert r.layers["0"].synops == want["0"]
    assert r.layers["0"].sop == per_frame_count(model[0], seen["0"][0], model[0].weight_mask)
    from spikingjelly.activation_based import functional as sjf
    sjf.reset_net(model)


def test_synops_equals_spikingjelly_on_recorded_spikes(rng):
    """Spike* layers run custom kernels SpikingJelly cannot see: feed the recorded spikes to a plain
    layer with the same (dense) weights under SynOpCounter."""
    sj()
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter
    model = random_model(0.3, rng)
    x = rand_spikes((3, 2, 3, 9, 9), 0.4, rng)
    r = energy.count(model, x)
    for name, calls in record_inputs(model, x).items():
        m = model.get_submodule(name)
        if isinstance(m, nn.Conv2d):
            plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups)
        else:
            plain = nn.Linear(m.in_features, m.out_features)
        plain.load_state_dict({"weight": m.weight, "bias": m.bias})
        counter = SynOpCounter()
        with torch.no_grad(), DispatchCounterMode([counter]):
            for s in calls:
                plain(s.flatten(0, 1) if isinstance(m, nn.Conv2d) else s)
        assert r.layers[name].synops == counter.get_total(), name


def test_single_step_sj_model_infers_T(rng):
    sj()
    from spikingjelly.activation_based import functional as sjf
    from spikingjelly.activation_based import layer, neuron

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = layer.Linear(6, 8, step_mode="s")
            self.lif = neuron.LIFNode(v_threshold=0.2, step_mode="s")
            self.fc2 = layer.Linear(8, 3, step_mode="s")

        def forward(self, x_seq):
            return torch.stack([self.fc2(self.lif(self.fc1(x))) for x in x_seq])

    m = Loop()
    x = rand_spikes((5, 2, 6), 0.5, rng)
    want = _sj_synops_per_layer(m, x)
    r = energy.count(m, x)
    assert r.timesteps == 5 and r.layers["fc1"].calls == 5
    assert r.layers["fc1"].synops == want["fc1"] and r.layers["fc2"].synops == want.get("fc2", 0)
    assert r.layers["fc1"].ann_mac == pytest.approx(2 * 6 * 8)
    sjf.reset_net(m)


# ---------------------------------------------------------------- report, table, plot, CLI

def test_report_table_plot_json(tmp_path):
    model, x = energy.demo_model(density=0.5, seed=0)
    r = energy.count(model, x)
    assert list(r.layers) == ["features.0", "features.4", "classifier.1", "classifier.3"]
    assert r.layers["features.0"].input == "analog" and r.layers["features.0"].mac > 0
    assert all(c.firing_rate > 0 for c in list(r.layers.values())[1:])
    assert r.total.sop == sum(c.sop for c in r.layers.values())
    assert r.total.energy_pj == pytest.approx(sum(c.energy_pj for c in r.layers.values()))
    assert r.energy_ratio == pytest.approx(r.total.energy_pj / r.ann_energy_pj)
    text = r.table()
    for word in ("features.4", "rate", "density", "sop_dense", "synops", "share", "Horowitz", "syops-counter",
                 "SpikingJelly", "ANN equivalent"):
        assert word in text
    json.dumps(r.to_dict(), default=str)
    pytest.importorskip("matplotlib")
    path = r.plot(str(tmp_path / "e.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_demo_and_checkpoint(tmp_path, capsys):
    import argparse
    parser = energy.add_energy_args(argparse.ArgumentParser())
    png = tmp_path / "demo.png"
    assert energy.energy_main(parser.parse_args(["--plot", str(png), "--preset", "int8"])) == 0
    out = capsys.readouterr().out
    assert "total" in out and "int8" in out and png.exists() or "matplotlib" in out
    model = nn.Sequential(SpikeConv2d(1, 2, 3), Spike(), nn.Flatten(2), SpikeLinear(2 * 4 * 4, 3))
    ckpt = tmp_path / "m.pt"
    torch.save(model, ckpt)
    js = tmp_path / "r.json"
    args = parser.parse_args([str(ckpt), "--input-shape", "2,1,1,6,6", "--spike-rate", "0.5", "--no-plot",
                              "--json", str(js), "--exact"])
    assert energy.energy_main(args) == 0
    d = json.loads(js.read_text())
    assert set(d["layers"]) == {"0", "3"} and d["timesteps"] == 2
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(SystemExit, match="state_dict"):
        energy.energy_main(parser.parse_args([str(tmp_path / "sd.pt"), "--input-shape", "1,1,1,6,6"]))
    with pytest.raises(SystemExit, match="input-shape"):
        energy.energy_main(parser.parse_args([str(ckpt)]))


def test_lead_cli_entry_point(tmp_path):
    cli = pytest.importorskip("snnsparse.cli")
    assert cli.main(["energy", "--no-plot", "--seed", "1"]) == 0


def test_model_state_restored():
    model, x = energy.demo_model()
    model.train()
    energy.count(model, x)
    assert all(m.training for m in model.modules())
    assert all(getattr(m, "v", None) is None for m in model.modules() if isinstance(m, LIF))
    assert not any(m._forward_hooks for m in model.modules())
