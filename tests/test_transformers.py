"""Spiking transformers through ss.nn.optimize_for_inference: SpikingJelly's Spikformer, Spike-driven
Transformer (SDT v1) and QKFormer's token / channel attention, with fresh random masks and BatchNorm
statistics every run, against the original SpikingJelly models (spikes at every neuron equal but for
counted near-threshold flips; see tests/test_optimize.py, whose comparison this file reuses)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune

import snnsparse as ss
from conftest import mask, spikes
from snnsparse.nn.inference import DenseConv1d, PackedConv1d, PackedPlanesConv1d
from snnsparse.nn.transformers import twin_forward
from snnsparse.ops import cpp as _cpp

sj = pytest.importorskip("spikingjelly.activation_based", reason="spikingjelly 2.0 is a test dependency")
from spikingjelly.activation_based import layer, neuron  # noqa: E402
from spikingjelly.activation_based.layer import attention  # noqa: E402

from snnsparse.zoo import spikingjelly_zoo as _zoo  # noqa: E402
from test_optimize import T, B, _assert_fires, _compare, _random_bn  # noqa: E402

pytestmark = [
    pytest.mark.skipif(_cpp.unavailable_reason() is not None,
                       reason=f"cpp backend unavailable: {_cpp.unavailable_reason()}"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _prepare(model, rng, density=0.05):
    """Random BN statistics (every layer fires), random masks on every conv / linear but the first."""
    _random_bn(model, rng)
    for m in [m for m in model.modules() if isinstance(m, LAYERS)][1:]:
        prune.custom_from_mask(m, "weight", mask(m.weight.shape, density, rng))
    return model.eval()


def _spikformer():
    return _zoo("spikformer").Spikformer(T=T, img_size_h=32, img_size_w=32, patch_size=4, num_classes=10,
                                         embed_dims=48, num_heads=4, depths=2)


def _sdt(pooling="0011"):
    return _zoo("spike_driven_transformer").SpikeDrivenTransformer(T=T, num_classes=10, embed_dims=32, num_heads=4,
                                                                   depths=2, pooling_stat=pooling)


def _sparse_weight_share(model, report):
    """Fraction of the conv / linear weights of `model` in packed (event-driven) layers of the report."""
    sizes = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, LAYERS)}
    packed = sum(sizes[r.name] for r in report if r.action == "packed-event")
    return packed / sum(sizes.values())


def test_spikformer(rng):
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_spikformer(), rng)
    x = torch.rand(T, B, 3, 32, 32, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    assert not report.notes, report.notes  # the whole model is one traced graph
    conv1d = [r for r in report if r.original == "Conv1d"]
    assert len(conv1d) == 8 and all(r.action == "packed-event" for r in conv1d)
    # Block inputs are sums of spikes (the residuals): Q/K/V and fc1 read them as bit planes.
    for i in range(2):
        for name in (f"blocks.{i}.attn.qkv_conv_bn.0", f"blocks.{i}.mlp.fc1.0"):
            assert "spike counts" in report[name].reason
            assert isinstance(opt.model.get_submodule(name), PackedPlanesConv1d)
        assert type(opt.model.get_submodule(f"blocks.{i}.mlp.fc2.0")) is PackedConv1d
    bns = [r for r in report if "BatchNorm" in r.original]
    assert len(bns) == 13 and all(r.action == "bn-folded" for r in bns), str(report)
    assert report["patch_embed.stages.0.conv_bn.block.0"].action == "dense-analog"  # pixels
    assert report["head"].action == "dense-analog"  # mean over tokens
    assert _sparse_weight_share(model, report) > 0.95
    _assert_fires(_compare(model, opt, x)[0])


def test_spikformer_image_input_and_other_ranks_refused(rng):
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_spikformer(), rng)
    x = torch.rand(B, 3, 32, 32, generator=rng)  # [N, C, H, W]: repeated T times by the model
    opt = ss.nn.optimize_for_inference(model, x)
    assert not opt.report().notes
    _compare(model, opt, x)
    with pytest.raises(AssertionError, match=r"optimized for images \[N, C, H, W\]"):
        opt(torch.rand(T, B, 3, 32, 32))


@pytest.mark.parametrize("pooling", ["0011", "1111"])
def test_spike_driven_transformer(rng, pooling):
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_sdt(pooling), rng)
    x = torch.rand(T, B, 3, 32, 32, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    assert not report.notes, report.notes
    convs = [r for r in report if r.original == "Conv2d"]
    assert convs[0].name == "patch_embed.stages.0.0" and convs[0].action == "dense-analog"
    assert all(r.action == "packed-event" for r in convs[1:]), str(report)
    assert "SEW AND" in report["blocks.0.attn.proj_conv"].reason  # q * LIF(sum K*V): spikes
    bns = [r for r in report if "BatchNorm" in r.original]
    assert all(r.action == "bn-folded" for r in bns), str(report)
    assert _sparse_weight_share(model, report) > 0.95
    _assert_fires(_compare(model, opt, x)[0])


@pytest.mark.parametrize("cls", ["TokenQKAttention", "ChannelQKAttention"])
def test_qkformer_attention(rng, cls):
    torch.manual_seed(rng.initial_seed())
    qka = getattr(attention, cls)(32, num_heads=4)
    model = _prepare(nn.Sequential(neuron.LIFNode(step_mode="m"), qka), rng)
    x = 2 * torch.rand(T, B, 32, 16, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    assert not report.notes
    assert report["1.qk_conv_bn.0"].action == "packed-event" and report["1.proj_conv_bn.0"].action == "packed-event"
    assert "SEW AND" in report["1.proj_conv_bn.0"].reason  # LIF(sum of Q) * K
    _assert_fires(_compare(model, opt, x)[0], at_least=0.5)


def test_attention_with_a_hook_is_left_and_reported(rng):
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_sdt(), rng)
    model.blocks[1].attn.register_forward_hook(lambda m, i, o: o * 1)
    x = torch.rand(T, B, 3, 32, 32, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    assert report["blocks.1.attn"].action == "left" and "fx could not trace" in report["blocks.1.attn"].reason
    assert report["blocks.0.attn.q_conv"].action == "packed-event"
    _compare(model, opt, x)


def test_twin_forward_covers_exact_classes_only():
    class MySSA(attention.SpikingSelfAttention):
        pass

    assert twin_forward(attention.SpikingSelfAttention(32, 4)) is not None
    assert twin_forward(MySSA(32, 4)) is None  # a subclass may compute anything
    assert twin_forward(nn.Linear(2, 2)) is None
    spikformer = _spikformer()
    assert twin_forward(spikformer) is None  # the input rank is not known
    assert twin_forward(spikformer, [((T, B, 3, 32, 32),)]) is not None
    assert twin_forward(spikformer, [((B, 3, 32, 32),), ((T, B, 3, 32, 32),)]) is None


# ------------------------------------------------------------------------------------------------
# The Conv1d inference layers.
def _conv1d_model(rng, k=1, bn=True, **kw):
    conv = nn.Conv1d(24, 40, k, bias=False, **kw)
    prune.custom_from_mask(conv, "weight", mask(conv.weight.shape, 0.3, rng))
    mods = [layer.SeqToANNContainer(conv, nn.BatchNorm1d(40)) if bn else layer.SeqToANNContainer(conv)]
    return _random_bn(nn.Sequential(neuron.LIFNode(step_mode="m"), *mods), rng).eval()


def test_packed_pointwise_conv1d_with_bn1d_folded(rng):
    model = _conv1d_model(rng)
    x = 2 * torch.rand(T, B, 24, 19, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    assert report["1.0"].action == "packed-event" and report["1.1"].action == "bn-folded"
    layer_ = opt.model.get_submodule("1.0")
    assert type(layer_) is PackedConv1d and layer_.fold_rank == 3
    _compare(model, opt, x)
    with pytest.raises(ss.functional.NonBinarySpikesError, match="1.0"):
        layer_(torch.rand(3, 24, 5))
    with pytest.raises(ValueError, match=r"input must be \[T, B, 24, L\]"):
        layer_(torch.zeros(3, 23, 5))
    with pytest.raises(ValueError, match="rank-3"):
        layer_(torch.zeros(24, 5))  # BatchNorm1d was folded for [N, C, L]


@pytest.mark.parametrize("top", [1, 2, 5])
@pytest.mark.parametrize("cfg", [dict(k=1), dict(k=3, stride=2, padding=1, groups=1)])
def test_packed_conv1d_on_spike_counts_is_exact(rng, top, cfg):
    """Spike counts (sums of spike tensors) as bit planes: equal to F.conv1d of the counts in float64."""
    from snnsparse.ops import conv2d as _conv2d
    k, stride, padding = cfg["k"], cfg.get("stride", 1), cfg.get("padding", 0)
    w = torch.randn(7, 13, k, generator=rng)
    m = mask(w.shape, 0.5, rng)
    packed = _conv2d.pack(w.unsqueeze(-2), m.unsqueeze(-2), 1, 1, stride=(1, stride))
    bias = torch.randn(7, generator=rng)
    layer_ = PackedPlanesConv1d(packed, bias, stride, padding, 1, name="x")
    x = torch.randint(0, top + 1, (3, 13, 11), generator=rng).float()
    expected = F.conv1d(x.double(), (w * m).double(), bias.double(), stride, padding)
    torch.testing.assert_close(layer_(x).double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer_(x[0]).double(), expected[0], rtol=1e-5, atol=1e-5)  # unbatched [C, L]
    with pytest.raises(ss.functional.NonBinarySpikesError, match="non-negative integer"):
        layer_(x + 0.5)


def test_other_conv1d_geometries_are_packed_too(rng):
    model = _conv1d_model(rng, k=3, padding=1, stride=2)
    x = 2 * torch.rand(T, B, 24, 9, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    assert opt.report()["1.0"].action == "packed-event" and opt.report()["1.1"].action == "bn-folded"
    assert type(opt.model.get_submodule("1.0")) is PackedConv1d
    _compare(model, opt, x)


def test_conv1d_on_analog_input_runs_dense_and_says_why(rng):
    conv = nn.Conv1d(4, 6, 3)
    model = nn.Sequential(layer.SeqToANNContainer(conv, nn.BatchNorm1d(6)), neuron.LIFNode(step_mode="m"))
    _random_bn(model, rng).eval()
    x = torch.rand(T, B, 4, 9, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    row = opt.report()["0.0"]
    assert row.action == "dense-analog" and "not spikes" in row.reason
    assert isinstance(opt.model.get_submodule("0.0"), DenseConv1d)
    _compare(model, opt, x)


def test_spike_conv1d_layers_are_optimized_too(rng):
    model = _conv1d_model(rng, bn=False)
    ss.nn.convert(model).eval()
    assert isinstance(model[1][0], ss.nn.SpikeConv1d)
    x = 2 * torch.rand(T, B, 24, 9, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    assert type(opt.model.get_submodule("1.0")) is PackedConv1d
    _compare(model, opt, x)


# ------------------------------------------------------------------------------------------------
# MultiSp-SLT tickets (snnsparse/pruning/multisp.py): dropped patches and pruned weights cost nothing.
def _multisp_ticket(rng, patch_sparsity=0.5):
    torch.manual_seed(rng.initial_seed())
    net = ss.pruning.MultiSpSLT(in_channels=2, img_size=8, patch_size=2, embed_dim=16, num_heads=2, depth=1, T=T)
    ticket = ss.pruning.MultiPrizeTicket(net, sparsity=0.5, binarize=True, include=["cpm.weight"])
    ticket.finalize()  # a sparse binary CPM: alpha * sign(W) on the kept half, pruned synapses masked
    for name, m in net.named_modules():  # the rest of the ticket: random masks
        if isinstance(m, (ss.nn.SpikeLinear,)):
            m.set_mask(mask(m.weight.shape, 0.3, rng))
    _random_bn(net, rng)
    with torch.no_grad():
        net.pos.mul_(20)  # position embeddings large enough that some patches fire
    net.select_patches(torch.rand(net.num_patches, generator=rng), patch_sparsity)
    return net.eval()


def _kernel_counts(model, x):
    """{layer name: accumulations the event kernels executed}, re-running each Spike* layer's recorded
    input through the functional API in counting mode."""
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: seen.setdefault(k, []).append(i[0]))
             for k, m in model.named_modules() if isinstance(m, (ss.nn.SpikeLinear, ss.nn.SpikeConv2d))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    counts = {}
    for name, inputs in seen.items():
        m = model.get_submodule(name)
        if m.last_input_binary is False:  # spike counts (the residual sums): the dense path ran, MACs counted
            continue
        n = 0
        for s in inputs:
            if isinstance(m, ss.nn.SpikeConv2d):
                _, c = ss.functional.spike_conv2d(s, m.weight, None, m.stride, m._explicit_padding(), m.dilation,
                                                  m.groups, mask=m.weight_mask, return_count=True)
            else:
                _, c = ss.functional.spike_linear(s, m.weight, None, mask=m.weight_mask, return_count=True)
            n += int(c)
        counts[name] = n
    return counts


def test_multisp_dropped_patches_are_never_computed(rng):
    net = _multisp_ticket(rng)
    kept = net.patch_mask
    assert 0 < int(kept.sum()) < net.num_patches
    x = spikes((T, 3, 2, 8, 8), 0.3, rng)  # binary input: the CPM runs its event kernel
    with torch.no_grad():
        full = net.cpm(x).flatten(3)[..., kept]  # the CPM over every patch, then selected
        strip = net._patch_strip(x, kept.nonzero().flatten())
        assert strip.shape[-1] == 2 * int(kept.sum())
        torch.testing.assert_close(net.cpm(strip).flatten(3), full, rtol=1e-6, atol=1e-6)
        z, z_full = net.tokens(x), net.tokens(x, select=False)[:, :, kept]
    flips = int((z != z_full).sum())
    assert flips <= max(2, z.numel() // 1000), f"{flips} CPM spikes differ"
    assert 0 < float(z.float().mean()) < 1
    # The CPM's counted work: only the kept patches, exactly (an independent per-patch reference).
    report = ss.energy.count(net, x)
    fired = x.double().sum((0, 1))  # [C, H, W] spikes per input pixel
    per_position = F.conv2d(fired[None], net.cpm.weight_mask.double(), stride=2).sum((0, 1)).flatten()  # [N]
    assert report.layers["cpm"].sop == int(per_position[kept].sum().round())
    assert report.layers["cpm"].sop < int(per_position.sum().round()) or not per_position[~kept].any()


def test_multisp_energy_count_agrees_with_the_kernels(rng):
    net = _multisp_ticket(rng)
    x = spikes((T, 3, 2, 8, 8), 0.3, rng)
    report = ss.energy.count(net, x, reset_states=True)
    for m in net.modules():
        if isinstance(m, ss.nn.LIF):
            m.reset()
    kernels = _kernel_counts(net, x)
    assert kernels and all(report.layers[name].sop == n for name, n in kernels.items()), (
        {k: (report.layers[k].sop, v) for k, v in kernels.items()})
    assert {"cpm", "attn.0.q.fc", "attn.0.proj.fc"} <= set(kernels)
    for name, counts in report.layers.items():  # the others saw spike counts or averages: MACs, no SOP
        if name not in kernels:
            assert counts.sop == 0 and counts.mac > 0, (name, counts)
    assert report.layers["cpm"].mac == 0  # binary input: no MAC anywhere but the head
    assert sum(kernels.values()) > 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.5, -0.5, 2.0 ** 31, 3.0e9])
def test_bit_planes_refuse_what_is_not_a_count(rng, bad):
    from snnsparse.nn.inference import bit_planes
    x = torch.randint(0, 4, (5, 7), generator=rng).float()
    x[2, 3] = bad
    with pytest.raises(ss.functional.NonBinarySpikesError, match="not a non-negative integer count"):
        bit_planes(x, "layer")
    x[2, 3] = 2.0 ** 20  # a large count is fine: 21 planes, exact
    planes = bit_planes(x, "layer")
    assert len(planes) == 21 and all(ss.functional.is_binary(p) for _, p in planes)
    assert torch.equal(sum(s * p for s, p in planes), x)


@pytest.mark.parametrize("top", [0, 1, 2, 255, 256, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8, torch.bool])
def test_bit_planes_sum_back_to_the_counts(rng, top, dtype):
    """Binary uint8 planes whose weighted sum is x exactly, one per bit of the largest count (one plane
    for binary input), across the uint8 / int32 edge of the fast path."""
    from snnsparse.nn.inference import bit_planes
    if dtype == torch.bool and top > 1 or dtype == torch.uint8 and top > 255:
        pytest.skip("not representable")
    x = torch.randint(0, top + 1, (3, 17), generator=rng).to(dtype)
    x[0, 0] = top
    planes = bit_planes(x, "layer")
    assert len(planes) == max(1, top.bit_length())
    assert all(p.dtype == torch.uint8 and ss.functional.is_binary(p) for _, p in planes)
    assert torch.equal(sum(s * p.double() for s, p in planes), x.double())


@pytest.mark.parametrize("qka_type", ["token", "channel"])
def test_qkformer_model(rng, qka_type):
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_zoo("qkformer").QKFormer(T=T, num_classes=10, embed_dims=48, num_heads=(2, 2, 2),
                                                depths=(1, 1, 1), qka_type=qka_type), rng)
    x = torch.rand(T, B, 3, 32, 32, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    assert not report.notes, report.notes
    assert _sparse_weight_share(model, report) > 0.95
    _assert_fires(_compare(model, opt, x)[0], at_least=0.5)


def test_maxformer_cifar(rng):
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_zoo("maxformer").MaxFormer(T=T, num_classes=10, embed_dims=48, depths=(1, 1, 1), cifar=True),
                     rng)
    x = torch.rand(T, B, 3, 32, 32, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    assert not report.notes, report.notes
    left = [r for r in report if r.action == "left" and "fx could not trace" in r.reason]
    assert not left, left
    assert _sparse_weight_share(model, report) > 0.95
    _assert_fires(_compare(model, opt, x)[0], at_least=0.5)
