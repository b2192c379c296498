"""ss.nn.optimize_for_inference: the optimized model against the original one, with fresh random
inputs, masks and BatchNorm statistics every run (the `rng` fixture prints the seed).

Equality means: spikes equal at every neuron layer, except flips where the membrane is within fp32
rounding of the threshold (BatchNorm folding changes the order of the arithmetic); those are counted,
checked to be near-threshold where the upstream spikes were still identical, and must stay few. With
no flip at all, the outputs agree to fp32 tolerance.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

import snnsparse as ss
from conftest import mask
from snnsparse.nn.inference import DenseConv2d, DenseLinear, PackedConv2d, PackedLinear
from snnsparse.ops import cpp as _cpp

sj = pytest.importorskip("spikingjelly.activation_based", reason="spikingjelly 2.0 is a test dependency")
from spikingjelly.activation_based import functional as sjf, layer, neuron  # noqa: E402

pytestmark = [
    pytest.mark.skipif(_cpp.unavailable_reason() is not None,
                       reason=f"cpp backend unavailable: {_cpp.unavailable_reason()}"),
    # SpikingJelly's reset_net warns for reset() methods of modules that are not its MemoryModule (ss.nn.LIF).
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

T, B = 2, 2
PACKED = (PackedConv2d, PackedLinear)


# ------------------------------------------------------------------------------------------------
# SpikingJelly's model zoo without torchvision / h5py: the zoo modules import them at import time only
# (load_state_dict_from_url for pretrained weights; sew_resnet's distributed helpers import h5py). They
# are loaded by file with CPU-safe stand-ins that exist only while the file is imported.
from snnsparse.zoo import spikingjelly_zoo as _zoo  # noqa: E402


# ------------------------------------------------------------------------------------------------
# Models with masks and BatchNorm statistics that make every layer fire sometimes.
def _prune_all_but_first(model, rng, density=0.05):
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers[1:]:
        prune.custom_from_mask(m, "weight", mask(m.weight.shape, density, rng))
    return model


@torch.no_grad()
def _random_bn(model, rng):
    """Random running statistics (nothing recalibrated): small variances amplify the sparse conv outputs,
    positive shifts bring the membranes near the threshold."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=rng) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=rng) * 0.05 + 0.01)
            m.weight.copy_(torch.rand(c, generator=rng) + 0.5)
            m.bias.copy_(torch.rand(c, generator=rng) * 1.2 + 0.3)
    return model


def _prepare(model, rng, step_mode="m", density=0.05):
    sjf.set_step_mode(model, step_mode)
    return _prune_all_but_first(_random_bn(model, rng), rng, density).eval()


def _images(rng, c=3, size=32):
    return torch.rand(T, B, c, size, size, generator=rng)


# ------------------------------------------------------------------------------------------------
# Running and comparing.
def _is_neuron(m):
    return isinstance(m, (neuron.BaseNode, ss.nn.FusedNeuron))


def _run(model, x, step_mode):
    """Output and {neuron name: (input current, spikes)} in execution order ([T, B, ...] both modes).
    Names are the original model's (an OptimizedModel keeps its modules in `.model`)."""
    seen = {}
    named = model.model if isinstance(model, ss.nn.optimize.OptimizedModel) else model
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: seen.setdefault(k, []).append((i[0], o)))
             for k, m in named.named_modules() if _is_neuron(m)]
    sjf.reset_net(model)
    try:
        with torch.no_grad():
            out = model(x) if step_mode == "m" else torch.stack([model(xt) for xt in x])
    finally:
        for h in hooks:
            h.remove()
    join = torch.cat if step_mode == "m" else torch.stack
    return out, {k: (join([c[0] for c in v]), join([c[1] for c in v])) for k, v in seen.items()}


@torch.no_grad()
def _near_threshold(node, x_seq, step_mode, rel=1e-4):
    """Where the spikes of `node` (a copy) on x_seq change when the threshold moves by +-rel: the
    membrane is within that of the threshold there (or follows from such a spike)."""
    th = float(node.v_threshold)
    out = []
    for sign in (-1, 1):
        n = copy.deepcopy(node)
        n.v_threshold = th + sign * rel * max(1.0, abs(th))
        n.reset()
        out.append(n(x_seq) if step_mode == "m" else torch.stack([n(xt) for xt in x_seq]))
    return out[0] != out[1]


