"""Empty shapes (K = 0, Cin = 0, Cout = 0, H = 0 with padding, N / T / B = 0) give what torch's
F.linear / F.conv2d give, on every backend, gradients included; where torch raises, a ValueError."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as TF

import snnsparse as ss

F = ss.functional

# (spikes shape, weight shape); spikes [..., K], weight [M, K]
LINEAR_CASES = {
    "K=0": ((3, 0), (4, 0)),
    "M=0": ((3, 4), (0, 4)),
    "N=0": ((0, 4), (5, 4)),
    "T=0": ((0, 2, 4), (5, 4)),
    "B=0": ((2, 0, 4), (5, 4)),
    "K=0,M=0": ((3, 0), (0, 0)),
}
# (spikes shape, weight shape, padding, groups) where F.conv2d answers
CONV_CASES = {
    "N=0": ((0, 2, 5, 5), (3, 2, 3, 3), 0, 1),
    "T=0": ((0, 2, 2, 5, 5), (3, 2, 3, 3), 0, 1),
    "B=0": ((2, 0, 2, 5, 5), (3, 2, 3, 3), 1, 1),
    "N=0,H=0": ((0, 2, 0, 4), (3, 2, 1, 1), 1, 1),
    "N=0,groups": ((0, 4, 5, 5), (6, 2, 3, 3), 1, 2),
}
# Cin = 0: the sum has no terms, the output is the bias over [N, Cout, Ho, Wo] (torch's conv2d returns
# [N, 0, Ho, Wo] there, without the bias: the channel count of the input, not of the weight).
# Cout = 0: an empty [N, 0, Ho, Wo] output (torch's conv2d raises).
CONV_NO_TERMS = {
    "Cin=0": ((2, 0, 5, 5), (3, 0, 3, 3), 0, 1),
    "Cin=0,T,B": ((2, 3, 0, 5, 5), (3, 0, 3, 3), 1, 1),
    "Cin=0,H=0": ((2, 0, 0, 4), (3, 0, 1, 1), 1, 1),
    "Cin=0,groups": ((2, 0, 5, 5), (4, 0, 3, 3), 0, 2),
    "Cout=0": ((2, 2, 5, 5), (0, 2, 3, 3), 0, 1),
    "Cout=0,T,B": ((2, 3, 2, 5, 5), (0, 2, 3, 3), 1, 1),
}


def _backends():
    out = []
    for b in ("reference", "cpp"):
        ok = ss.backends.available()[b]
        out.append(pytest.param(b, marks=pytest.mark.skipif(ok is not True, reason=f"{b}: {ok}")))
    return out


def _leaves(spikes_shape, weight_shape, bias, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    s = (torch.rand(spikes_shape, generator=gen) < 0.5).to(dtype).requires_grad_()
    w = torch.randn(weight_shape, generator=gen, dtype=dtype).requires_grad_()
    b = torch.randn(weight_shape[0], generator=gen, dtype=dtype).requires_grad_() if bias else None
    return s, w, b


def _grads(out, leaves):
    g = torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape) / 7 + 1
    return torch.autograd.grad(out, [t for t in leaves if t is not None], g, allow_unused=True)


def _same(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def check_linear(backend, name, bias):
    s_shape, w_shape = LINEAR_CASES[name]
    s, w, b = _leaves(s_shape, w_shape, bias)
    out, n = F.spike_linear(s, w, b, backend=backend, return_count=True)
    ref = TF.linear(s, w, b)
    _same(out, ref)
    assert n == 0 and isinstance(n, int)
    for got, want in zip(_grads(out, (s, w, b)), _grads(ref, (s, w, b))):
        _same(got, want)
    mask = torch.rand(w_shape) < 0.5
    _same(F.spike_linear(s.detach().bool(), w, b, mask=mask, backend=backend), TF.linear(s, w * mask, b))


def check_conv(backend, name, bias):
    s_shape, w_shape, padding, groups = CONV_CASES[name]
    s, w, b = _leaves(s_shape, w_shape, bias)
    out, n = F.spike_conv2d(s, w, b, 1, padding, 1, groups, backend=backend, return_count=True)
    ref = TF.conv2d(s.flatten(0, 1) if s.dim() == 5 else s, w, b, 1, padding, 1, groups)
    ref = ref.reshape(*s_shape[:-3], *ref.shape[1:])
    _same(out, ref)
    assert n == 0 and isinstance(n, int)
    for got, want in zip(_grads(out, (s, w, b)), _grads(ref, (s, w, b))):
        _same(got, want)


def check_conv_no_terms(backend, name, bias):
    s_shape, w_shape, padding, groups = CONV_NO_TERMS[name]
    s, w, b = _leaves(s_shape, w_shape, bias)
    out, n = F.spike_conv2d(s, w, b, 1, padding, 1, groups, backend=backend, return_count=True)
    cout, _, kh, kw = w_shape
    ho, wo = s_shape[-2] + 2 * padding - kh + 1, s_shape[-1] + 2 * padding - kw + 1
    want = torch.zeros(*s_shape[:-3], cout, ho, wo, dtype=w.dtype)
    if bias:
        want = want + b.detach().view(-1, 1, 1)
    _same(out, want)
    assert n == 0 and isinstance(n, int)
    gs, gw, *gb = _grads(out, (s, w, b))
    _same(gs, torch.zeros_like(s))        # no output depends on a spike
    _same(gw, torch.zeros_like(w))
    if bias:
        g = torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape) / 7 + 1
        _same(gb[0], g.sum(dim=tuple(d for d in range(g.dim()) if d != g.dim() - 3)))


def run_all(backend):
    """Every case on `backend` (the triton test runs this in an interpreter subprocess)."""
    for bias in (False, True):
        for name in LINEAR_CASES:
            check_linear(backend, name, bias)
        for name in CONV_CASES:
            check_conv(backend, name, bias)
        for name in CONV_NO_TERMS:
            check_conv_no_terms(backend, name, bias)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name", list(LINEAR_CASES))
@pytest.mark.parametrize("backend", _backends())
def test_linear_empty_matches_torch(backend, name, bias):
    check_linear(backend, name, bias)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name", list(CONV_CASES))
@pytest.mark.parametrize("backend", _backends())
def test_conv_empty_matches_torch(backend, name, bias):
    check_conv(backend, name, bias)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name", list(CONV_NO_TERMS))
@pytest.mark.parametrize("backend", _backends())
def test_conv_without_input_or_output_channels(backend, name, bias):
    check_conv_no_terms(backend, name, bias)


def test_cin_zero_is_the_sum_over_an_all_zero_channel():
    # The Cin = 0 answer is the one F.conv2d gives for a single input channel that contributes nothing.
    b = torch.randn(3, dtype=torch.float64)
    got = F.spike_conv2d(torch.ones(2, 0, 5, 5, dtype=torch.float64), torch.randn(3, 0, 3, 3, dtype=torch.float64), b,
                         padding=1, backend="reference")
    want = TF.conv2d(torch.zeros(2, 1, 5, 5, dtype=torch.float64), torch.zeros(3, 1, 3, 3, dtype=torch.float64), b,
                     padding=1)
    _same(got, want)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("spikes,weight,padding,match", [
    ((1, 2, 2, 4), (3, 2, 3, 3), 0, "smaller than the dilated kernel"),
    ((2, 2, 0, 4), (3, 2, 1, 1), 0, "smaller than the dilated kernel"),
    ((2, 2, 0, 4), (3, 2, 1, 1), 1, "empty image 0x4"),     # torch: only zero batch or channels
    ((2, 2, 4, 0), (3, 2, 1, 1), 1, "empty image 4x0"),
    ((2, 0, 2, 4), (3, 0, 3, 3), 0, "smaller than the dilated kernel"),
    ((1, 2, 4, 4), (3, 2, 0, 3), 0, "empty kernel 0x3"),
])
def test_conv_where_torch_raises_is_a_value_error(backend, spikes, weight, padding, match):
    s, w = torch.ones(spikes), torch.randn(weight)
    with pytest.raises(RuntimeError):
        TF.conv2d(s, w, padding=padding)
    with pytest.raises(ValueError, match=f"spike_conv2d: .*{match}"):
        F.spike_conv2d(s, w, padding=padding, backend=backend)


@pytest.mark.parametrize("backend", _backends())
def test_empty_outputs_still_refuse_non_binary_spikes(backend):
    with pytest.raises(F.NonBinarySpikesError, match="spike_linear: spikes must be binary"):
        F.spike_linear(torch.full((3, 4), 0.5), torch.randn(0, 4), backend=backend)
    with pytest.raises(F.NonBinarySpikesError, match="spike_conv2d: spikes must be binary"):
        F.spike_conv2d(torch.full((1, 2, 4, 4), 2.0), torch.randn(0, 2, 3, 3), backend=backend)


@pytest.mark.slow  # a subprocess (heavy); make test runs every slow test too
def test_empty_shapes_on_triton_interpreter():
    # Triton runs on CPU only under TRITON_INTERPRET=1, set before triton is imported: a subprocess.
    code = ("import sys; sys.path.insert(0, 'tests'); import snnsparse as ss; "
            "ok = ss.backends.available()['triton']; "
            "print('SKIP', ok) if ok is not True else (__import__('test_empty_shapes').run_all('triton'), print('OK'))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, TRITON_INTERPRET="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    if r.stdout.startswith("SKIP"):
        pytest.skip(f"triton: {r.stdout[5:].strip()}")
    assert r.stdout.strip().endswith("OK")
