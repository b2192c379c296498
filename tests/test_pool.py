"""snnsparse::max_pool2d (the inference max-pool of optimize_for_inference) against torch's
F.max_pool2d: exact values (NaN and -inf included) over a grid of windows, strides, paddings,
dilations and ceil_mode, odd sizes; bool / uint8 spikes equal the float result; bad input refused; the
optimized model's pools replaced and its outputs unchanged."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import snnsparse as ss
from conftest import spikes
from snnsparse.nn.inference import InferenceMaxPool2d
from snnsparse.ops import pool as P

pytestmark = pytest.mark.skipif(ss.backends.available()["cpp"] is not True, reason="the C++ extension is not built")

# kernel, stride, padding, dilation
WINDOWS = [((2, 2), (2, 2), (0, 0), (1, 1)), ((3, 3), (2, 2), (1, 1), (1, 1)), ((3, 2), (1, 2), (1, 0), (1, 1)),
           ((2, 3), (3, 1), (1, 1), (2, 1)), ((1, 1), (1, 1), (0, 0), (1, 1)), ((3, 3), (3, 3), (1, 1), (2, 2))]


def _equal(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_torch(rng, window, ceil_mode, dtype):
    k, s, p, d = window
    for h, w in ((1, 1), (5, 7), (8, 8), (13, 4), (16, 16), (9, 33)):
        if any((k[i] - 1) * d[i] + 1 > (h, w)[i] + 2 * p[i] for i in range(2)):
            continue  # torch refuses too
        x = torch.randn(3, 4, h, w, generator=rng).to(dtype)
        x[0, 1].view(-1)[0] = float("nan")
        x[torch.rand(x.shape, generator=rng) < 0.05] = float("nan")  # either element of a window (torch's order)
        x[1, 2] = float("-inf")
        x[2, 3].view(-1)[-1] = float("inf")
        # +0.0 and -0.0 in one window: equal values (the sign of a zero maximum can differ from torch's, which
        # takes the first in row-major order where the separable kernel takes the first of the first column)
        zeros = torch.rand(x.shape, generator=rng) < 0.3
        x[zeros] = torch.where(torch.rand(x.shape, generator=rng) < 0.5, 0.0, -0.0).to(dtype)[zeros]
        x[0, 0] = x[0, 0].abs().neg()  # a plane of negatives and zeros only
        want = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil_mode)
        got = P.max_pool2d(x, k, s, p, d, ceil_mode)
        assert got.shape == want.shape == (3, 4, *P.output_size(h, w, k, s, p, d, ceil_mode))
        _equal(got, want)
        xs = spikes((3, 4, h, w), 0.2, rng)
        want = F.max_pool2d(xs.to(dtype), k, s, p, d, ceil_mode=ceil_mode)
        for bdt in (torch.bool, torch.uint8):
            if bool(want.isinf().any()):  # a window with no input element: torch's -inf has no byte value
                with pytest.raises(RuntimeError, match="a window covers no input element"):
                    P.max_pool2d(xs.to(bdt), k, s, p, d, ceil_mode)
                continue
            got = P.max_pool2d(xs.to(bdt), k, s, p, d, ceil_mode)
            assert got.dtype == bdt
            _equal(got.to(dtype), want)


def test_edges(rng):
    for rate in (0.0, 1.0):
        x = spikes((2, 3, 6, 6), rate, rng)
        _equal(P.max_pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1), False), F.max_pool2d(x, 3, 2, 1))
    empty = torch.zeros(0, 3, 6, 6)
    assert P.max_pool2d(empty, (2, 2), (2, 2), (0, 0), (1, 1), False).shape == (0, 3, 3, 3)


def test_bad_input_refused():
    x = torch.zeros(1, 2, 6, 6)
    with pytest.raises(TypeError, match="float32, float64, bool or uint8"):
        P.max_pool2d(x.int(), (2, 2), (2, 2), (0, 0), (1, 1), False)
    with pytest.raises(RuntimeError, match=r"x must be \[N, C, H, W\]"):
        P.max_pool2d(x[0], (2, 2), (2, 2), (0, 0), (1, 1), False)
    with pytest.raises(RuntimeError, match="padding must be at most half"):
        P.max_pool2d(x, (2, 2), (2, 2), (2, 0), (1, 1), False)
    with pytest.raises(RuntimeError, match="too small for the window"):
        P.max_pool2d(torch.zeros(1, 1, 2, 2), (5, 5), (1, 1), (0, 0), (1, 1), False)


@pytest.mark.parametrize("multi_step", [False, True])
def test_inference_layer_matches_the_pool_it_replaces(rng, multi_step):
    """Every layout the original takes, with and without the kernel (another dtype / a gradient: torch)."""
    pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
    layer = InferenceMaxPool2d(pool, multi_step=multi_step)
    shapes = [(2, 3, 4, 9, 9), (2, 3, 9, 9)] if multi_step else [(4, 9, 9), (3, 4, 9, 9)]
    for shape in shapes:
        x = torch.randn(shape, generator=rng)
        want = pool(x.flatten(0, 1)).unflatten(0, shape[:2]) if multi_step else pool(x)
        _equal(layer(x), want)
        _equal(layer(x.half()).float(), want.half().float())
        xg = x.clone().requires_grad_()
        y = layer(xg)
        y.sum().backward()
        assert xg.grad is not None and xg.grad.sum() == y.numel()


def test_optimize_replaces_max_pools(rng):
    model = nn.Sequential(ss.nn.SpikeConv2d(3, 8, 3, padding=1), ss.nn.LIF(), nn.MaxPool2d(2),
                          ss.nn.SpikeConv2d(8, 8, 3, padding=1), ss.nn.LIF(), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                          nn.Flatten(), nn.Linear(8 * 5 * 5, 3)).eval()
    x = torch.rand(5, 3, 16, 16, generator=rng) * 3
    opt = ss.nn.optimize_for_inference(model, x)
    report = opt.report()
    assert report["2"].action == report["5"].action == "kept-values"
    assert sum(isinstance(m, InferenceMaxPool2d) for m in opt.modules()) == 2
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "reset"):
                m.reset()
        torch.testing.assert_close(opt(x), model(x), rtol=1e-4, atol=1e-4)