def _compare(model, opt, x, step_mode="m"):
    """Spikes at every neuron equal but for near-threshold flips (counted); outputs close when none.
    Returns ({neuron name: firing rate}, number of flips)."""
    ref, ref_neurons = _run(model, x, step_mode)
    out, opt_neurons = _run(opt, x, step_mode)
    assert list(opt_neurons) == list(ref_neurons), "the optimized model must keep every neuron, under its name"
    flipped_upstream, flips, total = False, 0, 0
    for name, (x_ref, s_ref) in ref_neurons.items():
        s_opt = opt_neurons[name][1]
        assert s_opt.shape == s_ref.shape
        diff = s_opt != s_ref
        n = int(diff.sum())
        if n and not flipped_upstream:
            # Upstream spikes identical: only a membrane within rounding of the threshold may flip.
            unexplained = diff & ~_near_threshold(model.get_submodule(name), x_ref, step_mode)
            assert not unexplained.any(), f"neuron layer {name!r}: {int(unexplained.sum())} spikes differ"
        flipped_upstream |= n > 0
        flips += n
        total += s_ref.numel()
    print(f"spike flips near the threshold: {flips} of {total}")
    assert flips <= max(20, total // 1000), f"{flips} spike flips of {total}"
    if flips == 0:
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert out.shape == ref.shape
    return {k: float(s.float().mean()) for k, (_, s) in ref_neurons.items()}, flips


def test_near_threshold_check_of_this_file():
    """The flip check above (rarely exercised: flips are rare) marks a membrane at the threshold, and
    only that (and what follows from its spike)."""
    node = neuron.LIFNode(tau=2.0, step_mode="m")
    x = torch.tensor([[2.0, 2.5, 0.3], [0.0, 0.0, 0.0]])  # H[0] = x / 2: exactly 1.0 (fires), 1.25, 0.15
    near = _near_threshold(node, x.unsqueeze(-1), "m").squeeze(-1)
    assert near.tolist() == [[True, False, False], [False, False, False]]


def _assert_fires(rates, at_least=0.75):
    firing = [k for k, r in rates.items() if 0 < r < 1]
    assert len(firing) >= at_least * len(rates), f"too few neuron layers fire (the test would be vacuous): {rates}"


def _nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def _assert_packed_only(opt, model):
    """Spike-input layers keep only their packing and bias (no dense weight, no mask), and the optimized
    model's state is smaller than the dense model's (fp32 weights + bool masks)."""
    packed = [m for m in opt.modules() if isinstance(m, PACKED)]
    assert packed
    for m in packed:
        assert not list(m.parameters())
        names = {n for n, _ in m.named_buffers()}
        assert names <= {"bias"} | {f"packed_{i}" for i in range(len(m.packed.tensors))}, names
        assert not hasattr(m, "weight") and not hasattr(m, "weight_mask")
    assert not [n for n, p in opt.named_parameters() if p.requires_grad]
    dense = _nbytes(model.parameters()) + sum(m.weight_mask.numel() for m in model.modules()
                                               if isinstance(getattr(m, "weight_mask", None), torch.Tensor))
    assert _nbytes(opt.state_dict().values()) < dense


def _rows(report, action=None, original=None):
    return [r for r in report if (action is None or r.action == action)
            and (original is None or r.original.endswith(original))]


def _assert_bn_all_folded(report, expected):
    bns = [r for r in report if "BatchNorm" in r.original]
    assert len(bns) == expected and all(r.action == "bn-folded" for r in bns), str(report)


# ------------------------------------------------------------------------------------------------
# SpikingJelly model zoo.
def test_spiking_resnet18(rng):
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_zoo("spiking_resnet").spiking_resnet18(spiking_neuron=neuron.LIFNode, num_classes=10), rng)
    x = _images(rng)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    _assert_bn_all_folded(report, 20)  # 17 in the blocks' branches and the stem, 3 in downsample paths
    assert report["conv1"].action == "dense-analog" and "model input" in report["conv1"].reason
    # layer4's map is 1x1 at 32x32: the average pool's one bin is one pixel, so fc gets spikes
    assert report["avgpool"].action == "kept-values" and report["fc"].action == "packed-event"
    convs = [r for r in _rows(report, original="Conv2d") if r.name != "conv1"]
    assert len(convs) == 19 and all(r.action == "packed-event" for r in convs)
    assert report["layer2.0.downsample.0"].action == "packed-event"
    assert all(r.action == "neuron-fused" for r in _rows(report, original="LIFNode"))
    _assert_fires(_compare(model, opt, x)[0])
    _assert_packed_only(opt, model)


@pytest.mark.parametrize("cnf,node", [("ADD", neuron.LIFNode), ("IAND", neuron.IFNode)])
def test_sew_resnet18(rng, cnf, node):
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_zoo("sew_resnet").sew_resnet18(spiking_neuron=node, cnf=cnf, num_classes=10), rng)
    x = _images(rng)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    _assert_bn_all_folded(report, 20)
    # The first block's input is the stem neuron's spikes (through max-pool); every later block's input
    # is the previous block's SEW output.
    assert report["layer1.0.conv1"].action == "packed-event"
    later = ["layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0", "layer4.1.conv1"]
    if cnf == "ADD":
        for name in later:  # spike counts: the counts kernel (format 3) or one pass per bit plane (PackedPlanesConv2d)
            assert report[name].action == "packed-event"
            how = "the counts kernel" if report[name].format == "DENSE_BLOCKS" else "bit plane"
            assert "multi-level input (SEW ADD counts" in report[name].reason and how in report[name].reason
    else:
        for name in later:
            assert report[name].action == "packed-event" and "SEW AND/IAND" in report[name].reason
        if_rows = _rows(report, original="IFNode")
        assert if_rows and all(r.action == "neuron-fused" and "ss.nn.IF" in r.reason for r in if_rows)
    assert all(r.action == "packed-event" for r in _rows(report, original="Conv2d") if r.name.endswith("conv2"))
    _assert_fires(_compare(model, opt, x)[0])
    _assert_packed_only(opt, model)


def _small_vgg11_bn(rng):
    """spiking_vgg11_bn as in the zoo, but its classifier narrowed to fit a unit test (the zoo's
    7x7 avgpool + 25088x4096 linear is 100 M parameters): same structure, 1x1 avgpool, 256 wide.
    Its linear layers have no BatchNorm: larger weights make their neurons fire."""
    model = _zoo("spiking_vgg").spiking_vgg11_bn(spiking_neuron=neuron.LIFNode, num_classes=10)
    model.avgpool = layer.AdaptiveAvgPool2d((1, 1))
    for k, m in ((0, 512), (3, 256), (6, 256)):
        model.classifier[k] = layer.Linear(m, 10 if k == 6 else 256)
        with torch.no_grad():
            model.classifier[k].weight.normal_(0.0, 0.5 if k == 0 else 8.0, generator=rng)
    return model


def test_spiking_vgg11_bn(rng):
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_small_vgg11_bn(rng), rng)
    x = _images(rng)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    _assert_bn_all_folded(report, 8)
    assert report["features.0"].action == "dense-analog"
    assert all(r.action == "packed-event" for r in _rows(report, original="Conv2d") if r.name != "features.0")
    # the 1x1 average pool of the 1x1 spike map of a 32x32 image averages one pixel per bin: spikes
    assert report["avgpool"].action == "kept-values"
    assert report["classifier.0"].action == "packed-event"
    assert report["classifier.3"].action == "packed-event" and report["classifier.6"].action == "packed-event"
    assert report["classifier.2"].action == "left" and "spikes stay spikes" in report["classifier.2"].reason
    _assert_fires(_compare(model, opt, x)[0])
    _assert_packed_only(opt, model)


@pytest.mark.slow
def test_spiking_vgg11_bn_full_classifier(rng):
    """The zoo model unchanged (100 M parameters, a few GB and tens of seconds on a CPU)."""
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_zoo("spiking_vgg").spiking_vgg11_bn(spiking_neuron=neuron.LIFNode, num_classes=10), rng)
    x = _images(rng)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    _assert_bn_all_folded(report, 8)
    assert report["classifier.3"].action == "packed-event"
    _compare(model, opt, x)
    _assert_packed_only(opt, model)


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_plif_cifar10net(rng, step_mode):
    torch.manual_seed(rng.initial_seed())
    model = _zoo("parametric_lif_net").CIFAR10Net(channels=16, spiking_neuron=neuron.ParametricLIFNode)
    with torch.no_grad():  # its linear layers have no BatchNorm: larger weights make their neurons fire
        model.conv_fc[22].weight.normal_(0.0, 2.0, generator=rng)
        model.conv_fc[25].weight.normal_(0.0, 8.0, generator=rng)
    model = _prepare(model, rng, step_mode)
    x = _images(rng)
    opt = ss.nn.optimize_for_inference(model, x if step_mode == "m" else x[0])
    report = opt.report()
    print(report)
    _assert_bn_all_folded(report, 6)
    plif_rows = _rows(report, original="ParametricLIFNode")
    assert plif_rows and all(r.action == "neuron-fused" and "ss.nn.ParametricLIF" in r.reason for r in plif_rows)
    assert report["conv_fc.22"].action == "packed-event" and report["conv_fc.25"].action == "packed-event"
    assert report["conv_fc.21"].action == "left"  # eval-mode dropout: spikes stay spikes
    _assert_fires(_compare(model, opt, x, step_mode)[0])
    _assert_packed_only(opt, model)


