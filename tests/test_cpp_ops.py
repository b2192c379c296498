"""cpp backend (csrc/cpu, snnsparse.ops.cpp) against the reference over the DESIGN.md grid.

Also: torch.library.opcheck on every registered op, float64 gradcheck, counting mode against an
independent count, LIF forward/backward for every option and surrogate, refused inputs, and the
weight-packing cache.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

import snnsparse as ss
from conftest import DENSITIES, ODD_SIZES, RATES, TIMESTEPS, assert_close64, mask, randn, spikes
from test_spike_matmul import _opcheck_samples as _matmul_samples
from snnsparse.ops import reference as R
from snnsparse.ops import surrogate as SG

pytestmark = pytest.mark.skipif(ss.backends.available()["cpp"] is not True,
                                reason=f"cpp backend unavailable: {ss.backends.available()['cpp']}")
if ss.backends.available()["cpp"] is True:
    from snnsparse.ops import cpp as C

OPS = torch.ops.snnsparse
CONV_CASES = [  # (cin, cout, groups, k(h,w), stride, padding, dilation, hw)
    (3, 5, 1, (3, 3), 1, 1, 1, (7, 9)),
    (4, 6, 2, (1, 3), (2, 1), (0, 1), 1, (5, 6)),
    (6, 6, 6, (3, 3), 1, 2, 2, (8, 8)),
    (1, 3, 1, (2, 5), 2, (1, 2), (1, 2), (11, 10)),
    (8, 16, 1, (3, 3), 1, 1, 1, (6, 5)),
    # small maps (format 2's output-stationary kernel: <= 16 pixels, or <= 64 with a stride)
    (16, 70, 1, (3, 3), 1, 1, 1, (2, 2)),
    (12, 6, 3, (3, 3), 1, 1, 1, (1, 1)),
    (8, 10, 2, (3, 2), 2, (1, 0), (1, 2), (7, 9)),
    (5, 4, 1, (2, 2), 1, 0, 1, (4, 4)),
]


def _pack_linear(w, msk, fmt):
    from snnsparse.ops import linear as L
    p = L.pack(w, msk, fmt)
    assert p.format == fmt
    return list(p.tensors)


def _pack_conv(w, msk, groups, fmt):
    # stride 1 and widths 1 only let format 4 be forced; the tests ask for it where the call applies
    from snnsparse.ops import conv2d as CV
    p = CV.pack(w, msk, groups, fmt, stride=(1, 1), in_width=1, out_width=1)
    assert p.format == fmt
    return list(p.tensors)


def _fmts(kind, groups=1):
    # every weight format is checked on every case: dense rows/slabs, compressed rows, (conv, groups 1) blocks
    fmts = [1, 2]
    if kind == "conv" and groups == 1:
        fmts.append(3)
    return fmts


def _conv_fmts(g, st, wd, wo):
    return _fmts("conv", g) + ([4] if (C.cpu_isa() in ("avx512", "avx2")) and st in (1, (1, 1)) and wd <= 64 and wo <= 64 else [])


def _linear_ref(s, w, b, msk, dwg=False):
    return F.linear(s, R.masked_weight(w, msk, dwg), b)


@pytest.mark.parametrize("rate,density", list(itertools.product(RATES, DENSITIES)))
@pytest.mark.parametrize("t", TIMESTEPS)
def test_linear_grid(rng, rate, density, t):
    for k, m, b_ in ((ODD_SIZES[0], ODD_SIZES[2], 3), (ODD_SIZES[2], ODD_SIZES[1], 3), (16, 7, 1), (70, 5, 17)):
        s = spikes((t, b_, k), rate, rng)
        w, b, msk = randn((m, k), rng), randn((m,), rng), mask((m, k), density, rng)
        x = s.reshape(-1, k)
        expect = F.linear(x.double(), (w * msk).double(), b.double())
        count = int((x.double() @ msk.double().t()).sum())
        y, n = ss.functional.spike_linear(s, w, b, mask=msk, backend="cpp", return_count=True)
        assert y.shape == (t, b_, m) and n == count
        assert_close64(y.reshape(-1, m), expect)
        for fmt in _fmts("linear"):
            y2, n2 = OPS.spike_linear_fwd_packed(x, w, b, msk, fmt, _pack_linear(w, msk, fmt), True, False)
            assert_close64(y2, expect, msg=f"format {fmt}")
            assert int(n2) == count
        y3, n3 = OPS.spike_linear_fwd(x, w, None, msk, True, False)
        assert_close64(y3, expect - b.double())
        assert int(n3) == count


@pytest.mark.parametrize("rate,density", list(itertools.product(RATES, DENSITIES)))
def test_conv_grid(rng, rate, density):
    for cin, cout, g, kk, st, pad, dil, (h, wd) in CONV_CASES:
        st2, pad2, dil2 = [v if isinstance(v, tuple) else (v, v) for v in (st, pad, dil)]
        for t in TIMESTEPS:
            s = spikes((t, 2, cin, h, wd), rate, rng)
            w, b, msk = randn((cout, cin // g, *kk), rng), randn((cout,), rng), None
            msk = mask(w.shape, density, rng)
            x = s.flatten(0, 1)
            expect = F.conv2d(x.double(), (w * msk).double(), b.double(), st, pad, dil, g)
            count = int(F.conv2d(x.double(), msk.double(), None, st, pad, dil, g).sum())
            y, n = ss.functional.spike_conv2d(s, w, b, st, pad, dil, g, mask=msk, backend="cpp", return_count=True)
            assert n == count
            assert_close64(y.flatten(0, 1), expect)
            for fmt in _conv_fmts(g, st, wd, expect.shape[3]):
                y2, n2 = OPS.spike_conv2d_fwd_packed(x, w, b, msk, fmt, _pack_conv(w, msk, g, fmt), st2, pad2, dil2, g,
                                                     True, False)
                assert_close64(y2, expect, msg=f"format {fmt}")
                assert int(n2) == count
            y3, n3 = OPS.spike_conv2d_fwd(x, w, None, None, st2, pad2, dil2, g, True, False)
            assert_close64(y3, F.conv2d(x.double(), w.double(), None, st, pad, dil, g))
            assert int(n3) == int(F.conv2d(x.double(), torch.ones_like(w).double(), None, st, pad, dil, g).sum())


def _grads(fn, inputs):
    out = fn(*inputs)
    g = torch.randn_like(out)
    return torch.autograd.grad(out, inputs, g, allow_unused=True), g


@pytest.mark.parametrize("rate,density", [(0.3, 1.0), (0.3, 0.5), (0.05, 0.1), (1.0, 0.0), (0.0, 0.5)])
@pytest.mark.parametrize("dwg", [False, True])
def test_linear_backward(rng, rate, density, dwg):
    for k, m, n in ((127, 3, 12), (1, 9, 4), (33, 70, 65)):
        s = spikes((n, k), rate, rng, torch.float64)
        w, b, msk = randn((m, k), rng, torch.float64), randn((m,), rng, torch.float64), mask((m, k), density, rng)
        inputs = [s.requires_grad_(), w.requires_grad_(), b.requires_grad_()]
        out_c = ss.functional.spike_linear(inputs[0], inputs[1], inputs[2], mask=msk, backend="cpp",
                                           dense_weight_grad=dwg)
        out_r = _linear_ref(*inputs, msk, dwg)
        assert_close64(out_c, out_r)
        g = torch.randn_like(out_r)
        gc = torch.autograd.grad(out_c, inputs, g)
        gr = torch.autograd.grad(out_r, inputs, g)
        for a, e in zip(gc, gr):
            assert_close64(a, e, rtol=1e-10, atol=1e-10)
        if not dwg and density < 1:
            assert not gc[1][~msk].any()


@pytest.mark.parametrize("dwg", [False, True])
def test_conv_backward(rng, dwg):
    for (cin, cout, g, kk, st, pad, dil, (h, wd)), density in itertools.product(CONV_CASES, (1.0, 0.3)):
        s = spikes((3, cin, h, wd), 0.3, rng, torch.float64)
        w, b = randn((cout, cin // g, *kk), rng, torch.float64), randn((cout,), rng, torch.float64)
        msk = mask(w.shape, density, rng)
        inputs = [s.requires_grad_(), w.requires_grad_(), b.requires_grad_()]
        out_c = ss.functional.spike_conv2d(*inputs, st, pad, dil, g, mask=msk, backend="cpp", dense_weight_grad=dwg)
        out_r = F.conv2d(inputs[0], R.masked_weight(inputs[1], msk, dwg), inputs[2], st, pad, dil, g)
        assert_close64(out_c, out_r)
        go = torch.randn_like(out_r)
        for a, e in zip(torch.autograd.grad(out_c, inputs, go), torch.autograd.grad(out_r, inputs, go)):
            assert_close64(a, e, rtol=1e-10, atol=1e-10)


def test_gradcheck_linear_and_conv(rng):
    s = spikes((6, 9), 0.4, rng, torch.float64)
    w, b = randn((5, 9), rng, torch.float64).requires_grad_(), randn((5,), rng, torch.float64).requires_grad_()
    msk = mask(w.shape, 0.6, rng)
    # gradcheck perturbs w through .data, which does not bump w's version counter, so the pack cache
    # cannot see it: pack inside the function (both formats) or use the core op (packs per call).
    for fmt in (1, 2):
        assert torch.autograd.gradcheck(
            lambda w_, b_: OPS.spike_linear_fwd_packed(s, w_, b_, msk, fmt, _pack_linear(w_, msk, fmt), False, False)[0],
            (w, b))
    assert torch.autograd.gradcheck(lambda w_, b_: OPS.spike_linear_fwd(s, w_, b_, msk, False, False)[0], (w, b))
    x = spikes((2, 4, 6, 5), 0.4, rng, torch.float64)
    wc = randn((6, 2, 3, 3), rng, torch.float64).requires_grad_()
    bc = randn((6,), rng, torch.float64).requires_grad_()
    mc = mask(wc.shape, 0.5, rng)
    for fmt in (1, 2):
        assert torch.autograd.gradcheck(
            lambda w_, b_: OPS.spike_conv2d_fwd_packed(x, w_, b_, mc, fmt, _pack_conv(w_, mc, 2, fmt), [2, 1], [1, 1],
                                                       [1, 2], 2, False, False)[0], (wc, bc))
    assert torch.autograd.gradcheck(
        lambda w_, b_: OPS.spike_conv2d_fwd(x, w_, b_, mc, [1, 2], [1, 0], [1, 1], 2, False, False)[0], (wc, bc))
    # Gradient w.r.t. the spikes (gradcheck cannot perturb binary spikes): the dense formula.
    xs = x.clone().requires_grad_()
    out = ss.functional.spike_conv2d(xs, wc, bc, 1, 1, 1, 2, mask=mc, backend="cpp")
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, xs, g)
    xs2 = x.clone().requires_grad_()
    (gx2,) = torch.autograd.grad(F.conv2d(xs2, wc * mc, bc, 1, 1, 1, 2), xs2, g)
    assert_close64(gx, gx2, rtol=1e-10, atol=1e-10)


# Spike counts (SEW ADD's sums of spike tensors) on the format-3 counts kernel: every group-1 geometry of
# CONV_CASES plus 70 output channels (a partial 64-channel block) and 130 input channels, counts 0 (no events),
# binary, small, and up to 15 (the frame's largest count sizes the event lists), float32 / float64 / uint8 /
# bool input, against a float64 conv of the same counts.
COUNTS_CASES = [c for c in CONV_CASES if c[2] == 1] + [(130, 70, 1, (3, 3), 2, 1, 1, (5, 7))]


@pytest.mark.parametrize("top", [0, 1, 2, 7, 15])
def test_conv_counts_kernel_matches_float64(rng, top):
    from snnsparse.ops import conv2d as CV
    for (cin, cout, _, kk, st, pad, dil, (h, wd)), density, dtype in itertools.product(
            COUNTS_CASES, (1.0, 0.3, 0.0), (torch.float32, torch.float64)):
        x = torch.randint(0, top + 1, (3, cin, h, wd), generator=rng).to(dtype)
        x[x.bool() & (torch.rand(x.shape, generator=rng) < 0.5)] = 0  # sparse, as spikes are
        x.view(-1)[0] = top
        w, b = randn((cout, cin, *kk), rng, dtype), randn((cout,), rng, dtype)
        msk = mask(w.shape, density, rng)
        packed = CV.pack(w, msk, 1, 3)
        st2, pad2, dil2 = (st, st) if isinstance(st, int) else st, (pad, pad) if isinstance(pad, int) else pad, \
            (dil, dil) if isinstance(dil, int) else dil
        expect = F.conv2d(x.double(), (w * msk).double(), b.double(), st2, pad2, dil2)
        # fp32 summation order: errors scale with the largest sum (counts up to 15 over 130 x 9 weights)
        scale = 1.0 + float(expect.abs().max())
        tol = dict(rtol=1e-5, atol=1e-5 * scale) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12 * scale)
        for inp in [x] + ([x.to(torch.uint8)] if dtype == torch.float32 else []) + ([x.bool()] if top <= 1 else []):
            with torch.no_grad():
                out = CV.forward_counts_packed(inp, packed, b, st2, pad2, dil2)
            assert out.dtype == dtype
            assert_close64(out, expect, **tol, msg=f"{(cin, cout, kk, st, pad, dil, h, wd)} {density} {inp.dtype}")


@pytest.mark.parametrize("bad", [0.5, -1.0, 16.0, 256.0, 1e9, float("nan"), float("inf"), -float("inf")])
def test_conv_counts_kernel_refuses_what_is_not_a_count(rng, bad):
    from snnsparse.ops import conv2d as CV
    w = randn((5, 3, 3, 3), rng)
    packed = CV.pack(w, None, 1, 3)
    x = torch.randint(0, 3, (2, 3, 6, 6), generator=rng).float()
    x[1, 2, 5, 4] = bad
    with pytest.raises(ValueError, match="spike counts must be integers 0..15.*found value"):
        CV.forward_counts_packed(x, packed, None, (1, 1), (1, 1), (1, 1))
    if bad == 16.0:  # byte counts above the cap too
        with pytest.raises(ValueError, match="spike counts must be integers 0..15"):
            CV.forward_counts_packed(x.to(torch.int32).to(torch.uint8), packed, None, (1, 1), (1, 1), (1, 1))
    for fmt in (1, 2):  # the counts kernel exists for dense blocks only
        with pytest.raises(RuntimeError, match="needs a format-3 packing"):
            CV.forward_counts_packed(x.clamp(0, 1).nan_to_num(0), CV.pack(w, None, 1, fmt), None, (1, 1), (1, 1), (1, 1))
    x.requires_grad_()
    with pytest.raises(RuntimeError, match="inference-only"):
        CV.forward_counts_packed(x, packed, None, (1, 1), (1, 1), (1, 1))
    x = x.detach().clamp(0, 2).nan_to_num(0)
    with pytest.raises(TypeError, match="spikes must be bool, uint8"):  # an integer dtype other than uint8 / bool
        CV.forward_counts_packed(x.to(torch.int32), packed, None, (1, 1), (1, 1), (1, 1))
    with pytest.raises(RuntimeError, match="channels"):
        CV.forward_counts_packed(x[:, :2], packed, None, (1, 1), (1, 1), (1, 1))


def test_small_map_compressed_rows_refuse_a_tapnnz_that_disagrees(rng):
    # format 2 on small maps reads its (channel, tap) segments through tapnnz: a packing whose tapnnz does not
    # add up to the rows (assembled by hand, or loaded from another packing) is refused, never read past
    w = randn((6, 4, 3, 3), rng)
    m = mask(w.shape, 0.5, rng)
    rowptr, idx, val, tapnnz = _pack_conv(w, m, 1, 2)
    x = spikes((2, 4, 2, 2), 0.5, rng)
    geo = ([1, 1], [1, 1], [1, 1], 1)
    expect = F.conv2d(x.double(), (w * m).double(), None, 1, 1)
    y, _ = OPS.spike_conv2d_fwd_packed(x, w, None, m, 2, [rowptr, idx, val, tapnnz], *geo, False, False)
    assert_close64(y, expect)
    bad = tapnnz.clone()
    bad[0, 0] += 1
    with pytest.raises(RuntimeError, match="tapnnz of input channel 0 does not add up"):
        OPS.spike_conv2d_fwd_packed(x, w, None, m, 2, [rowptr, idx, val, bad], *geo, False, False)


# ---------------------------------------------------------------------------------------------- LIF
LIF_OPTIONS = list(itertools.product((True, False), (0.0, None, -0.2), (False, True), SG.NAMES))


@pytest.mark.parametrize("decay_input,v_reset,detach_reset,sg", LIF_OPTIONS)
def test_lif_forward_backward(rng, decay_input, v_reset, detach_reset, sg):
    alpha = SG.DEFAULT_ALPHA[sg] * 1.5
    for t, with_v0 in ((1, False), (4, True), (5, False)):
        x = (randn((t, 3, 37), rng, torch.float64) * 1.2 + 0.6)
        v0 = randn((3, 37), rng, torch.float64) * 0.5 if with_v0 else None
        kw = dict(tau=1.7, v_threshold=0.9, v_reset=v_reset, decay_input=decay_input, detach_reset=detach_reset,
                  surrogate=sg, alpha=alpha)
        xc = x.clone().requires_grad_()
        xr = x.clone().requires_grad_()
        v0c = v0.clone().requires_grad_() if with_v0 else None
        v0r = v0.clone().requires_grad_() if with_v0 else None
        sc, vc = ss.functional.lif(xc, v0c, backend="cpp", **kw)
        sr, vr = ss.functional.lif(xr, v0r, backend="reference", **kw)
        assert torch.equal(sc, sr) and torch.equal(vc, vr)  # same float operation order: bit-identical
        gs, gv = torch.randn_like(sc), torch.randn_like(vc)
        ins_c = [xc] + ([v0c] if with_v0 else [])
        ins_r = [xr] + ([v0r] if with_v0 else [])
        gc = torch.autograd.grad((sc * gs).sum() + (vc * gv).sum(), ins_c)
        gr = torch.autograd.grad((sr * gs).sum() + (vr * gv).sum(), ins_r)
        for a, e in zip(gc, gr):
            assert_close64(a, e, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sg", SG.NAMES)
def test_lif_float32_and_grad_h(rng, sg):
    x = randn((4, 2, 1100), rng) * 1.5 + 0.5  # > one 1024-neuron block
    sc, vc, hc = ss.functional.lif_with_h(x, backend="cpp", surrogate=sg, return_h=True)
    sr, vr, hr = ss.functional.lif_with_h(x, backend="reference", surrogate=sg, return_h=True)
    assert torch.equal(sc, sr) and torch.equal(vc, vr) and torch.equal(hc, hr)
    # A gradient flowing into h_seq (e.g. a criticality regulariser) reaches x through lif_bwd's grad_h.
    xc, xr = x.double().requires_grad_(), x.double().requires_grad_()
    outs = [ss.functional.lif_with_h(xx, backend=be, surrogate=sg, return_h=True) for xx, be in
            ((xc, "cpp"), (xr, "reference"))]
    w = torch.randn_like(xc)
    (g1,) = torch.autograd.grad((outs[0][0] * w).sum() + (outs[0][2] ** 2).sum(), xc)
    (g2,) = torch.autograd.grad((outs[1][0] * w).sum() + (outs[1][2] ** 2).sum(), xr)
    assert_close64(g1, g2, rtol=1e-9, atol=1e-9)
    # float32 backward vs float64 reference (vectorised exp in the sigmoid/erf surrogates).
    x32 = x.clone().requires_grad_()
    s32, _ = ss.functional.lif(x32, backend="cpp", surrogate=sg)
    (g32,) = torch.autograd.grad((s32 * w.float()).sum(), x32)
    x64 = x.double().requires_grad_()
    s64, _ = ss.functional.lif(x64, backend="reference", surrogate=sg)
    (g64,) = torch.autograd.grad((s64 * w).sum(), x64)
    assert_close64(g32, g64, rtol=1e-4, atol=1e-5)


def test_lif_core_ops(rng):
    x, v0 = randn((3, 50), rng), randn((50,), rng)
    s, v, h = OPS.lif_fwd(x, v0, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True)
    sr, vr, hr = R.lif(x, v0, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, return_h=True)
    assert torch.equal(s, sr) and torch.equal(v, vr) and torch.equal(h, hr)
    assert OPS.lif_fwd(x, v0, 2.0, 1.0, None, False, False, "sigmoid", 4.0, False)[2].numel() == 0
    gs = torch.randn_like(s)
    gx, gv0, _ = OPS.lif_bwd(gs, None, None, h, 2.0, 1.0, 0.0, True, False, "atan", 2.0)
    xr, v0r = x.double().requires_grad_(), v0.double().requires_grad_()
    sr, _, _ = R.lif(xr, v0r, 2.0, 1.0, 0.0, True, False, "atan", 2.0)
    gxr, gv0r = torch.autograd.grad((sr * gs.double()).sum(), (xr, v0r))
    assert_close64(gx, gxr, rtol=1e-5, atol=1e-6)
    assert_close64(gv0, gv0r, rtol=1e-5, atol=1e-6)
    e = torch.empty(0, 7)
    s, v, h = OPS.lif_fwd(e, torch.zeros(7), 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True)
    assert s.shape == (0, 7) and torch.equal(v, torch.zeros(7))


# ---------------------------------------------------------------------------------------------- opcheck
def _opcheck_samples():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 9, generator=g) < 0.4).double()
    w = torch.randn(5, 9, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    m = torch.rand(5, 9, generator=g) < 0.6
    xc = (torch.rand(2, 4, 6, 5, generator=g) < 0.4).double()
    wc = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    bc = torch.randn(6, generator=g, dtype=torch.float64)
    mc = torch.rand(6, 2, 3, 3, generator=g) < 0.5
    geo = ([2, 1], [1, 1], [1, 2], 2)
    wc1 = torch.randn(3, 4, 3, 2, generator=g, dtype=torch.float64)
    mc1 = torch.rand(3, 4, 3, 2, generator=g) < 0.5
    geo1 = ([1, 1], [1, 0], [1, 2], 1)
    go = torch.randn(2, 6, 3, 3, generator=g, dtype=torch.float64)
    xs = torch.randn(4, 11, generator=g, dtype=torch.float64)
    v0 = torch.randn(11, generator=g, dtype=torch.float64)
    h = torch.randn(4, 11, generator=g, dtype=torch.float64)
    rg = lambda t: t.clone().requires_grad_()  # noqa: E731
    return [
        ("spike_linear_fwd", (rg(x), rg(w), rg(b), m, True, False)),
        ("spike_linear_fwd", (x, w, None, None, False, True)),
        ("spike_linear_fwd_packed", (rg(x), rg(w), rg(b), m, 1, _pack_linear(w, m, 1), True, False)),
        ("spike_linear_fwd_packed", (rg(x), rg(w), None, m, 2, _pack_linear(w, m, 2), False, True)),
        ("spike_linear_bwd", (torch.randn(6, 5, dtype=torch.float64), x, w, m, True, True, False)),
        ("spike_linear_bwd", (torch.randn(6, 5, dtype=torch.float64), x, w, None, False, True, True)),
        ("spike_conv2d_fwd", (rg(xc), rg(wc), rg(bc), mc, *geo, True, False)),
        ("spike_conv2d_fwd_packed", (rg(xc), rg(wc), rg(bc), mc, 1, _pack_conv(wc, mc, 2, 1), *geo, True, False)),
        ("spike_conv2d_fwd_packed", (rg(xc), rg(wc), None, mc, 2, _pack_conv(wc, mc, 2, 2), *geo, False, True)),
        ("spike_conv2d_fwd_packed", (rg(xc), rg(wc1), rg(bc[:3]), mc1, 3, _pack_conv(wc1, mc1, 1, 3), *geo1, True,
                                     False)),
        *([("spike_conv2d_fwd_packed", (rg(xc.float()), rg(wc1.float()), None, mc1, 4,
                                         _pack_conv(wc1.float(), mc1, 1, 4), *geo1, True, False))]
          if (C.cpu_isa() in ("avx512", "avx2")) else []),
        ("spike_conv2d_bwd", (go, xc, wc, mc, *geo, True, True, False)),
        ("spike_conv2d_bwd", (go, xc, wc, None, *geo, True, False, False)),
        # bool / uint8 spikes, read by the kernels as bytes (the weight and bias still get gradients)
        ("spike_linear_fwd", (x.bool(), rg(w), rg(b), m, True, False)),
        ("spike_linear_fwd_packed", (x.to(torch.uint8), rg(w), None, m, 2, _pack_linear(w, m, 2), True, True)),
        ("spike_linear_bwd", (torch.randn(6, 5, dtype=torch.float64), x.to(torch.uint8), w, m, False, True, False)),
        ("spike_conv2d_fwd", (xc.to(torch.uint8), rg(wc), rg(bc), mc, *geo, True, True)),
        ("spike_conv2d_fwd_packed", (xc.bool(), rg(wc1), None, mc1, 3, _pack_conv(wc1, mc1, 1, 3), *geo1, True,
                                     False)),
        ("spike_conv2d_bwd", (go, xc.bool(), wc, mc, *geo, False, True, True)),
        # spike counts (integers 0..15: SEW ADD's sums) on a format-3 packing, float and uint8; inference only
        ("spike_conv2d_counts_packed", (torch.randint(0, 4, xc.shape, generator=g).double(), wc1, bc[:3], 3,
                                        _pack_conv(wc1, mc1, 1, 3), *geo1[:3])),
        ("spike_conv2d_counts_packed", (torch.randint(0, 16, xc.shape, generator=g).to(torch.uint8), wc1, None, 3,
                                        _pack_conv(wc1, mc1, 1, 3), *geo1[:3])),
        ("max_pool2d", (torch.randn(2, 3, 7, 9, generator=g), [3, 3], [2, 2], [1, 1], [1, 1], False)),
        ("max_pool2d", (xc.bool(), [2, 3], [2, 1], [0, 1], [1, 2], True)),
        ("lif_fwd", (rg(xs), rg(v0), 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True)),
        ("lif_fwd", (xs, v0, 2.0, 0.5, None, False, False, "sigmoid", 4.0, False)),
        ("lif_fwd", (rg(xs), rg(v0), 2.0, 1.0, None, True, True, "atan", 2.0, True)),
        ("lif_fwd", (rg(xs), rg(v0), 3.0, 0.5, 0.1, False, False, "erf", 2.0, True)),
        ("lif_bwd", (torch.randn_like(h), torch.randn_like(v0), None, h, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0)),
        ("lif_bwd", (torch.randn_like(h), None, torch.randn_like(h), h, 2.0, 1.0, None, False, True,
                     "piecewise_quadratic", 1.0)),
        *(("spike_matmul_fwd", args) for args in _matmul_samples()),  # tests/test_spike_matmul.py
    ]


@pytest.mark.parametrize("i", range(len(_opcheck_samples())))
def test_opcheck(i):
    name, args = _opcheck_samples()[i]
    torch.library.opcheck(getattr(OPS, name).default, args)


# The pack ops return a list whose length depends on the mask's density (format 0) and are eager
# only by design (no fake kernel: the layout is data-dependent); their schema is still checked.
_PACK_SAMPLES = [
    ("spike_linear_pack", (torch.randn(5, 7), torch.rand(5, 7) < 0.3, 0)),
    ("spike_linear_pack", (torch.randn(5, 7, dtype=torch.float64), None, 2)),
    ("spike_conv2d_pack", (torch.randn(6, 2, 3, 3), torch.rand(6, 2, 3, 3) < 0.02, 2, [1, 1], 9, 9, 0)),
    ("spike_conv2d_pack", (torch.randn(6, 4, 3, 3), None, 1, [2, 2], 9, 5, 3)),
]


@pytest.mark.parametrize("i", range(len(_PACK_SAMPLES)))
def test_opcheck_pack_schema(i):
    name, args = _PACK_SAMPLES[i]
    torch.library.opcheck(getattr(OPS, name).default, args, test_utils=("test_schema",))


def _rows_def(v, m, i16):
    """Compressed rows by definition (torch ops): row pointers, column of every kept entry in row-major order
    (int16 bits of it when i16: the kernels read uint16), the kept values."""
    rowptr = torch.cat([torch.zeros(1, dtype=torch.long), m.sum(1, dtype=torch.long).cumsum(0)])
    cols = m.nonzero()[:, 1]
    idx = (cols - 65536 * (cols > 32767)).to(torch.int16) if i16 else cols.to(torch.int32)
    return [rowptr, idx, v[m]]


def _assert_same_tensors(got, want, what):
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, f"{what}: tensor {i} {g.dtype}{tuple(g.shape)}"
        assert torch.equal(g, w), f"{what}: tensor {i} differs"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_weights_equal_their_definition(rng, dtype):
    # The packers are C++ loops (csrc/cpu/common.h); every tensor they make must equal its definition, on
    # empty / full / no / non-contiguous masks, odd sizes and K past the int16 sign bit (indices wrap).
    from snnsparse.ops import conv2d as CV
    from snnsparse.ops import linear as L
    for M, K, density in ((7, 13, 0.3), (65, 130, 0.05), (3, 40000, 0.01), (5, 9, 0.0), (5, 9, 1.0), (1, 1, 1.0)):
        w = randn((M, K), rng, dtype)
        for msk in (mask((M, K), density, rng), None, mask((K, M), density, rng).t()):
            m = torch.ones(M, K, dtype=torch.bool) if msk is None else msk
            what = f"linear {M}x{K} density {density} mask {'none' if msk is None else msk.is_contiguous()}"
            colnnz = m.sum(0, dtype=torch.long)
            wn = w.masked_fill(~m, float("nan"))  # a pruned weight is absent whatever its value
            _assert_same_tensors(_pack_linear(wn, msk, 1), [torch.where(m, wn, 0).t().contiguous(), colnnz], what)
            _assert_same_tensors(_pack_linear(wn, msk, 2), _rows_def(wn, m, K < 65536) + [colnnz], what)
            assert L.pack(wn, msk, 0).format == (1 if m.float().mean() >= 0.5 else 2), what
    for O, Cg, g, kk, density in ((6, 4, 1, (3, 3), 0.2), (6, 2, 3, (1, 3), 0.5), (130, 3, 1, (3, 3), 0.0),
                                  (4, 5, 1, (2, 2), 1.0)):
        w = randn((O, Cg, *kk), rng, dtype)
        KK, Og = kk[0] * kk[1], O // g
        for msk in (mask(w.shape, density, rng), None):
            m = torch.ones(w.shape, dtype=torch.bool) if msk is None else msk
            what = f"conv {tuple(w.shape)} groups {g} density {density} mask {msk is not None}"

            def slabs(t):
                return t.reshape(g, Og, Cg, KK).permute(0, 2, 3, 1).reshape(Cg * g, KK, Og)

            tapnnz = slabs(m).sum(2, dtype=torch.long)
            got2 = CV.pack(w, msk, g, 2).tensors
            _assert_same_tensors(list(got2), _rows_def(slabs(w).reshape(Cg * g, KK * Og), slabs(m).reshape(
                Cg * g, KK * Og), KK * Og <= 32768) + [tapnnz], what + " format 2")
            if g == 1 and C.cpu_isa() in ("avx512", "avx2") and dtype == torch.float32:
                got4 = _pack_conv(w, msk, g, 4)
                _assert_same_tensors(got4, _rows_def(w.reshape(O, -1), m.reshape(O, -1), Cg * KK <= 32768)
                                     + [tapnnz], what + " format 4")


def test_every_registered_op_is_opchecked():
    from torch._C import _dispatch_get_registrations_for_dispatch_key as regs
    cpu_ops = {n.split("::")[1].split(".")[0] for n in regs("CPU") if n.startswith("snnsparse::")}
    assert cpu_ops and cpu_ops <= {name for name, _ in _opcheck_samples() + _PACK_SAMPLES}


# ---------------------------------------------------------------------------------------------- refused
def test_bad_input_refused(rng):
    x = spikes((4, 6), 0.5, rng)
    w = randn((3, 6), rng)
    with pytest.raises(TypeError, match="float32 or float64"):
        OPS.spike_linear_fwd(x.half(), w.half(), None, None, False, False)
    with pytest.raises(TypeError, match="spikes must be bool, uint8 or the weight's dtype"):
        OPS.spike_linear_fwd(x.double(), w, None, None, False, False)
    with pytest.raises(TypeError, match="spikes must be bool, uint8 or the weight's dtype"):
        OPS.spike_linear_fwd(x.to(torch.int8), w, None, None, False, False)
    with pytest.raises(TypeError, match="spikes must be bool, uint8 or the weight's dtype"):
        OPS.spike_conv2d_fwd(x.reshape(1, 1, 4, 6).int(), w.reshape(1, 1, 3, 6), None, None, [1, 1], [0, 0], [1, 1],
                             1, False, False)
    with pytest.raises(TypeError, match="float32 or float64"):
        OPS.spike_linear_fwd(x.int(), w.int(), None, None, False, False)
    with pytest.raises(TypeError, match="mask must be bool"):
        OPS.spike_linear_fwd(x, w, None, torch.ones(3, 6), False, False)
    with pytest.raises(RuntimeError, match="spikes must be"):
        OPS.spike_linear_fwd(x[:, :5], w, None, None, False, False)
    with pytest.raises(RuntimeError, match="bias must be"):
        OPS.spike_linear_fwd(x, w, torch.zeros(4), None, False, False)
    with pytest.raises(RuntimeError, match="packed"):
        OPS.spike_linear_fwd_packed(x, w, None, None, 1, [torch.zeros(3)], False, False)
    xc, wc = spikes((2, 4, 5, 5), 0.5, rng), randn((3, 4, 3, 3), rng)
    with pytest.raises(RuntimeError, match="channels"):
        OPS.spike_conv2d_fwd(xc, randn((3, 3, 3, 3), rng), None, None, [1, 1], [0, 0], [1, 1], 1, False, False)
    with pytest.raises(RuntimeError, match="smaller than"):
        OPS.spike_conv2d_fwd(xc, randn((3, 4, 7, 7), rng), None, None, [1, 1], [0, 0], [1, 1], 1, False, False)
    with pytest.raises(TypeError, match="float32 or float64"):
        OPS.spike_conv2d_fwd(xc.bfloat16(), wc.bfloat16(), None, None, [1, 1], [0, 0], [1, 1], 1, False, False)
    with pytest.raises(TypeError):
        OPS.lif_fwd(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(3, dtype=torch.int32), 2.0, 1.0, 0.0, True, False,
                    "sigmoid", 4.0, True)
    with pytest.raises(ValueError, match="tau"):
        OPS.lif_fwd(torch.zeros(2, 3), torch.zeros(3), 0.5, 1.0, 0.0, True, False, "sigmoid", 4.0, True)
    with pytest.raises(ValueError, match="surrogate"):
        OPS.lif_bwd(torch.zeros(2, 3), None, None, torch.zeros(2, 3), 2.0, 1.0, 0.0, True, False, "relu", 1.0)
    with pytest.raises(ValueError, match="binary"):
        ss.functional.spike_linear(x * 0.5, w, backend="cpp")


def test_low_precision_is_upcast(rng):
    s = spikes((2, 3, 10), 0.4, rng)
    w, msk = randn((4, 10), rng), mask((4, 10), 0.5, rng)
    for dt in (torch.float16, torch.bfloat16):
        y = ss.functional.spike_linear(s.to(dt), w.to(dt), mask=msk, backend="cpp")
        assert y.dtype == dt
        assert_close64(y, F.linear(s.to(dt).double(), w.to(dt).double() * msk), rtol=1e-2, atol=1e-2)
        xc, wc = spikes((2, 3, 6, 6), 0.4, rng).to(dt), randn((5, 3, 3, 3), rng).to(dt)
        yc = ss.functional.spike_conv2d(xc, wc, padding=1, backend="cpp")
        assert yc.dtype == dt
        assert_close64(yc, F.conv2d(xc.double(), wc.double(), padding=1), rtol=2e-2, atol=2e-2)
        sl, _ = ss.functional.lif(randn((3, 8), rng).to(dt), backend="cpp")
        assert sl.dtype == dt


# Stale-packing reproductions (fresh masks, fused optimizers, .data writes): tests/test_stale_weights.py


def test_training_step_through_modules(rng):
    layer = ss.nn.SpikeConv2d(4, 6, 3, padding=1, backend="cpp")
    layer.set_mask(mask(layer.weight.shape, 0.3, rng))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = spikes((2, 3, 4, 6, 6), 0.3, rng)
    for _ in range(3):
        opt.zero_grad()
        y = layer(x)
        yr = F.conv2d(x.flatten(0, 1), layer.weight * layer.weight_mask, layer.bias, padding=1)
        assert_close64(y.flatten(0, 1), yr)
        y.square().sum().backward()
        assert not layer.weight.grad[~layer.weight_mask].any()
        opt.step()


def test_call_skips_autograd_only_where_no_gradient_can_be_needed(rng):
    """registry.call: the same values as the op; a gradient wherever an argument wants one (here only the
    second factor, or a tensor inside a list), none under no_grad."""
    from snnsparse.ops.registry import call
    a, b = torch.randn(3, 4, generator=rng), torch.randn(3, 4, generator=rng, requires_grad=True)
    mul, cat = torch.ops.aten.mul.Tensor, torch.ops.aten.cat.default
    out = call(mul, a, b)
    assert out.grad_fn is not None and torch.equal(out, a * b)
    out.sum().backward()
    assert torch.equal(b.grad, a)
    assert call(cat, [a, b]).grad_fn is not None
    with torch.no_grad():
        assert call(mul, a, b).grad_fn is None and torch.equal(call(mul, a, b), a * b)
    assert call(mul, a, a.clone()).grad_fn is None
