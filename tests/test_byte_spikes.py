"""bool / uint8 spikes (issue 12): the cpp kernels read them as they are, with no float copy of the
input; every other backend takes them too (converted once). Results equal float spikes exactly on the
cpp kernels (same events, same summation order) and the float64 reference on every backend; weight and
bias gradients flow; non-binary bytes are refused. The kernel-by-kernel checks under every CPU variant
(all packed formats, partial 64-spike words) are in test_cpu_isa.py (_check_byte_spikes)."""
import pytest
import torch
import torch.nn.functional as F

import snnsparse as ss
import snnsparse.functional as SF
from conftest import assert_close64, mask, spikes

CPP = ss.backends.available()["cpp"] is True
needs_cpp = pytest.mark.skipif(not CPP, reason="the C++ extension is not built")
BYTES = (torch.bool, torch.uint8)


def _cpu_backends():
    return [b for b in ("cpp", "triton", "reference") if ss.backends.available().get(b) is True]


def _input_copies(fn, numel):
    """ATen dtype/copy ops fn() ran on a tensor of `numel` elements (the input: the packing of the
    weight makes small copies of its own, which are not the input's)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return [e.name for e in prof.events()
            if e.name in ("aten::to", "aten::_to_copy", "aten::copy_", "aten::contiguous")
            and any(shape and torch.Size(shape).numel() == numel for shape in e.input_shapes)]


@needs_cpp
@pytest.mark.parametrize("bdt", BYTES)
def test_linear_reads_bytes_without_a_float_copy(rng, bdt):
    x = spikes((4, 8, 130), 0.2, rng).to(bdt)
    w = torch.randn(33, 130, generator=rng)
    m = mask(w.shape, 0.1, rng)
    out = SF.spike_linear(x, w, mask=m, backend="cpp")
    assert _input_copies(lambda: SF.spike_linear(x, w, mask=m, backend="cpp"), x.numel()) == []
    # the check can fail: it sees the float copy a conversion makes
    assert _input_copies(lambda: SF.spike_linear(x.float(), w, mask=m, backend="cpp"), x.numel()) != []
    assert out.dtype == torch.float32
    assert_close64(out, F.linear(x.double(), torch.where(m, w, 0).double()))


@needs_cpp
@pytest.mark.parametrize("bdt", BYTES)
def test_conv_reads_bytes_without_a_float_copy(rng, bdt):
    x = spikes((2, 3, 8, 9, 11), 0.3, rng).to(bdt)
    w = torch.randn(16, 8, 3, 3, generator=rng)
    m = mask(w.shape, 0.3, rng)
    out = SF.spike_conv2d(x, w, padding=1, mask=m, backend="cpp")
    assert _input_copies(lambda: SF.spike_conv2d(x, w, padding=1, mask=m, backend="cpp"), x.numel()) == []
    ref = F.conv2d(x.flatten(0, 1).double(), torch.where(m, w, 0).double(), padding=1)
    assert_close64(out, ref.reshape(2, 3, 16, 9, 11))


@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize("bdt", BYTES)
@pytest.mark.parametrize("rate,density", [(0.0, 1.0), (1.0, 0.0), (0.1, 0.3), (1.0, 1.0)])
def test_every_backend_takes_bytes(rng, backend, bdt, rate, density):
    """Float64 reference, edges: no spikes, all spikes, empty and full masks, odd sizes; counts equal the
    float-spike counts."""
    x = spikes((3, 5, 67), rate, rng)
    w, b = torch.randn(7, 67, generator=rng), torch.randn(7, generator=rng)
    m = mask(w.shape, density, rng)
    got, n = SF.spike_linear(x.to(bdt), w, b, mask=m, backend=backend, return_count=True)
    want, n_float = SF.spike_linear(x, w, b, mask=m, backend=backend, return_count=True)
    assert_close64(got, F.linear(x.double(), torch.where(m, w, 0).double(), b.double()))
    assert n == n_float
    xc = spikes((2, 5, 7, 9), rate, rng)
    wc = torch.randn(6, 5, 3, 3, generator=rng)
    mc = mask(wc.shape, density, rng)
    got = SF.spike_conv2d(xc.to(bdt), wc, None, 2, 1, mask=mc, backend=backend)
    assert_close64(got, F.conv2d(xc.double(), torch.where(mc, wc, 0).double(), None, 2, 1))


@needs_cpp
@pytest.mark.parametrize("bdt", BYTES)
@pytest.mark.parametrize("dwg", [False, True])
def test_weight_and_bias_gradients_from_byte_spikes(rng, bdt, dwg):
    """Byte spikes carry no gradient, the weight and bias do: equal to those of float spikes (same
    kernels) and to the float64 torch twin."""
    x = spikes((4, 6, 70), 0.3, rng)
    w = torch.randn(9, 70, generator=rng, requires_grad=True)
    b = torch.randn(9, generator=rng, requires_grad=True)
    m = mask(w.shape, 0.4, rng)
    go = torch.randn(4, 6, 9, generator=rng)
    g_bytes = torch.autograd.grad(SF.spike_linear(x.to(bdt), w, b, mask=m, backend="cpp", dense_weight_grad=dwg),
                                  (w, b), go)
    g_float = torch.autograd.grad(SF.spike_linear(x, w, b, mask=m, backend="cpp", dense_weight_grad=dwg), (w, b), go)
    assert all(torch.equal(a, e) for a, e in zip(g_bytes, g_float))
    wd = w.detach().double().requires_grad_()
    ref = F.linear(x.double(), wd if dwg else torch.where(m, wd, 0), b.detach().double())
    (gw_ref,) = torch.autograd.grad(ref, (wd,), go.double())
    assert_close64(g_bytes[0], gw_ref if dwg else torch.where(m, gw_ref, 0), rtol=1e-4, atol=1e-4)
    xc = spikes((3, 4, 6, 7), 0.3, rng)
    wc = torch.randn(5, 4, 3, 3, generator=rng, requires_grad=True)
    mc = mask(wc.shape, 0.5, rng)
    goc = torch.randn(3, 5, 6, 7, generator=rng)
    (gb,) = torch.autograd.grad(SF.spike_conv2d(xc.to(bdt), wc, padding=1, mask=mc, backend="cpp"), (wc,), goc)
    (gf,) = torch.autograd.grad(SF.spike_conv2d(xc, wc, padding=1, mask=mc, backend="cpp"), (wc,), goc)
    assert torch.equal(gb, gf)


@needs_cpp
@pytest.mark.parametrize("bad", [2, 255])
def test_non_binary_bytes_refused(rng, bad):
    x = spikes((5, 100), 0.3, rng).to(torch.uint8)
    x[3, 77] = bad
    w = torch.randn(4, 100, generator=rng)
    for xs in (x, x.view(torch.bool)):
        with pytest.raises(SF.NonBinarySpikesError, match=f"spike_linear: spikes must be binary.*found value {bad}"):
            SF.spike_linear(xs, w, backend="cpp")
    xc = spikes((2, 3, 5, 5), 0.3, rng).to(torch.uint8)
    xc[1, 2, 4, 4] = bad
    with pytest.raises(SF.NonBinarySpikesError, match="spike_conv2d: spikes must be binary"):
        SF.spike_conv2d(xc, torch.randn(4, 3, 3, 3, generator=rng), backend="cpp")


@needs_cpp
def test_layers_and_optimized_model_take_bool_spikes(rng):
    """A Spike* layer and a packed layer of optimize_for_inference run bool spikes on the kernels and
    give the outputs of float spikes."""
    lin = ss.nn.SpikeLinear(50, 12, input_kind="spikes")
    lin.set_mask(mask(lin.weight.shape, 0.2, rng))
    x = spikes((4, 3, 50), 0.2, rng)
    with torch.no_grad():
        assert torch.equal(lin(x.bool()), lin(x))
    conv = ss.nn.SpikeConv2d(6, 8, 3, padding=1, input_kind="spikes")
    conv.set_mask(mask(conv.weight.shape, 0.04, rng))
    model = torch.nn.Sequential(conv, torch.nn.Flatten(1), torch.nn.Linear(8 * 9 * 9, 3)).eval()
    xc = spikes((5, 6, 9, 9), 0.2, rng)
    opt = ss.nn.optimize_for_inference(model, (xc,))
    with torch.no_grad():
        assert torch.equal(opt(xc.bool()), opt(xc))
        assert_close64(opt(xc.to(torch.uint8)), model(xc))


@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize("charge", ["lif", "if", "plif"])
@pytest.mark.parametrize("bdt", BYTES)
def test_neuron_writes_byte_spikes(rng, backend, charge, bdt):
    """spike_dtype bool / uint8: the same spikes as floats, and the same v, on every backend."""
    x = torch.randn(4, 3, 67, generator=rng) * 1.5 + 0.5
    kw = dict(tau=2.0) if charge == "lif" else {}
    if charge == "plif":
        kw["w"] = torch.tensor(-0.3)
    with torch.no_grad():
        s, v, _ = SF.neuron_with_h(x, charge=charge, backend=backend, **kw)
        sb, vb, _ = SF.neuron_with_h(x, charge=charge, backend=backend, spike_dtype=bdt, **kw)
    assert sb.dtype == bdt and torch.equal(sb.to(s.dtype), s) and torch.equal(vb, v)
    assert 0 < int(s.sum()) < s.numel()


@needs_cpp
def test_byte_neuron_spikes_refused_where_a_gradient_is_wanted(rng):
    x = torch.randn(3, 10, generator=rng, requires_grad=True)
    with pytest.raises(RuntimeError, match="bytes, which carry no gradient"):
        SF.neuron_with_h(x, spike_dtype=torch.uint8, backend="cpp")
    with pytest.raises(ValueError, match="save_h must be false"):
        torch.ops.snnsparse.lif_fwd(x.detach(), torch.zeros(10), 2.0, 1.0, 0.0, True, False, "atan", 2.0, True, "lif",
                                    None, torch.uint8)
    with pytest.raises(TypeError, match="spike_dtype must be None, x_seq's dtype, bool or uint8"):
        torch.ops.snnsparse.lif_fwd(x.detach(), torch.zeros(10), 2.0, 1.0, 0.0, True, False, "atan", 2.0, False,
                                    "lif", None, torch.int32)
    y = torch.ops.snnsparse.lif_fwd(x.detach(), torch.zeros(10), 2.0, 1.0, 0.0, True, False, "atan", 2.0, False,
                                    "lif", None, torch.uint8)
    torch.library.opcheck(torch.ops.snnsparse.lif_fwd.default,
                          (x.detach(), torch.zeros(10), 2.0, 1.0, 0.0, True, False, "atan", 2.0, False, "lif", None,
                           torch.uint8))
    assert y[0].dtype == torch.uint8 and y[2].numel() == 0