# ------------------------------------------------------------------------------------------------
# Random small graphs of each pattern, against the unfused model.
class _Block(nn.Module):
    """A spiking-ResNet basic block: BN in the residual branch and in the downsample path, currents
    added before the neuron."""

    def __init__(self, cin, cout, stride, k, bias, step_mode, groups=1, dilation=1):
        super().__init__()
        self.conv1 = layer.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation, groups, bias=bias,
                                  step_mode=step_mode)
        self.bn1 = layer.BatchNorm2d(cout, step_mode=step_mode)
        self.sn1 = neuron.LIFNode(step_mode=step_mode)
        self.conv2 = layer.Conv2d(cout, cout, k, 1, k // 2, bias=bias, step_mode=step_mode)
        self.bn2 = layer.BatchNorm2d(cout, step_mode=step_mode)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(layer.Conv2d(cin, cout, 1, stride, bias=False, step_mode=step_mode),
                                            layer.BatchNorm2d(cout, step_mode=step_mode))
        self.sn2 = neuron.LIFNode(step_mode=step_mode, v_reset=None, tau=3.0)

    def forward(self, x):
        out = self.bn2(self.conv2(self.sn1(self.bn1(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return self.sn2(out)


def _residual_net(rng, step_mode):
    def draw(*choices):
        return choices[int(torch.randint(len(choices), (), generator=rng))]

    c0, c1 = draw(4, 8), draw(8, 12)
    k, bias, groups, dilation = draw(1, 3), draw(False, True), draw(1, 2), draw(1, 2)
    stem = [layer.Conv2d(3, c0, 3, padding=1, step_mode=step_mode), layer.BatchNorm2d(c0, step_mode=step_mode),
            neuron.LIFNode(step_mode=step_mode)]
    blocks = [_Block(c0, c0, 1, k, bias, step_mode, groups, dilation),
              _Block(c0, c1, draw(1, 2), k, bias, step_mode, groups, dilation)]
    head = [layer.AdaptiveAvgPool2d((1, 1), step_mode=step_mode), layer.Flatten(step_mode=step_mode),
            layer.Linear(c1, 5, step_mode=step_mode)]
    return nn.Sequential(*stem, *blocks, *head)


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_random_residual_graph(rng, step_mode):
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_residual_net(rng, step_mode), rng, step_mode, density=0.3)
    x = _images(rng, size=8)
    opt = ss.nn.optimize_for_inference(model, x if step_mode == "m" else x[0])
    report = opt.report()
    print(report)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    _assert_bn_all_folded(report, n_bn)
    assert report["3.conv1"].action == "packed-event" and report["4.conv1"].action == "packed-event"
    assert all(r.action == "neuron-fused" for r in _rows(report, original="LIFNode"))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in opt.modules())
    _compare(model, opt, x, step_mode)


class _SharedNeuron(nn.Module):
    """One LIFNode called twice per forward: SpikingJelly carries its v from the first call into the second."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = layer.Conv2d(3, c, 3, padding=1, step_mode="m")
        self.conv2 = layer.Conv2d(c, c, 3, padding=1, step_mode="m")
        self.sn = neuron.LIFNode(step_mode="m")

    def forward(self, x):
        return self.sn(self.conv2(self.sn(self.conv1(x))))


def test_neuron_called_twice_keeps_its_state_between_calls(rng):
    torch.manual_seed(rng.initial_seed())
    model = _SharedNeuron(6).eval()
    with torch.no_grad():
        model.conv1.weight.normal_(0.0, 1.0, generator=rng)
        model.conv2.weight.normal_(0.0, 1.0, generator=rng)
    x = _images(rng, size=6)
    opt = ss.nn.optimize_for_inference(model, x)
    assert opt.report()["sn"].action == "neuron-fused" and "called more than once" in opt.report()["sn"].reason
    assert opt.model.sn.stateful
    rates, _ = _compare(model, opt, x)
    assert 0 < rates["sn"] < 1


def test_random_linear_bn1d_graph(rng):
    """Linear -> BatchNorm1d in both layouts that normalise the linear's features: SpikingJelly's
    multi-step layer.BatchNorm1d on [T, B, M], and SeqToANNContainer(Linear, BatchNorm1d)."""
    torch.manual_seed(rng.initial_seed())
    h = int(torch.randint(8, 24, (), generator=rng))
    model = nn.Sequential(
        layer.Flatten(step_mode="m"),
        layer.Linear(3 * 4 * 4, h, step_mode="m"), layer.BatchNorm1d(h, step_mode="m"), neuron.LIFNode(step_mode="m"),
        layer.SeqToANNContainer(nn.Linear(h, h), nn.BatchNorm1d(h)), neuron.LIFNode(step_mode="m"),
        layer.Linear(h, h, bias=False, step_mode="m"), layer.BatchNorm1d(h, step_mode="m"),
        neuron.LIFNode(step_mode="m"), layer.Linear(h, 3, step_mode="m"))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(4.0)
    model = _prepare(model, rng, density=0.3)
    x = _images(rng, size=4)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    _assert_bn_all_folded(report, 3)
    assert report["1"].action == "dense-analog"
    assert report["4.0"].action == "packed-event" and report["6"].action == "packed-event"
    assert opt.model.get_submodule("1").fold_rank == 3 and opt.model.get_submodule("4.0").fold_rank == 2
    _assert_fires(_compare(model, opt, x)[0])
    # BatchNorm1d normalises dim 1: at another rank the folded layer would compute something else.
    with pytest.raises(ValueError, match="rank-3 input"):
        opt.model.get_submodule("1")(torch.rand(T * B, 3 * 4 * 4))


def test_batchnorm1d_on_the_wrong_dim_is_not_folded(rng):
    """A plain BatchNorm1d on a linear's [T, B, M] output normalises dim 1 (B), not the features."""
    torch.manual_seed(rng.initial_seed())
    model = nn.Sequential(nn.Linear(6, 2), nn.BatchNorm1d(2)).eval()
    x = torch.rand(3, 2, 6, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    assert opt.report()["1"].action == "left" and "not the linear layer's output features" in opt.report()["1"].reason
    torch.testing.assert_close(opt(x), model(x))


def test_random_seq_to_ann_container_graph(rng):
    torch.manual_seed(rng.initial_seed())
    c = int(torch.randint(4, 10, (), generator=rng))
    model = nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)),
        neuron.LIFNode(step_mode="m"),
        layer.SeqToANNContainer(nn.MaxPool2d(2)),
        layer.SeqToANNContainer(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)),
        neuron.LIFNode(step_mode="m"),
        layer.SeqToANNContainer(nn.Flatten(), nn.Linear(c * 4 * 4, 4)))
    model = _prepare(model, rng, density=0.3)
    x = _images(rng, size=8)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    _assert_bn_all_folded(report, 2)
    assert report["0.0"].action == "dense-analog"
    assert report["3.0"].action == "packed-event" and report["5.1"].action == "packed-event"
    assert list(opt.model.get_submodule("3")._modules) == ["0"]  # the BN is gone from the container
    _assert_fires(_compare(model, opt, x)[0])


