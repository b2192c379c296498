"""Reference backend vs torch dense ops in float64 over the DESIGN.md grid."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import snnsparse as ss
from conftest import DENSITIES, ODD_SIZES, RATES, TIMESTEPS, assert_close64, mask, randn, spikes


@pytest.mark.parametrize("rate,density", list(itertools.product(RATES, DENSITIES)))
@pytest.mark.parametrize("t", TIMESTEPS)
def test_linear_grid(rng, rate, density, t):
    for k, m in ((ODD_SIZES[0], ODD_SIZES[2]), (ODD_SIZES[2], ODD_SIZES[1]), (16, 7)):
        s = spikes((t, 3, k), rate, rng, torch.float64)
        w, b, msk = randn((m, k), rng, torch.float64), randn((m,), rng, torch.float64), mask((m, k), density, rng)
        y, n = ss.functional.spike_linear(s, w, b, mask=msk, backend="reference", return_count=True)
        assert y.shape == (t, 3, m)
        assert_close64(y, F.linear(s, w * msk, b), rtol=1e-12, atol=1e-12)
        assert n == int((s.reshape(-1, k) @ msk.double().t()).sum())


@pytest.mark.parametrize("rate,density", list(itertools.product(RATES, DENSITIES)))
def test_conv_grid(rng, rate, density):
    cases = [  # (cin, cout, groups, k(h,w), stride, padding, dilation, hw)
        (3, 5, 1, (3, 3), 1, 1, 1, (7, 9)),
        (4, 6, 2, (1, 3), (2, 1), (0, 1), 1, (5, 6)),
        (6, 6, 6, (3, 3), 1, 2, 2, (8, 8)),
        (1, 3, 1, (2, 5), 2, (1, 2), (1, 2), (11, 10)),
    ]
    for cin, cout, g, kk, st, pad, dil, (h, wd) in cases:
        for t in TIMESTEPS:
            s = spikes((t, 2, cin, h, wd), rate, rng, torch.float64)
            w = randn((cout, cin // g, *kk), rng, torch.float64)
            b = randn((cout,), rng, torch.float64)
            msk = mask(w.shape, density, rng)
            y, n = ss.functional.spike_conv2d(s, w, b, st, pad, dil, g, mask=msk, backend="reference",
                                              return_count=True)
            ref = F.conv2d(s.flatten(0, 1), w * msk, b, st, pad, dil, g)
            assert_close64(y.flatten(0, 1), ref, rtol=1e-12, atol=1e-12)
            assert n == int(F.conv2d(s.flatten(0, 1), msk.double(), None, st, pad, dil, g).sum())


def test_flat_conv_input_and_dtypes(rng):
    s = spikes((5, 3, 6, 6), 0.3, rng)
    w = randn((4, 3, 3, 3), rng)
    for dtype in (torch.bool, torch.uint8, torch.float32):
        y = ss.functional.spike_conv2d(s.to(dtype), w, padding=1, backend="reference")
        assert_close64(y, F.conv2d(s.double(), w.double(), padding=1))


def test_empty_batch_and_no_spikes(rng):
    w = randn((4, 6), rng)
    assert ss.functional.spike_linear(torch.zeros(0, 6), w).shape == (0, 4)
    y, n = ss.functional.spike_linear(torch.zeros(2, 3, 6), w, return_count=True, backend="reference")
    assert n == 0 and not y.any()
    wc = randn((2, 3, 3, 3), rng)
    assert ss.functional.spike_conv2d(torch.zeros(0, 1, 3, 5, 5), wc, padding=1).shape == (0, 1, 2, 5, 5)


def test_dense_weight_grad_reaches_pruned(rng):
    s = spikes((4, 8), 0.5, rng, torch.float64)
    s[0] = 1  # at least one event per input
    w = randn((3, 8), rng, torch.float64).requires_grad_()
    msk = mask((3, 8), 0.5, rng)
    msk[0, 0] = False
    for dense in (False, True):
        w.grad = None
        ss.functional.spike_linear(s, w, mask=msk, backend="reference", dense_weight_grad=dense).sum().backward()
        expected = torch.ones(3, 4, dtype=torch.float64) @ s
        assert_close64(w.grad, expected if dense else expected * msk)


def test_gradcheck_reference(rng):
    # gradcheck perturbs its inputs, so spikes (which must stay binary) are checked separately:
    # weight/bias by gradcheck, spike grads against autograd through F.conv2d.
    s = spikes((2, 3, 5, 5), 0.4, rng, torch.float64)
    w = randn((4, 3, 3, 3), rng, torch.float64).requires_grad_()
    b = randn((4,), rng, torch.float64).requires_grad_()
    msk = mask(w.shape, 0.5, rng)
    assert torch.autograd.gradcheck(
        lambda w_, b_: ss.functional.spike_conv2d(s, w_, b_, padding=1, mask=msk, backend="reference"), (w, b))
    s1 = s.clone().requires_grad_()
    s2 = s.clone().requires_grad_()
    g = randn((2, 4, 5, 5), rng, torch.float64)
    ss.functional.spike_conv2d(s1, w, b, padding=1, mask=msk, backend="reference").backward(g)
    F.conv2d(s2, w * msk, b, padding=1).backward(g)
    assert_close64(s1.grad, s2.grad, rtol=1e-12, atol=1e-12)
