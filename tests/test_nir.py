"""ss.nir: models exported to NIR by snnTorch's and SpikingJelly's own exporters import into snnsparse
with the originals' outputs; ss.nir.save round-trips a pruned model losslessly (weights, masks,
neuron settings, outputs) and SpikingJelly's / snnTorch's importers read what it writes."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import snnsparse as ss
from conftest import mask

nir = pytest.importorskip("nir", reason="nir 1.0.8 is a test dependency (requirements-dev.txt)")

DT = 1e-4


def _center(linear, inputs, level):
    """Set linear's bias so that each output's median current over inputs is `level`: its neuron then
    fires sometimes and not always, for any random weights (tests check that it does)."""
    with torch.no_grad():
        cur = linear(inputs).flatten(0, -2)
        linear.bias += level - cur.median(0).values


def _snntorch_net(snn, rng):
    """A conv net in the form snnTorch's exporter writes exactly: per-neuron beta / threshold tensors
    (its exporter needs the neuron's shape), reset to zero at once (NIR's LIF)."""
    leaky = dict(init_hidden=True, reset_mechanism="zero", reset_delay=False)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), snn.Leaky(beta=torch.rand(4, 6, 6, generator=rng) * 0.5 + 0.45,
                                                 threshold=torch.ones(4, 6, 6), **leaky),
        nn.AvgPool2d((2, 2)), nn.Flatten(), nn.Linear(4 * 3 * 3, 5),
        snn.Leaky(beta=torch.rand(5, generator=rng) * 0.5 + 0.4, threshold=torch.full((5,), 0.5), **leaky))
    with torch.no_grad():  # every layer fires sometimes (checked)
        net[0].weight.mul_(3.0)
        net[4].weight.uniform_(-0.4, 0.4, generator=rng)
    return net


def _reset_snntorch(net):
    for m in net.modules():
        if hasattr(m, "reset_mem"):
            m.reset_mem()


def _run_snntorch(net, x):
    _reset_snntorch(net)
    return torch.stack([net(xt) for xt in x])


def _run_nirtorch(model, x):
    """A model built by nirtorch.nir_to_torch (snnTorch's importer): one step per call, its state passed back."""
    state, out = None, []
    for xt in x:
        y, state = model(xt, state)
        out.append(y)
    return torch.stack(out)


def test_snntorch_export_imports_with_equal_outputs(rng, tmp_path):
    snn = pytest.importorskip("snntorch", reason="snntorch 1.0.0 is a test dependency")
    from snntorch.export_nir import export_to_nir
    torch.manual_seed(rng.initial_seed())
    net = _snntorch_net(snn, rng)
    x = torch.rand(8, 3, 1, 6, 6, generator=rng) * 2
    _reset_snntorch(net)
    with torch.no_grad():
        _center(net[4], torch.stack([net[3](net[2](net[1](net[0](xt)))) for xt in x]), 0.25)
    graph = export_to_nir(net, torch.rand(1, 1, 6, 6), ignore_dims=[0])
    nir.write(tmp_path / "snntorch.nir", graph)
    model = ss.nir.load(tmp_path / "snntorch.nir", dt=DT)  # through the file
    kinds = [type(m).__name__ for m in model.nodes.values()]
    assert kinds == ["SpikeConv2d", "Leaky", "Frames", "Flatten", "SpikeLinear", "Leaky"]
    with torch.no_grad():
        ref = _run_snntorch(net, x)
        out = model(x)
        hidden = model.nodes["1"](model.nodes["0"](x))
    assert 0 < ref.mean() < 1 and 0 < hidden.mean() < 1, "both neuron layers must fire sometimes"
    assert torch.equal(out, ref)
    # (snnTorch's own importer cannot run this graph on a batch: its Flatten(start_dim=0) folds the batch
    # in; test_snntorch_importer_reads_our_leaky_export compares with it on a linear net.)


def _sj_net(layer, neuron, rng):
    net = nn.Sequential(
        layer.Conv2d(1, 4, 3, padding=1, step_mode="m"), neuron.LIFNode(tau=2.0, step_mode="m"),
        layer.AvgPool2d(2, step_mode="m"), layer.Flatten(step_mode="m"), layer.Linear(36, 5, step_mode="m"),
        neuron.LIFNode(tau=1.5, decay_input=False, v_reset=-0.1, v_threshold=0.5, step_mode="m"))
    with torch.no_grad():
        net[0].weight.mul_(3.0)
        net[4].weight.uniform_(-0.4, 0.3, generator=rng)
    return net


def test_spikingjelly_export_imports_with_equal_outputs(rng, tmp_path):
    pytest.importorskip("spikingjelly.activation_based", reason="spikingjelly 2.0 is a test dependency")
    from spikingjelly.activation_based import functional as sjf, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir
    torch.manual_seed(rng.initial_seed())
    net = _sj_net(layer, neuron, rng)
    x = torch.rand(8, 3, 1, 6, 6, generator=rng) * 2
    with torch.no_grad():
        _center(net[4], net[:4](x), 0.45)
        sjf.reset_net(net)
    graph = export_to_nir(net, x, save_path=tmp_path / "sj.nir", dt=DT)
    # SpikingJelly's LIF fires at v >= v_threshold, NIR's at v > v_threshold: refused unless accepted.
    with pytest.raises(ValueError, match="SpikingJelly's rule v >= v_threshold, not NIR's v > v_threshold; pass "
                                         "fires_at_threshold=True"):
        ss.nir.load(graph, dt=DT)
    model = ss.nir.load(tmp_path / "sj.nir", dt=DT, fires_at_threshold=True)
    lifs = [m for m in model.nodes.values() if isinstance(m, ss.nn.LIF)]
    assert [(m.tau, m.decay_input, m.v_reset, m.v_threshold) for m in lifs] == [(2.0, True, 0.0, 1.0),
                                                                                 (1.5, False, -0.1, 0.5)]
    sjf.reset_net(net)
    with torch.no_grad():
        ref, out = net(x), model(x)
    assert 0 < ref.mean() < 1
    assert torch.equal(out, ref)


def _lif_graph(kind="LIF", **lif):
    n = 3
    full = {k: np.broadcast_to(np.asarray(v, dtype=np.float32), (n,)).copy() for k, v in lif.items()}
    return nir.NIRGraph(
        nodes={"in": nir.Input(input_type={"input": np.array([4])}),
               "fc": nir.Affine(weight=np.ones((n, 4), np.float32), bias=np.zeros(n, np.float32)),
               "lif": getattr(nir, kind)(**full), "out": nir.Output(output_type={"output": np.array([n])})},
        edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")])


def _nir_lif_reference(x, w, b, beta, thr):
    """NIR's forward-Euler LIF with v_leak = 0, v_reset = 0, r * dt / tau = 1, in float64."""
    v = torch.zeros(x.shape[1], w.shape[0], dtype=torch.float64)
    out = []
    for xt in x.double():
        v = beta * v + xt @ w.double().T + b.double()
        s = (v > thr).double()
        v = v * (1 - s)
        out.append(s)
    return torch.stack(out)


def test_lif_and_if_in_nir_form_run_exactly_and_the_rest_is_refused(rng):
    tau = DT / (1 - 0.75)
    model = ss.nir.load(_lif_graph(tau=tau, r=tau / DT, v_leak=0.0, v_threshold=1.5, v_reset=0.0), dt=DT)
    x = (torch.rand(10, 6, 4, generator=rng) < 0.4).float()
    beta = float(np.float32(1 - DT / np.float64(np.float32(tau))))
    assert torch.equal(model(x).double(), _nir_lif_reference(x, torch.ones(3, 4), torch.zeros(3), beta, 1.5))
    # IF (dt * r = 1): beta = 1.
    graph = _lif_graph(tau=tau, r=tau / DT, v_leak=0.0, v_threshold=1.5, v_reset=0.0)
    graph.nodes["lif"] = nir.IF(r=np.full(3, 1 / DT, np.float32), v_threshold=np.full(3, 2.5, np.float32),
                                v_reset=np.zeros(3, np.float32))
    model = ss.nir.load(graph, dt=DT)
    assert torch.equal(model(x).double(), _nir_lif_reference(x, torch.ones(3, 4), torch.zeros(3), 1.0, 2.5))
    refusals = {
        "v_leak != 0": dict(tau=tau, r=tau / DT, v_leak=0.2, v_threshold=1.0, v_reset=0.0),
        r"r \* dt / tau != 1": dict(tau=tau, r=2.0, v_leak=0.0, v_threshold=1.0, v_reset=0.0),
        "v_reset != 0": dict(tau=tau, r=tau / DT, v_leak=0.0, v_threshold=1.0, v_reset=0.3),
    }
    for why, params in refusals.items():
        with pytest.raises(ValueError, match=rf"LIF node 'lif' cannot be run exactly at dt=0.0001: .*{why}"):
            ss.nir.load(_lif_graph(**params), dt=DT)
    # The same LIF at another dt is another discrete model: r * dt / tau is not 1 any more.
    with pytest.raises(ValueError, match=r"r \* dt / tau != 1"):
        ss.nir.load(_lif_graph(tau=tau, r=tau / DT, v_leak=0.0, v_threshold=1.0, v_reset=0.0), dt=2 * DT)
    # Non-uniform parameters cannot go to ss.nn.LIF.
    g = _lif_graph(tau=2e-4, r=1.0, v_leak=0.0, v_threshold=1.0, v_reset=0.0)
    g.nodes["lif"].tau[0] = 3e-4
    with pytest.raises(ValueError, match="tau must be the same for every neuron"):
        ss.nir.load(g, dt=DT, fires_at_threshold=True)


def test_load_refuses_what_it_cannot_run():
    g = _lif_graph(tau=2e-4, r=1.0, v_leak=0.0, v_threshold=1.0, v_reset=0.0)
    g.nodes["lif"] = nir.LI(tau=np.full(3, 2e-4), r=np.ones(3), v_leak=np.zeros(3))
    with pytest.raises(ValueError, match="node 'lif' is a NIR LI, which ss.nir.load does not support"):
        ss.nir.load(g, dt=DT)
    g = _lif_graph(tau=2e-4, r=1.0, v_leak=0.0, v_threshold=1.0, v_reset=0.0)
    g.edges.append(("lif", "fc"))
    with pytest.raises(ValueError, match="cycle"):
        ss.nir.load(g, dt=DT, fires_at_threshold=True)
    for dt in (0, -1e-3, float("nan"), "1e-3", True):
        with pytest.raises(ValueError, match="dt must be a positive finite number"):
            ss.nir.load(g, dt=dt)
    with pytest.raises(ValueError, match="backend must be one of"):
        ss.nir.load(g, dt=DT, backend="gpu")


def _pruned_model(rng):
    model = nn.Sequential(ss.nn.SpikeConv2d(2, 4, 3, padding=1), ss.nn.LIF(tau=2.0, surrogate="atan", alpha=3.0),
                          nn.Flatten(2), ss.nn.SpikeLinear(4 * 6 * 6, 5, bias=False),
                          ss.nn.LIF(tau=1.5, v_reset=-0.1, decay_input=False, detach_reset=True))
    model[0].set_mask(mask((4, 2, 3, 3), 0.5, rng))
    model[3].set_mask(mask((5, 144), 0.1, rng))
    with torch.no_grad():
        model[0].weight.uniform_(-0.5, 2.0, generator=rng)
        model[3].weight.uniform_(-0.6, 1.0, generator=rng)
        model[0].weight_mask[0, 0, 0, 0] = True
        model[0].weight[0, 0, 0, 0] = 0.0  # a kept weight that is 0: only the metadata mask keeps it
        model[3].weight[~model[3].weight_mask] = float("nan")  # pruned = absent, even NaN: written as 0
    return model


def test_save_load_round_trip_is_lossless_with_masks(rng, tmp_path):
    torch.manual_seed(rng.initial_seed())
    model = _pruned_model(rng)
    x = (torch.rand(6, 3, 2, 6, 6, generator=rng) < 0.3).float()
    graph = ss.nir.save(model, tmp_path / "pruned.nir", x, dt=DT)
    conv_node = graph.nodes["0"]
    assert np.array_equal(conv_node.metadata["snnsparse_mask"], model[0].weight_mask.numpy())
    assert conv_node.metadata["snnsparse_density"] == pytest.approx(model[0].density())
    assert np.array_equal(conv_node.weight, (model[0].weight * model[0].weight_mask).detach().numpy())
    assert np.all(graph.nodes["3"].weight[~model[3].weight_mask.numpy()] == 0), "pruned synapses are written as 0"
    back = ss.nir.load(tmp_path / "pruned.nir", dt=DT)
    conv, lin = back.nodes["0"], back.nodes["3"]
    assert torch.equal(conv.weight_mask, model[0].weight_mask) and torch.equal(lin.weight_mask, model[3].weight_mask)
    assert torch.equal(conv.weight, model[0].weight.detach() * model[0].weight_mask)
    assert conv.weight_mask[0, 0, 0, 0] and conv.weight[0, 0, 0, 0] == 0
    assert lin.bias is None
    lifs = [m for m in back.nodes.values() if isinstance(m, ss.nn.LIF)]
    assert [(m.tau, m.v_reset, m.decay_input, m.detach_reset, m.surrogate, m.alpha) for m in lifs] == [
        (2.0, 0.0, True, False, "atan", 3.0), (1.5, -0.1, False, True, "sigmoid", None)]
    with torch.no_grad():
        ref, out = model(x), back(x)
    assert 0 < ref.mean() < 1
    assert torch.equal(out, ref)
    # Saved again, the same graph: nothing was lost on the way.
    again = ss.nir.to_nir(back, x, dt=DT)
    for name in ("0", "3"):
        assert np.array_equal(again.nodes[name].weight, graph.nodes[name].weight)
        assert np.array_equal(again.nodes[name].metadata["snnsparse_mask"], graph.nodes[name].metadata["snnsparse_mask"])


def test_spikingjelly_importer_reads_our_export(rng, tmp_path):
    pytest.importorskip("spikingjelly.activation_based", reason="spikingjelly 2.0 is a test dependency")
    pytest.importorskip("nirtorch", reason="nirtorch 2.6 is a test dependency")
    from spikingjelly.activation_based.nir_exchange import import_from_nir
    torch.manual_seed(rng.initial_seed())
    model = nn.Sequential(ss.nn.SpikeConv2d(2, 4, 3, padding=1), ss.nn.LIF(tau=2.0), nn.Flatten(2),
                          ss.nn.SpikeLinear(4 * 6 * 6, 5), ss.nn.LIF(tau=1.5, v_reset=-0.1, decay_input=False))
    model[0].set_mask(mask((4, 2, 3, 3), 0.5, rng))
    x = (torch.rand(6, 3, 2, 6, 6, generator=rng) < 0.3).float()
    with torch.no_grad():
        model[0].weight.uniform_(-0.5, 2.0, generator=rng)
        model[3].weight.uniform_(-0.3, 0.3, generator=rng)
        _center(model[3], model[:3](x), 0.75)  # fires above 0.73 (v* = 1.5 I - 0.1 > 1)
    ss.nir.save(model, tmp_path / "ours.nir", x, dt=DT)
    sj = import_from_nir(tmp_path / "ours.nir", dt=DT, step_mode="m")
    with torch.no_grad():
        ref = model(x)
        out, _ = sj(x)
    assert 0 < ref.mean() < 1
    assert torch.equal(out, ref)


def test_snntorch_importer_reads_our_leaky_export(rng, tmp_path):
    pytest.importorskip("snntorch", reason="snntorch 1.0.0 is a test dependency")
    from snntorch.import_nir import import_from_nir
    torch.manual_seed(rng.initial_seed())
    leaky = dict(reset_mechanism="zero", reset_delay=False)
    model = nn.Sequential(ss.nn.SpikeLinear(10, 8), ss.nn.Leaky(0.8, 0.7, **leaky), ss.nn.SpikeLinear(8, 4),
                          ss.nn.Leaky(torch.rand(4, generator=rng) * 0.5 + 0.4, 0.5, **leaky))
    model[0].set_mask(mask((8, 10), 0.6, rng))
    x = (torch.rand(7, 3, 10, generator=rng) < 0.5).float()
    with torch.no_grad():  # both layers fire sometimes, for any seed
        model[0].weight.mul_(2.0)
        _center(model[0], x, 0.3)
        model[2].weight.uniform_(-0.2, 0.6, generator=rng)
        _center(model[2], model[:2](x), 0.3)
    ss.nir.save(model, tmp_path / "leaky.nir", x, dt=DT)
    theirs = import_from_nir(nir.read(tmp_path / "leaky.nir"))
    back = ss.nir.load(tmp_path / "leaky.nir", dt=DT)
    with torch.no_grad():
        ref = model(x)
        out = _run_nirtorch(theirs, x)
        ours = back(x)
    assert 0 < ref.mean() < 1
    assert torch.equal(ours, ref) and torch.equal(back.nodes["1"].beta, model[1].beta)
    # snnTorch recomputes beta = 1 - dt / tau in float32 from the stored tau: equal spikes here, its
    # membranes may differ from ours in the last bit.
    assert torch.equal(out, ref)


def test_save_refuses_what_nir_cannot_say(rng, tmp_path):
    x = torch.zeros(2, 1, 4)
    cases = {
        "soft reset": nn.Sequential(ss.nn.SpikeLinear(4, 3), ss.nn.LIF(v_reset=None)),
        "only reset_mechanism='zero' with reset_delay=False": nn.Sequential(ss.nn.SpikeLinear(4, 3), ss.nn.Leaky(0.9)),
        "has no NIR form in ss.nir.save": nn.Sequential(ss.nn.SpikeLinear(4, 3), nn.ReLU()),
    }
    for why, model in cases.items():
        with pytest.raises(ValueError, match=why):
            ss.nir.save(model, tmp_path / "x.nir", x, dt=DT)
    assert not (tmp_path / "x.nir").exists(), "nothing is written when export is refused"
    with pytest.raises(ValueError, match="example_inputs must be a time-major tensor"):
        ss.nir.save(nn.Sequential(ss.nn.SpikeLinear(4, 3)), tmp_path / "x.nir", torch.zeros(1, 4), dt=DT)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = ss.nn.SpikeLinear(6, 6), ss.nn.SpikeLinear(6, 6)
        self.sn = ss.nn.LIF(tau=2.0)

    def forward(self, x):
        return self.sn(self.a(x) + self.b(x))


def test_residual_sum_exports_as_two_edges_and_round_trips(rng, tmp_path):
    torch.manual_seed(rng.initial_seed())
    model = _Residual()
    x = (torch.rand(5, 2, 6, generator=rng) < 0.5).float()
    graph = ss.nir.save(model, tmp_path / "res.nir", x, dt=DT)
    assert sorted(graph.edges) == sorted([("input", "a"), ("input", "b"), ("a", "sn"), ("b", "sn"), ("sn", "output")])
    back = ss.nir.load(tmp_path / "res.nir", dt=DT)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)


def test_spikingjelly_if_and_plif_exports_import_and_round_trip(rng, tmp_path):
    pytest.importorskip("spikingjelly.activation_based", reason="spikingjelly 2.0 is a test dependency")
    from spikingjelly.activation_based import functional as sjf, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir
    torch.manual_seed(rng.initial_seed())
    net = nn.Sequential(layer.Linear(10, 12, step_mode="m"), neuron.IFNode(v_threshold=0.8, step_mode="m"),
                        layer.Linear(12, 6, step_mode="m"),
                        neuron.ParametricLIFNode(init_tau=3.0, decay_input=False, step_mode="m"))
    x = (torch.rand(7, 4, 10, generator=rng) < 0.5).float()
    with torch.no_grad():
        _center(net[0], x, 0.3)
        net[2].weight.mul_(2.0)
        sjf.reset_net(net)
        _center(net[2], net[:2](x), 0.5)
        sjf.reset_net(net)
    graph = export_to_nir(net, x, dt=DT)
    # NIR's rule (v > v_threshold): with v_reset = 0 both neurons are also in snnTorch's form (IF: beta 1;
    # this LIF: r * dt / tau = 1, since r = tau / dt), so they load as ss.nn.Leaky, NIR-exact.
    nir_rule = ss.nir.load(graph, dt=DT)
    assert isinstance(nir_rule.nodes["_1"], ss.nn.Leaky) and float(nir_rule.nodes["_1"].beta) == 1.0
    assert isinstance(nir_rule.nodes["_3"], ss.nn.Leaky)
    model = ss.nir.load(graph, dt=DT, fires_at_threshold=True)
    assert [type(m).__name__ for m in model.nodes.values()] == ["SpikeLinear", "IF", "SpikeLinear", "LIF"]
    sjf.reset_net(net)
    with torch.no_grad():
        ref = net(x)
        hidden = net[1](net[0](x))
        sjf.reset_net(net)
        out = model(x)
    assert 0 < ref.mean() < 1 and 0 < hidden.mean() < 1
    assert torch.equal(out, ref)
    # Our own ParametricLIF / IF round-trip as themselves (w kept exactly in the metadata).
    ours = ss.nn.convert(net)
    assert [type(m).__name__ for m in ours] == ["SpikeLinear", "IF", "SpikeLinear", "ParametricLIF"]
    for m in ours:
        if hasattr(m, "reset"):
            m.reset()
        if hasattr(m, "stateful"):
            m.stateful = False
    ss.nir.save(ours, tmp_path / "plif.nir", x, dt=DT)
    back = ss.nir.load(tmp_path / "plif.nir", dt=DT)
    assert [type(m).__name__ for m in back.nodes.values()] == ["SpikeLinear", "IF", "SpikeLinear", "ParametricLIF"]
    assert torch.equal(back.nodes["3"].w, ours[3].w) and back.nodes["1"].v_threshold == 0.8
    with torch.no_grad():
        assert torch.equal(back(x), ours(x))
        assert torch.equal(back(x), ref)


# ------------------------------------------------------------------------------------------------
# CubaLIF <-> ss.nn.Synaptic (snnTorch's Synaptic)
def _decays(n, rng):
    """Per-neuron decay rates in [0.66, 0.96]: there snnTorch's exporter, which stores tau = dt / (1 - decay)
    in float32, loses nothing (1 - dt / tau reads back as the same float32 decay: checked for every float32
    in [0.65, 0.99) at dt = 1e-4; between 0.5 and 0.65 about 1 in 100 reads back as the neighbouring float,
    another discrete model, whose spikes could differ)."""
    return torch.rand(n, generator=rng) * 0.3 + 0.66


def _snntorch_synaptic_net(snn, rng):
    """Linear + Synaptic in the form snnTorch's exporter writes exactly: per-neuron tensors (its exporter
    needs the neuron's shape), reset to zero at once (NIR's CubaLIF resets v to v_reset)."""
    syn = dict(init_hidden=True, reset_mechanism="zero", reset_delay=False)
    return nn.Sequential(
        nn.Linear(10, 8), snn.Synaptic(alpha=_decays(8, rng), beta=_decays(8, rng), threshold=torch.ones(8), **syn),
        nn.Linear(8, 4),
        snn.Synaptic(alpha=_decays(4, rng), beta=_decays(4, rng), threshold=torch.full((4,), 0.5), **syn))


def test_snntorch_synaptic_export_imports_with_equal_outputs(rng, tmp_path):
    snn = pytest.importorskip("snntorch", reason="snntorch 1.0.0 is a test dependency")
    from snntorch.export_nir import export_to_nir
    torch.manual_seed(rng.initial_seed())
    net = _snntorch_synaptic_net(snn, rng)
    x = (torch.rand(10, 3, 10, generator=rng) < 0.4).float()
    with torch.no_grad():  # both neuron layers fire sometimes, and not always (checked), for any seed
        _center(net[0], x, 0.05)
        net[2].weight.uniform_(-0.3, 0.3, generator=rng)
        _center(net[2], _run_snntorch(net[:2], x), 0.03)
    graph = export_to_nir(net, torch.rand(1, 10), ignore_dims=[0])
    assert [type(graph.nodes[k]).__name__ for k in ("1", "3")] == ["CubaLIF", "CubaLIF"]
    nir.write(tmp_path / "synaptic.nir", graph)
    model = ss.nir.load(tmp_path / "synaptic.nir", dt=DT)  # through the file
    assert [type(m).__name__ for m in model.nodes.values()] == ["SpikeLinear", "Synaptic", "SpikeLinear", "Synaptic"]
    for k in ("1", "3"):  # snnTorch's alpha, beta and threshold, read back from its tau_syn / tau_mem, exactly
        for name in ("alpha", "beta", "threshold"):
            theirs = getattr(net[int(k)], name)  # (a uniform value loads as a scalar)
            assert torch.equal(getattr(model.nodes[k], name).expand_as(theirs), theirs), (k, name)
        assert (model.nodes[k].reset_mechanism, model.nodes[k].reset_delay) == ("zero", False)
    with torch.no_grad():
        ref = _run_snntorch(net, x)
        hidden = _run_snntorch(net[:2], x)
        out = model(x)
    assert 0 < ref.mean() < 1 and 0 < hidden.mean() < 1, "both neuron layers must fire sometimes"
    assert torch.equal(out, ref)


# A CubaLIF in snnTorch's form at dt = 2**-10, with dyadic decays (alpha 0.5 / 0.75, beta 0.75 / 0.5) so
# that float32 and the float64 reference compute every value exactly: spikes compare exactly.
CUBA_DT = 2.0 ** -10
CUBA = dict(tau_syn=CUBA_DT * np.array([2.0, 4.0, 2.0]), w_in=np.array([2.0, 4.0, 2.0]),
            tau_mem=CUBA_DT * np.array([4.0, 2.0, 4.0]), r=np.array([4.0, 2.0, 4.0]), v_leak=0.0,
            v_threshold=np.array([1.4, 2.3, 1.9]), v_reset=0.0)


def _nir_cubalif_reference(x, w, p, dt):
    """NIR's CubaLIF equations stepped at dt (the current first, the membrane from the new current), with
    NIR's rule (fires at v > v_threshold, then v = v_reset), in float64 from the node's own parameters."""
    p = {k: torch.from_numpy(np.asarray(v, dtype=np.float32).astype(np.float64)) for k, v in p.items()}
    i = v = torch.zeros(x.shape[1], w.shape[0], dtype=torch.float64)
    out = []
    for xt in x.double():
        i = i + dt / p["tau_syn"] * (p["w_in"] * (xt @ w.double().T) - i)
        v = v + dt / p["tau_mem"] * (p["v_leak"] - v + p["r"] * i)
        s = v > p["v_threshold"]
        v = torch.where(s, p["v_reset"].expand_as(v), v)
        out.append(s.double())
    return torch.stack(out)


def test_cubalif_in_snntorch_form_runs_exactly_and_the_rest_is_refused(rng):
    model = ss.nir.load(_lif_graph("CubaLIF", **CUBA), dt=CUBA_DT)
    syn = model.nodes["lif"]
    assert isinstance(syn, ss.nn.Synaptic)
    assert syn.alpha.tolist() == [0.5, 0.75, 0.5] and syn.beta.tolist() == [0.75, 0.5, 0.75]
    x = (torch.rand(6, 5, 4, generator=rng) < 0.4).float()
    ref = _nir_cubalif_reference(x, torch.ones(3, 4), CUBA, CUBA_DT)
    assert 0 < ref.mean() < 1
    assert torch.equal(model(x).double(), ref)
    refusals = {
        "v_leak != 0": dict(v_leak=0.2),
        "v_reset != 0": dict(v_reset=0.3),
        r"w_in \* dt / tau_syn != 1": dict(w_in=1.0),  # another input gain (NIR's default w_in = 1)
        r"r \* dt / tau_mem != 1": dict(r=np.array([4.0, 2.0, 3.0])),
        r"1 - dt / tau_syn is outside \[0, 1\] \(tau_syn < dt\)": dict(tau_syn=CUBA_DT / 2, w_in=0.5),
        "v_threshold <= 0": dict(v_threshold=np.array([1.0, 0.0, 1.0])),
    }
    for why, change in refusals.items():
        with pytest.raises(ValueError, match=rf"CubaLIF node 'lif' cannot be run exactly at dt={CUBA_DT}: .*{why}"):
            ss.nir.load(_lif_graph("CubaLIF", **{**CUBA, **change}), dt=CUBA_DT)
    # The same CubaLIF at another dt is another discrete model: its input gains are not 1 any more.
    with pytest.raises(ValueError, match=r"CubaLIF node 'lif' .*w_in \* dt / tau_syn != 1"):
        ss.nir.load(_lif_graph("CubaLIF", **CUBA), dt=2 * CUBA_DT)
    with pytest.raises(ValueError, match="CubaLIF node 'lif': fires_at_threshold=True asks for v >= v_threshold"):
        ss.nir.load(_lif_graph("CubaLIF", **CUBA), dt=CUBA_DT, fires_at_threshold=True)


def _synaptic_model(rng):
    zero = dict(reset_mechanism="zero", reset_delay=False)
    model = nn.Sequential(ss.nn.SpikeLinear(10, 8), ss.nn.Synaptic(_decays(8, rng), 0.8, 0.7, surrogate="sigmoid",
                                                                   surrogate_alpha=3.0, **zero),
                          ss.nn.SpikeLinear(8, 4, bias=False), ss.nn.Synaptic(0.6, _decays(4, rng), 0.5, **zero))
    model[0].set_mask(mask((8, 10), 0.6, rng))
    model[2].set_mask(mask((4, 8), 0.5, rng))
    return model


def test_synaptic_save_load_round_trip_and_snntorch_reads_it(rng, tmp_path):
    pytest.importorskip("snntorch", reason="snntorch 1.0.0 is a test dependency")
    from snntorch.import_nir import import_from_nir
    torch.manual_seed(rng.initial_seed())
    model = _synaptic_model(rng)
    x = (torch.rand(10, 3, 10, generator=rng) < 0.4).float()
    with torch.no_grad():  # both layers fire sometimes, for any seed
        _center(model[0], x, 0.05)
        model[2].weight.uniform_(-0.2, 0.5, generator=rng)
        model[2].weight[0, 0] = 0.0  # a kept weight that is 0: only the metadata mask keeps it
        model[2].weight_mask[0, 0] = True
    graph = ss.nir.save(model, tmp_path / "synaptic.nir", x, dt=DT)
    assert [type(graph.nodes[k]).__name__ for k in ("1", "3")] == ["CubaLIF", "CubaLIF"]
    back = ss.nir.load(tmp_path / "synaptic.nir", dt=DT)
    for k in (0, 2):
        assert torch.equal(back.nodes[str(k)].weight_mask, model[k].weight_mask)
        assert torch.equal(back.nodes[str(k)].weight, model[k].weight.detach() * model[k].weight_mask)
    for k in (1, 3):
        ours, theirs = back.nodes[str(k)], model[k]
        assert isinstance(ours, ss.nn.Synaptic)
        for name in ("alpha", "beta", "threshold"):
            assert torch.equal(getattr(ours, name), getattr(theirs, name)), (k, name)
        assert (ours.surrogate, ours.surrogate_alpha) == (theirs.surrogate, theirs.surrogate_alpha)
    with torch.no_grad():
        ref, hidden, out = model(x), model[:2](x), back(x)
    assert 0 < ref.mean() < 1 and 0 < hidden.mean() < 1, "both neuron layers must fire sometimes"
    assert torch.equal(out, ref)
    again = ss.nir.to_nir(back, x, dt=DT)  # saved again: the same graph, nothing lost on the way
    for k in ("1", "3"):
        for field in ("tau_syn", "tau_mem", "w_in", "r", "v_threshold", "v_leak", "v_reset"):
            assert np.array_equal(getattr(again.nodes[k], field), getattr(graph.nodes[k], field)), (k, field)
    # snnTorch's own importer reads it (its Synaptic with reset to zero at once) with the same spikes.
    theirs = import_from_nir(nir.read(tmp_path / "synaptic.nir"))
    with torch.no_grad():
        assert torch.equal(_run_nirtorch(theirs, x), ref)


def test_save_refuses_synaptic_that_nir_cannot_say(tmp_path):
    x = torch.zeros(2, 1, 4)
    zero = dict(reset_mechanism="zero", reset_delay=False)
    cases = {
        "only reset_mechanism='zero' with reset_delay=False in step_mode 'm' is NIR's CubaLIF":
            ss.nn.Synaptic(0.5, 0.9),
        "graded_spikes_factor != 1 has no NIR form": ss.nn.Synaptic(0.5, 0.9, graded_spikes_factor=2.0, **zero),
        "alpha = 1 \\(no decay\\) has no finite NIR tau_syn": ss.nn.Synaptic(1.0, 0.9, **zero),
        "beta = 1 \\(no decay\\) has no finite NIR tau_mem": ss.nn.Synaptic(0.5, torch.tensor([0.5, 1.0, 0.2]), **zero),
        "threshold <= 0 has no NIR form": ss.nn.Synaptic(0.5, 0.9, -0.5, **zero),
        # a float64 decay that no float32 1 - dt / tau_syn gives back, and one too close to 0 to survive it
        "alpha = 0.1 cannot be written exactly as NIR's tau_syn": ss.nn.Synaptic(torch.tensor(0.1, dtype=torch.float64),
                                                                                0.9, **zero),
        "beta = 1.0000000\\d*e-10 cannot be written exactly as NIR's tau_mem": ss.nn.Synaptic(0.5, 1e-10, **zero),
    }
    for why, neuron in cases.items():
        with pytest.raises(ValueError, match=why):
            ss.nir.save(nn.Sequential(ss.nn.SpikeLinear(4, 3), neuron), tmp_path / "x.nir", x, dt=DT)
    assert not (tmp_path / "x.nir").exists(), "nothing is written when export is refused"