def test_snnsparse_model_untraceable_root(rng):
    """ss.models.SpikingCNN branches on x.dim() in its forward: fx cannot trace it, so its children are
    optimized one by one (said in the report); BatchNorm inside its Sequential is still folded."""
    torch.manual_seed(rng.initial_seed())
    model = _random_bn(ss.models.SpikingCNN(in_channels=2, image_size=8, channels=(6, "M", 8, "M"), classes=3, t=T,
                                            hidden=10), rng).eval()
    for m in model.modules():
        if isinstance(m, (ss.nn.SpikeConv2d, ss.nn.SpikeLinear)) and m is not model.features[0]:
            m.set_mask(mask(m.weight.shape, 0.3, rng))
    x = torch.rand(T, B, 2, 8, 8, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    assert any("fx could not trace '<model>'" in n for n in report.notes)
    _assert_bn_all_folded(report, 2)
    assert report["features.0"].action == "dense-analog" and report["features.4"].action == "packed-event"
    # SpikingCNN declares forward = classifier(features(x)): features' spikes reach the classifier
    assert report["classifier.1"].action == "packed-event" and "features.6" in report["classifier.1"].reason
    assert report["classifier.3"].action == "packed-event"
    _compare(model, opt, x)


def test_spiking_cnn_pipeline_claim(rng):
    """The claim SpikingCNN makes to optimize_for_inference (snnsparse_pipeline): its forward is
    classifier(features(x)).mean(0), for time-major input and (direct encoding) for images."""
    model = _random_bn(ss.models.SpikingCNN(in_channels=2, image_size=8, channels=(6, "M", 8), classes=3, t=T,
                                            hidden=10), rng).eval()
    assert type(model).snnsparse_pipeline == ("features", "classifier")
    for x in (torch.rand(T, B, 2, 8, 8, generator=rng) * 3, torch.rand(B, 2, 8, 8, generator=rng) * 3):
        with torch.no_grad():
            sjf.reset_net(model)
            out = model(x)
            sjf.reset_net(model)
            xs = x if x.dim() == 5 else x.unsqueeze(0).expand(T, *x.shape)
            torch.testing.assert_close(out, model.classifier(model.features(xs)).mean(0), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# What is left, and errors.
class _DataDependent(nn.Module):
    """A custom module fx cannot trace (its forward branches on a tensor's value)."""

    def forward(self, x):
        if x.sum() >= 0:
            return x * 2.0
        return x


class _MyConv(nn.Conv2d):
    """A Conv2d subclass with its own forward: convert's rules leave it."""

    def forward(self, x):
        return super().forward(x) * 0.5


def test_unsupported_layers_are_left_and_reported(rng):
    torch.manual_seed(rng.initial_seed())
    model = nn.Sequential(
        layer.Conv2d(2, 6, 3, padding=1, step_mode="m"), layer.BatchNorm2d(6, step_mode="m"),
        neuron.LIFNode(step_mode="m"),
        _DataDependent(),
        layer.SeqToANNContainer(_MyConv(6, 6, 3, padding=1), nn.BatchNorm2d(6)),
        neuron.LIFNode(step_mode="m"),
        layer.SeqToANNContainer(nn.Conv2d(6, 4, 3, padding=1)))
    model = _prepare(model, rng, density=0.3)
    x = _images(rng, c=2, size=6)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    assert report["3"].action == "left" and "fx could not trace it" in report["3"].reason
    assert report["4.0"].action == "left" and "forward may compute something else" in report["4.0"].reason
    assert report["4.1"].action == "left" and "is left unchanged" in report["4.1"].reason
    assert report["6.0"].action == "packed-event"
    assert isinstance(opt.model.get_submodule("3"), _DataDependent)
    assert type(opt.model.get_submodule("4.0")) is _MyConv and type(opt.model.get_submodule("4.1")) is nn.BatchNorm2d
    assert "left" in str(report) and "_MyConv" in str(report)
    _compare(model, opt, x)


def test_analog_input_after_unknown_op_runs_dense(rng):
    """A conv whose input is not known to be spikes runs dense (never a packed kernel on guessed spikes)."""
    torch.manual_seed(rng.initial_seed())
    model = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1, step_mode="m"), neuron.LIFNode(step_mode="m"),
                          _DataDependent(), layer.Conv2d(4, 4, 3, padding=1, step_mode="m")).eval()
    x = _images(rng, c=2, size=6) * 4
    opt = ss.nn.optimize_for_inference(model, x)
    assert opt.report()["3"].action == "dense-analog" and "'2' (_DataDependent)" in opt.report()["3"].reason
    assert isinstance(opt.model.get_submodule("3"), DenseConv2d)
    with torch.no_grad():
        sjf.reset_net(model)
        torch.testing.assert_close(opt(x), model(x))


def test_nonbinary_input_to_a_packed_layer_raises(rng):
    model = nn.Sequential(nn.Linear(4, 6), ss.nn.LIF(), nn.Linear(6, 3)).eval()
    x = torch.rand(T, B, 4, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    packed = opt.model.get_submodule("2")
    assert isinstance(packed, PackedLinear) and isinstance(opt.model.get_submodule("0"), DenseLinear)
    with pytest.raises(ss.functional.NonBinarySpikesError, match=r"'2' \(PackedLinear\).*not binary"):
        packed(torch.full((2, 6), 0.5))


def test_refuses_training_mode():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match=r"training mode.*call model\.eval\(\)"):
        ss.nn.optimize_for_inference(model, torch.rand(1, 1, 5, 5))
    model.eval()
    model[1].train()
    with pytest.raises(ValueError, match="'1'"):
        ss.nn.optimize_for_inference(model, torch.rand(1, 1, 5, 5))


def test_refuses_example_inputs_the_model_cannot_run():
    model = nn.Sequential(layer.Conv2d(3, 4, 3, step_mode="m"), neuron.LIFNode(step_mode="m")).eval()
    with pytest.raises(ValueError, match=r"cannot run example_inputs \(Tensor\[2, 3, 8, 8\].*expected x with shape"):
        ss.nn.optimize_for_inference(model, torch.rand(2, 3, 8, 8))  # multi-step wants [T, B, C, H, W]
    with pytest.raises(ValueError, match="example_inputs"):
        ss.nn.optimize_for_inference(model, torch.rand(2, 2, 5, 8, 8))  # 5 channels, the conv takes 3
    with pytest.raises(TypeError, match="example_inputs must be a Tensor or a tuple"):
        ss.nn.optimize_for_inference(model, {"x": torch.rand(2, 2, 3, 8, 8)})


def test_refuses_a_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        ss.nn.optimize_for_inference(lambda x: x, torch.rand(2))


def test_packed_false_runs_every_layer_dense_with_the_same_folds(rng):
    """packed=False (the e2e benchmark's second baseline): the same BatchNorm folds and fused neurons, every
    conv / linear dense torch, the same spikes; a non-bool is refused."""
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_zoo("spiking_resnet").spiking_resnet18(spiking_neuron=neuron.LIFNode, num_classes=10), rng)
    x = _images(rng)
    opt = ss.nn.optimize_for_inference(model, x, packed=False)
    report = opt.report()
    assert not [m for m in opt.modules() if isinstance(m, PACKED)]
    assert report.counts()["packed-event"] == 0
    assert "packed=False was asked for" in report["layer1.0.conv1"].reason
    _assert_bn_all_folded(report, 20)
    _assert_fires(_compare(model, opt, x)[0])
    with pytest.raises(TypeError, match="packed"):
        ss.nn.optimize_for_inference(model, x, packed="no")


def test_optimized_model_is_inference_only_and_the_original_untouched(rng):
    torch.manual_seed(rng.initial_seed())
    model = nn.Sequential(layer.Conv2d(2, 4, 3, step_mode="m"), layer.BatchNorm2d(4, step_mode="m"),
                          neuron.LIFNode(step_mode="m"), layer.Conv2d(4, 4, 3, step_mode="m")).eval()
    before = copy.deepcopy(model.state_dict())
    x = _images(rng, c=2, size=7)
    opt = ss.nn.optimize_for_inference(model, x)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model[1], layer.BatchNorm2d) and isinstance(model[2], neuron.LIFNode)
    with pytest.raises(RuntimeError, match="inference-only"):
        opt.train()
    opt.eval()  # allowed: it is in eval mode already
    with pytest.raises(RuntimeError, match="packed"):
        opt.double()
    assert opt(x).requires_grad is False


def _storages(model):
    """Data pointers of every tensor a module of `model` holds (parameters, buffers, plain attributes)."""
    found = set()
    for m in model.modules():
        for t in [*m._parameters.values(), *m._buffers.values(), *vars(m).values()]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes():
                found.add(t.untyped_storage().data_ptr())
    return found


def test_optimized_model_shares_no_memory_with_the_original(rng):
    """optimize_for_inference reads the original's weights without copying them first, then clones what
    the result keeps of them: a layer left as it is (_MyConv and the BatchNorm after it), the first conv's
    bias, a prune mask. Changing the original afterwards changes nothing in the optimized model, and the
    original's parameters still want gradients."""
    torch.manual_seed(rng.initial_seed())
    model = nn.Sequential(
        layer.Conv2d(2, 6, 3, padding=1, step_mode="m"), layer.BatchNorm2d(6, step_mode="m"),
        neuron.LIFNode(step_mode="m"),
        layer.SeqToANNContainer(_MyConv(6, 6, 3, padding=1), nn.BatchNorm2d(6)),
        neuron.LIFNode(step_mode="m"),
        layer.SeqToANNContainer(nn.Conv2d(6, 4, 3, padding=1)), layer.Flatten(step_mode="m"),
        layer.Linear(4 * 5 * 5, 3, step_mode="m"))
    model = _prepare(model, rng, density=0.3)
    x = _images(rng, c=2, size=5)
    opt = ss.nn.optimize_for_inference(model, x)
    assert opt.report()["3.0"].action == "left"
    assert not _storages(model) & _storages(opt)
    with torch.no_grad():
        y = opt(x)
        for p in model.parameters():
            p.mul_(-3.0)
        torch.testing.assert_close(opt(x), y, rtol=0, atol=0)
    assert all(p.requires_grad for p in model.parameters())


class _SparseBuffer(nn.Module):
    """A module holding a sparse buffer (no single storage) next to its layers."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("adjacency", torch.eye(4).to_sparse())

    def forward(self, x):
        return self.fc(torch.sparse.mm(self.adjacency, x.T).T)


def test_a_sparse_buffer_is_kept_and_not_shared(rng):
    model = _SparseBuffer().eval()
    x = torch.rand(2, 4, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    with torch.no_grad():
        torch.testing.assert_close(opt(x), model(x))
    assert opt.model.adjacency.is_sparse and opt.model.adjacency is not model.adjacency


class _WritesItsWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        with torch.no_grad():
            self.fc.weight.mul_(0.5)  # the outputs depend on how often the model ran
        return self.fc(x)


def test_refuses_a_forward_that_writes_its_parameters(rng):
    model = _WritesItsWeight().eval()
    with pytest.raises(RuntimeError, match="wrote one of its parameters"):
        ss.nn.optimize_for_inference(model, torch.rand(2, 4, generator=rng))


@pytest.mark.parametrize("cls, base", [(ss.nn.SpikeLinear, lambda: nn.Linear(5, 3)),
                                       (ss.nn.SpikeConv2d, lambda: nn.Conv2d(2, 3, 3)),
                                       (ss.nn.SpikeConv1d, lambda: nn.Conv1d(2, 3, 3))])
def test_from_dense_copy_false_shares_the_weights(rng, cls, base):
    torch.manual_seed(rng.initial_seed())
    dense = base()
    prune.custom_from_mask(dense, "weight", mask(dense.weight.shape, 0.5, rng))
    shared, copied = cls.from_dense(dense, copy=False), cls.from_dense(dense)
    for new in (shared, copied):
        assert torch.equal(new.weight, dense.weight_orig) and torch.equal(new.bias, dense.bias)
        assert torch.equal(new.weight_mask, dense.weight_mask.bool())
    assert shared.weight.data_ptr() == dense.weight_orig.data_ptr() and shared.bias.data_ptr() == dense.bias.data_ptr()
    assert copied.weight.data_ptr() != dense.weight_orig.data_ptr() and copied.bias.data_ptr() != dense.bias.data_ptr()
    with pytest.raises(TypeError, match="copy must be a bool"):
        cls.from_dense(dense, copy="no")  # truthy: would silently copy


def test_fastest_packing_times_each_format_and_screens_out_slow_ones(monkeypatch):
    """On a fake clock (each run advances it by the format's cost): the fastest format wins, a format whose
    screening run is over 3x the fastest one gets no more runs, wherever it comes in the order; one that
    cannot be packed is skipped."""
    import enum
    import types
    from snnsparse.nn import optimize as O

    Fmt = enum.IntEnum("Fmt", {"A": 1, "B": 2, "C": 3, "D": 4})
    cost = {1: 5.0, 2: 1.0, 3: 3.5, 4: 2.9}
    clock, runs = [0.0], {f: 0 for f in cost}
    monkeypatch.setattr(O.time, "perf_counter", lambda: clock[0])

    def pack(fmt):
        if fmt == 5:
            raise RuntimeError("this build cannot serve it")
        return types.SimpleNamespace(format=Fmt(fmt) if fmt else 0)  # 0: the kernels' density rule

    def run(p, x):
        runs[int(p.format)] += 1
        clock[0] += cost[int(p.format)]

    best, note = O._fastest_packing(pack, run, (1, 2, 5, 3, 4), torch.zeros(1))
    assert best.format == Fmt.B
    # two screening runs each (a warm-up, then the timed one); the two kept ones a warm-up on all frames, then
    # the timed runs
    assert runs == {1: 2, 2: 3 + O._TIMING_RUNS, 3: 2, 4: 3 + O._TIMING_RUNS}
    assert note == ("format timed on example_inputs: B 1000.00 ms, D 2900.00 ms (screened out, timed on 1 of 1 "
                    "frames: C 3500.00 ms, A 5000.00 ms)")
    with pytest.raises(RuntimeError, match="no packing format"):  # the layer then runs dense, with the reason
        O._fastest_packing(pack, run, (5,), torch.zeros(1))
    best, note = O._fastest_packing(pack, run, (1, 2), None)  # no binary example input: nothing is timed
    assert best.format == 0 and "density rule" in note and sum(runs.values()) == 4 + 2 * (3 + O._TIMING_RUNS)


@pytest.mark.parametrize("fmt", [1, 2, 3, 4])
@pytest.mark.parametrize("top", [0, 1, 2, 3, 9, 15, 16, 255, 300])
def test_counts_conv_equals_dense_conv_of_counts(rng, fmt, top, monkeypatch):
    # SEW ADD gives small integer counts; the counts layer must equal a dense conv of those counts (float64
    # reference) on every packing format: format 3 on the counts kernel in one pass, the others (and counts
    # above 15 on any format) one event pass per bit plane. Float and byte counts, the empty input and
    # values that are not counts (refused, naming the layer) included.
    from snnsparse.nn.inference import PackedPlanesConv2d
    from snnsparse.ops import conv2d as CV
    if fmt == 4 and _cpp.cpu_isa() == "generic":
        pytest.skip("format 4 (output-channel rows) exists in the avx512 and avx2 kernels only")
    w = torch.randn(6, 4, 3, 3, generator=rng)
    m = mask(w.shape, 0.3, rng)
    b = torch.randn(6, generator=rng)
    layer = PackedPlanesConv2d(CV.pack(w, m, 1, fmt, stride=(1, 1), in_width=7, out_width=7), b, 1, 1, 1, name="t")
    assert layer.packed.format == fmt
    x = torch.randint(0, top + 1, (2, 3, 4, 7, 7), generator=rng).float()
    x[0, 0, 0, 0, 0] = top
    expect = torch.nn.functional.conv2d(x.flatten(0, 1).double(), (w * m).double(), b.double(), padding=1)
    passes = []
    real = CV.forward_packed
    monkeypatch.setattr(CV, "forward_packed", lambda *a, **k: passes.append(1) or real(*a, **k))
    inputs = [x] + ([x.to(torch.uint8)] if top <= 255 else []) + ([x.bool()] if top <= 1 else [])
    for inp in inputs:
        torch.testing.assert_close(layer(inp).flatten(0, 1).double(), expect, rtol=1e-5, atol=1e-4 * max(1, top))
    planes = max(1, top.bit_length())  # binary input is one plane as it is
    assert len(passes) == (0 if fmt == 3 and top <= 15 else planes * len(inputs))
    assert layer(torch.zeros(0, 4, 7, 7)).shape == (0, 6, 7, 7)
    for bad in (0.5, -1.0, float("nan"), float("inf")):
        y = x.clone()
        y[0, 1, 2, 3, 4] = bad
        with pytest.raises(ss.functional.NonBinarySpikesError, match="'t'.*not a non-negative integer count"):
            layer(y)


def test_untraceable_parent_that_indexes_its_sequential(rng):
    # snnsparse.models.SpikingCNN's forward indexes and slices `features` (features[i], len, [i:]) and fx
    # cannot trace it: its Sequential children must stay Sequential (folded BN -> Identity, positions
    # kept), with BN still folded and the spike layers still packed.
    from snnsparse.models import SpikingCNN
    torch.manual_seed(rng.initial_seed())
    model = SpikingCNN(in_channels=1, image_size=16, channels=(8, "M", 16, "M"), t=3).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.05, 0.5, generator=rng)
                m.bias.uniform_(0.0, 0.8, generator=rng)
    x = torch.rand(4, 1, 16, 16, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    assert isinstance(opt.model.features, nn.Sequential) and len(opt.model.features) == len(model.features)
    assert report["features.1"].action == "bn-folded" and report["features.4"].action == "packed-event"
    with torch.no_grad():
        torch.testing.assert_close(opt(x), model(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Review findings: each returned a wrong number without an error before its fix.
def test_neuron_in_a_block_run_several_times_keeps_its_state(rng):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = layer.Linear(8, 8, step_mode="m")
            self.sn = neuron.LIFNode(step_mode="m", tau=2.0)

        def forward(self, x):
            return self.sn(self.fc(x))

    class Parent(nn.Module):  # untraceable: runs the traced block once per time step
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return torch.cat([self.block(x[t:t + 1]) for t in range(int(x.shape[0]))])

    torch.manual_seed(rng.initial_seed())
    model = Parent().eval()
    with torch.no_grad():
        model.block.fc.weight.mul_(3)
    x = torch.rand(6, 2, 8, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    sjf.reset_net(model)
    with torch.no_grad():
        ref = model(x)
    opt.reset() if hasattr(opt, "reset") else sjf.reset_net(opt.model)
    torch.testing.assert_close(opt(x), ref)


def test_fold_leaves_a_tied_weight_unchanged(rng):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = ss.nn.SpikeConv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.b = ss.nn.SpikeConv2d(4, 4, 3, padding=1)
            self.b.weight = self.a.weight  # shared Parameter

        def forward(self, x):
            return self.bn(self.a(x)) + self.b(x)

    torch.manual_seed(rng.initial_seed())
    model = Net()
    with torch.no_grad():
        model.bn.running_var.fill_(0.25)
        model.bn.weight.fill_(3.0)
    model.eval()
    x = torch.rand(2, 4, 6, 6, generator=rng)
    opt = ss.nn.optimize_for_inference(model, x)
    with torch.no_grad():
        torch.testing.assert_close(opt(x), model(x), rtol=1e-5, atol=1e-5)


def test_packed_state_of_another_format_is_refused_and_assign_is_followed(rng):
    from snnsparse.nn.inference import PackedConv2d
    from snnsparse.ops import conv2d as CV
    w = torch.randn(16, 16, 3, 3, generator=rng)
    m = mask(w.shape, 0.03, rng)
    a = PackedConv2d(CV.pack(w, m, 1, 2, stride=(1, 1), in_width=8, out_width=8), None, 1, 1, 1)
    x = (torch.rand(2, 16, 8, 8, generator=rng) < 0.3).float()
    ref = torch.nn.functional.conv2d(x, torch.where(m, w, 0.0), None, 1, 1)
    if _cpp.cpu_isa() != "generic":  # format 4 (the same tensor shapes as 2 here) exists in those kernels only
        b = PackedConv2d(CV.pack(w, m, 1, 4, stride=(1, 1), in_width=8, out_width=8), None, 1, 1, 1)
        with pytest.raises(ValueError, match="packing"):
            b.load_state_dict(a.state_dict())  # same tensor shapes, another format
        torch.testing.assert_close(b(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a(x), ref, rtol=1e-5, atol=1e-5)  # its PackedWeight is now cached
    sd = {k: v.clone() for k, v in a.state_dict().items()}
    sd["packed_2"] = sd["packed_2"] * 2  # the values of a compressed packing
    a.load_state_dict(sd, assign=True)  # new buffer tensors: the cache must not serve the old ones
    torch.testing.assert_close(a(x), 2 * ref, rtol=1e-5, atol=1e-5)
    sd["packed_2"] = sd["packed_2"] * 1.5
    a.load_state_dict(sd)  # copied into the same tensors: their new values are read
    torch.testing.assert_close(a(x), 3 * ref, rtol=1e-5, atol=1e-5)


def test_dense_layers_take_bool_and_uint8_input(rng):
    model = nn.Sequential(nn.Linear(6, 4)).eval()
    x = torch.rand(3, 6, generator=rng) < 0.5
    opt = ss.nn.optimize_for_inference(model, x.float())
    for xx in (x, x.to(torch.uint8)):
        torch.testing.assert_close(opt(xx), model(xx.float()))
    assert opt.report().self_check_max_abs_diff is not None and opt.report().self_check_max_abs_diff < 1e-5


def test_single_pixel_bins_matches_torch():
    """The rule against torch itself: an adaptive average pool of a one-hot input has only 0/1 values in
    its output exactly when every bin covers one element."""
    from snnsparse.nn.graph import single_pixel_bins
    seen = set()
    for n in range(1, 12):
        for o in range(1, 15):
            eye = torch.eye(n, dtype=torch.float64).unsqueeze(0)  # [1, n, n]: n one-hot rows
            y = torch.nn.functional.adaptive_avg_pool1d(eye, o)
            values_kept = bool(((y == 0) | (y == 1)).all())
            assert single_pixel_bins((n,), (o,)) == values_kept, (n, o)
            seen.add(values_kept)
    assert seen == {True, False}
    assert single_pixel_bins((1, 1), (7, 7)) and not single_pixel_bins((2, 1), (1, 1))


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("size,kept", [(8, True), (16, False)])
def test_average_pool_of_one_pixel_bins_keeps_spikes(rng, size, kept, fold):
    """VGG's pattern: neuron -> max-pool -> adaptive average pool -> flatten -> linear. At 8x8 the pool
    sees a 1x1 map (bins of one pixel: spikes, the linear runs packed); at 16x16 a 2x2 map (averages:
    the linear runs dense). At 8x8 the pool only replicates: read by the flatten alone it is folded into
    the linear (fold); read through an identity first it gathers the copies itself. An input of another
    size than example_inputs' is refused by the pool with the reason, never passed on as spikes."""
    torch.manual_seed(rng.initial_seed())
    between = [] if fold else [nn.Identity()]
    model = nn.Sequential(layer.Conv2d(3, 8, 3, padding=1), layer.BatchNorm2d(8), neuron.LIFNode(),
                          layer.MaxPool2d(8), layer.AdaptiveAvgPool2d((3, 3)), *between, layer.Flatten(),
                          layer.Linear(72, 5), neuron.LIFNode())
    model = _prepare(model, rng, density=0.5)
    lin = str(len(model) - 2)
    x = _images(rng, size=size)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    assert report["4"].action == ("left" if not kept else "folded" if fold else "kept-values")
    assert report[lin].action == ("packed-event" if kept else "dense-analog")
    assert ("72 -> 8 inputs" in report[lin].reason) == (kept and fold)
    _compare(model, opt, x)
    if kept:
        msg = "folded this pool into the linear layer after it" if fold else "averages several"
        with pytest.raises(ValueError, match=f"'4' \\(SinglePixelPool\\).*{msg}"):
            opt(_images(rng, size=16))


def test_fold_replicated_columns_matches_the_replicated_linear(rng):
    """linear(x[..., index], W*M) == linear(x, W') in float64, for random replications (every source read
    at least once) and the mask edges; the new mask keeps a column where any copy was kept."""
    from snnsparse.nn.fuse import fold_replicated_columns
    cases = [(n_in, reps, density, adjacent) for n_in, reps, density in
             ((5, 3, 0.3), (1, 49, 0.05), (7, 2, 0.0), (4, 4, 1.0), (3, 1, 0.5)) for adjacent in (False, True)]
    for n_in, reps, density, adjacent in cases:
        if adjacent:  # each source read by `reps` neighbouring columns (flatten of a replicated map): a view sum
            index = torch.arange(n_in).repeat_interleave(reps)
        else:
            index = torch.cat([torch.arange(n_in), torch.randint(0, n_in, (n_in * (reps - 1),), generator=rng)])
            index = index[torch.randperm(index.numel(), generator=rng)]
        w = torch.randn(6, index.numel(), generator=rng, dtype=torch.float64)
        m = mask(w.shape, density, rng)
        x = (torch.rand(3, n_in, generator=rng) < 0.5).double()
        w2, m2 = fold_replicated_columns(w, m, index, n_in)
        want = x[..., index] @ torch.where(m, w, 0.0).T
        torch.testing.assert_close(x @ torch.where(m2, w2, 0.0).T, want, rtol=1e-12, atol=1e-12)
        # float32 weights: summed in float64 (exactly: <= 49 float32 terms of randn's range need < 53 bits),
        # rounded once, so equal to the float64 fold of the same values, rounded
        w32, _ = fold_replicated_columns(w.float(), m, index, n_in)
        assert w32.dtype == torch.float32
        assert torch.equal(w32, fold_replicated_columns(w.float().double(), m, index, n_in)[0].float())
        kept = torch.zeros(6, n_in, dtype=torch.bool)
        for k, j in enumerate(index.tolist()):
            kept[:, j] |= m[:, k]
        assert torch.equal(m2, kept)
    with pytest.raises(ValueError, match="index must have one entry per input feature"):
        fold_replicated_columns(w, m, index[:-1], n_in)
    with pytest.raises(ValueError, match="index entries must lie in"):
        fold_replicated_columns(w, m, index, n_in - 1)


class _PoolHead(nn.Module):
    """neuron -> 1x1 map -> adaptive average pool to 3x3 (a replication) -> torch.flatten -> linear; with
    `also_read`, the pool's output is read a second time (so it cannot be folded)."""

    def __init__(self, also_read: bool):
        super().__init__()
        self.conv, self.bn, self.sn = layer.Conv2d(3, 6, 3, padding=1), layer.BatchNorm2d(6), neuron.LIFNode()
        self.mp, self.pool = layer.MaxPool2d(8), layer.AdaptiveAvgPool2d((3, 3))
        self.fc, self.out = layer.Linear(54, 4), neuron.LIFNode()
        self.also_read = also_read

    def forward(self, x):
        p = self.pool(self.mp(self.sn(self.bn(self.conv(x)))))
        y = self.out(self.fc(torch.flatten(p, 2)))
        return (y, p.sum()) if self.also_read else y


@pytest.mark.parametrize("also_read", [False, True])
def test_replicating_pool_folds_only_when_the_linear_alone_reads_it(rng, also_read):
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_PoolHead(also_read), rng, density=0.5)
    x = _images(rng, size=8)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    assert report["pool"].action == ("kept-values" if also_read else "folded")
    assert report["fc"].action == "packed-event"
    sjf.reset_net(model)
    with torch.no_grad():
        ref = model(x)
    out = opt(x)
    for a, b in zip((out,) if not also_read else out, (ref,) if not also_read else ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


class _ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1, self.sn1 = layer.Conv2d(c, c, 3, padding=1), layer.BatchNorm2d(c), neuron.LIFNode()
        self.conv2, self.bn2, self.sn2 = layer.Conv2d(c, c, 3, padding=1), layer.BatchNorm2d(c), neuron.LIFNode()

    def forward(self, x):
        return self.sn2(self.bn2(self.conv2(self.sn1(self.bn1(self.conv1(x))))) + x)


class _ByteNet(nn.Module):
    """stem -> sn0 -> residual block (sn0's spikes also read by the add) -> max-pool -> flatten -> linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0, self.sn0 = layer.Conv2d(3, 8, 3, padding=1), layer.BatchNorm2d(8), neuron.LIFNode()
        self.block = _ResBlock(8)
        self.pool, self.flat, self.fc = layer.MaxPool2d(2), layer.Flatten(), layer.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.block(self.sn0(self.bn0(self.stem(x)))))))


def test_spikes_as_bytes_only_where_every_reader_takes_them(rng):
    """A neuron writes uint8 spikes only when all its readers are packed / dense inference layers (through
    flatten, dropout, the optimizer's max-pool); a neuron read by a residual add keeps floats. Outputs
    equal the original's."""
    torch.manual_seed(rng.initial_seed())
    model = _prepare(_ByteNet(), rng, density=0.3)
    x = _images(rng, size=8)
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    print(report)
    dtypes = {n: m.spike_dtype for n, m in opt.model.named_modules() if isinstance(m, ss.nn.FusedNeuron)}
    assert dtypes == {"sn0": None, "block.sn1": torch.uint8, "block.sn2": torch.uint8}, dtypes
    assert "uint8" in report["block.sn1"].reason and "uint8" not in report["sn0"].reason
    _compare(model, opt, x)
    # a container: the LIF before the packed conv writes bytes, the last one (the output) floats
    seq = _prepare(nn.Sequential(layer.Conv2d(3, 8, 3, padding=1), layer.BatchNorm2d(8), neuron.LIFNode(),
                                 layer.MaxPool2d(2), layer.Dropout(0.5), layer.Conv2d(8, 8, 3, padding=1),
                                 layer.BatchNorm2d(8), neuron.LIFNode()), rng, density=0.3)
    opt = ss.nn.optimize_for_inference(seq, x)
    dtypes = [m.spike_dtype for m in opt.modules() if isinstance(m, ss.nn.FusedNeuron)]
    assert dtypes == [torch.uint8, None], dtypes
    _compare(seq, opt, x)

