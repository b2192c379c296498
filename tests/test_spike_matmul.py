"""spike_matmul and sdsa (spiking transformers) against the float64 reference, on every backend this machine has.

* cpp (csrc/cpu/matmul.cpp) and reference: the grid below (no spikes, all spikes, odd sizes, T in {1, 4}),
  float/bool/uint8 spike operands, broadcast batch dims, empty problems, counts, gradients (float64
  gradcheck, every mode), opcheck, refused inputs.
* CUDA device code (csrc/cuda/matmul_kernels.cuh) under the CPU emulator (tests/cuda_emu.cpp, the fixture
  of test_cuda_ops.py); the registered CUDA op itself where a GPU exists (test_cuda_ops.py's conventions).
* Triton: tests/test_triton_ops.py (test_spike_matmul_*), which runs the kernels in Triton's interpreter.
"""
import ctypes
import itertools

import pytest
import torch

import snnsparse as ss
from snnsparse.functional import NonBinarySpikesError
from snnsparse.ops import reference as R

from conftest import RATES, TIMESTEPS, spikes as rand_spikes
from test_cuda_ops import EMU_DT, _ptr, emu  # noqa: F401  (emu: the fixture building the CUDA emulator)

OPS = torch.ops.snnsparse
CPP = ss.backends.available()["cpp"] is True
cpp_only = pytest.mark.skipif(not CPP, reason=f"cpp backend unavailable: {ss.backends.available()['cpp']}")
BACKENDS = ["reference"] + (["cpp"] if CPP else [])
# (M, K, N): odd sizes, one and several 64-bit words of K, more than 64 columns, a head dimension
SIZES = [(1, 1, 1), (3, 127, 5), (64, 64, 64), (7, 65, 130), (2, 200, 3)]
MODES = ("both", "a", "b")


def _operands(gen, mode, lead, m, k, n, rate, spike_dtype=torch.float32, dense_dtype=torch.float32):
    a = rand_spikes((*lead, m, k), rate, gen, spike_dtype) if mode in ("both", "a") else \
        torch.randn((*lead, m, k), generator=gen).to(dense_dtype)
    b = rand_spikes((*lead, k, n), rate, gen, spike_dtype) if mode in ("both", "b") else \
        torch.randn((*lead, k, n), generator=gen).to(dense_dtype)
    return a, b


def _count64(a, b, mode):
    """The additions an event-driven kernel executes, computed independently in float64."""
    a64, b64 = a.double(), b.double()
    if mode == "a":
        return int((a64 != 0).sum()) * b.shape[-1]
    if mode == "b":
        return int((b64 != 0).sum()) * a.shape[-2]
    return int((a64 @ b64).sum())


def _check(a, b, mode, backend, what, tol=1e-5):
    out, n = ss.functional.spike_matmul(a, b, binary=mode, backend=backend, return_count=True)
    ref = a.double() @ b.double()
    assert out.shape == ref.shape, what
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * max(1.0, ref.abs().max().item()), msg=what)
    assert n == _count64(a, b, mode), what
    if mode == "both":
        assert torch.equal(out.double(), ref), what   # integer counts: exact


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("t", TIMESTEPS)
def test_grid(rng, backend, mode, t):
    """[T, B=2, heads=3, M, K] @ [T, 2, 3, K, N] over spike rates 0 (empty), 0.05, 0.5, 1 (full) and odd sizes."""
    for (m, k, n), rate in itertools.product(SIZES, RATES):
        a, b = _operands(rng, mode, (t, 2, 3), m, k, n, rate)
        _check(a, b, mode, backend, f"{mode} T={t} {(m, k, n)} rate={rate}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spike_dtype", [torch.bool, torch.uint8, torch.float64])
def test_spike_dtypes(rng, backend, spike_dtype):
    """Compact spikes (bool/uint8, read as bytes by the cpp kernels) and float64 give the same products."""
    for mode, (m, k, n) in itertools.product(MODES, SIZES):
        dense = torch.float64 if spike_dtype == torch.float64 else torch.float32
        a, b = _operands(rng, mode, (2,), m, k, n, 0.3, spike_dtype, dense)
        out = ss.functional.spike_matmul(a, b, binary=mode, backend=backend)
        assert out.dtype == (torch.float64 if spike_dtype == torch.float64 else torch.float32)
        _check(a, b, mode, backend, f"{mode} {spike_dtype} {(m, k, n)}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_mixed_and_broadcast(rng, backend):
    """binary="auto" decides from the values; a float spike operand with a bool one; batch dims broadcast."""
    a = rand_spikes((4, 1, 3, 9, 70), 0.2, rng)
    b = rand_spikes((2, 1, 70, 5), 0.2, rng, torch.bool)
    out, n = ss.functional.spike_matmul(a, b, backend=backend, return_count=True)
    ref = a.double() @ b.double()
    assert out.shape == (4, 2, 3, 9, 5) and torch.equal(out.double(), ref) and n == int(ref.sum())
    f = torch.randn(9, 70, generator=rng)
    out, n = ss.functional.spike_matmul(f, b, backend=backend, return_count=True)   # auto -> "b"
    torch.testing.assert_close(out.double(), f.double() @ b.double(), rtol=1e-5, atol=1e-5)
    assert n == int(b.sum()) * 9
    out = ss.functional.spike_matmul(a, torch.randn(70, 5, generator=rng).int(), backend=backend)  # integer dense
    assert out.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_problems(rng, backend):
    for mode, (bt, m, k, n) in itertools.product(MODES, [(0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0)]):
        a, b = _operands(rng, mode, (bt,), m, k, n, 0.5)
        out, cnt = ss.functional.spike_matmul(a, b, binary=mode, backend=backend, return_count=True)
        assert out.shape == (bt, m, n) and cnt == 0 and not out.any()
    if CPP:
        for mode in MODES:
            out, cnt = OPS.spike_matmul_fwd(torch.ones(2, 3, 0), torch.ones(2, 0, 4), mode, True)
            assert out.shape == (2, 3, 4) and not out.any() and int(cnt) == 0


@cpp_only
def test_low_precision_is_upcast(rng):
    for mode, dt in itertools.product(MODES, (torch.float16, torch.bfloat16)):
        a, b = _operands(rng, mode, (3,), 5, 70, 6, 0.3, dt, dt)
        out = ss.functional.spike_matmul(a, b, binary=mode, backend="cpp")
        assert out.dtype == dt
        torch.testing.assert_close(out.double(), a.double() @ b.double(), rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------------------------------------ autograd
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_gradients_vs_float64_autograd(rng, backend, mode):
    """Every float operand's gradient, spike operands included (the straight dense gradient), equals the
    float64 autograd of torch.matmul."""
    for (m, k, n), rate in itertools.product(SIZES, (0.0, 0.3, 1.0)):
        a, b = _operands(rng, mode, (2, 3), m, k, n, rate)
        a.requires_grad_(), b.requires_grad_()
        out = ss.functional.spike_matmul(a, b, binary=mode, backend=backend)
        a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
        ref = a64 @ b64
        g = torch.randn(ref.shape, generator=rng)
        out.backward(g)
        ref.backward(g.double())
        for got, want, name in ((a.grad, a64.grad, "a"), (b.grad, b64.grad, "b")):
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * max(1.0, want.abs().max().item()),
                                       msg=f"grad {name} {mode} {(m, k, n)} rate={rate}")


@cpp_only
@pytest.mark.parametrize("mode", ["a", "b"])
def test_gradcheck(rng, mode):
    """float64 gradcheck and gradgradcheck through the dense operand: its gradient runs the op again (a^T @ g
    with a binary, g @ b^T with b binary), and so does the double backward. Spike operands cannot be perturbed
    by finite differences (the op refuses the non-binary values); their gradients are checked against float64
    autograd in test_gradients_vs_float64_autograd."""
    a, b = _operands(rng, mode, (2,), 3, 70, 4, 0.4, torch.float64, torch.float64)
    spk = a if mode == "a" else b
    dense = (b if mode == "a" else a).requires_grad_()
    if mode == "a":
        f = lambda d: ss.functional.spike_matmul(spk, d, binary="a", backend="cpp")  # noqa: E731
    else:
        f = lambda d: ss.functional.spike_matmul(d, spk, binary="b", backend="cpp")  # noqa: E731
    assert torch.autograd.gradcheck(f, (dense,))
    assert torch.autograd.gradgradcheck(f, (dense,))


def _opcheck_samples():
    g = torch.Generator().manual_seed(0)
    s = lambda *shape: (torch.rand(shape, generator=g) < 0.4).double()  # noqa: E731
    d = lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64)  # noqa: E731
    rg = lambda t: t.requires_grad_()  # noqa: E731
    return [
        (rg(s(2, 3, 70)), rg(s(2, 70, 5)), "both", True),
        (s(2, 3, 70).bool(), s(2, 70, 5).bool(), "both", True),
        (rg(s(2, 3, 9)), rg(d(2, 9, 5)), "a", True),
        (s(1, 3, 9).to(torch.uint8), rg(d(1, 9, 5)), "a", False),
        (rg(d(2, 3, 130)), rg(s(2, 130, 5)), "b", True),
        (rg(d(2, 3, 9)), s(2, 9, 5).bool(), "b", False),
    ]


@cpp_only
@pytest.mark.parametrize("i", range(6))
def test_opcheck(i):
    torch.library.opcheck(OPS.spike_matmul_fwd.default, _opcheck_samples()[i])


# ------------------------------------------------------------------------------------------------ refused
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_refused(rng, backend):
    sm = ss.functional.spike_matmul
    s = rand_spikes((2, 3, 4), 0.5, rng)
    t = rand_spikes((2, 4, 5), 0.5, rng)
    f = torch.randn(2, 4, 5, generator=rng)
    with pytest.raises(ValueError, match="share K"):
        sm(s, rand_spikes((2, 3, 5), 0.5, rng), backend=backend)
    with pytest.raises(ValueError, match="at least 2-D"):
        sm(s, torch.ones(4), backend=backend)
    with pytest.raises(ValueError, match="broadcast"):
        sm(s, rand_spikes((3, 4, 5), 0.5, rng), backend=backend)
    with pytest.raises(ValueError, match="binary must be one of"):
        sm(s, t, binary="left", backend=backend)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        sm(s.tolist(), t, backend=backend)
    with pytest.raises(TypeError, match="same floating dtype"):
        sm(s, f.double(), binary="a", backend=backend)
    with pytest.raises(TypeError, match="return_count"):
        sm(s, t, backend=backend, return_count=1)
    # non-binary where binary is declared: never a silent product
    for mode in MODES:
        with pytest.raises(NonBinarySpikesError, match=r"spike_matmul: b is declared binary.*0\.5") if mode != "a" \
                else pytest.raises(NonBinarySpikesError, match="spike_matmul: a is declared binary"):
            if mode == "a":
                sm(s * 2, f, binary="a", backend=backend)
            else:
                sm(s if mode == "both" else f[:, :3, :4], t * 0.5, binary=mode, backend=backend)
    with pytest.raises(NonBinarySpikesError, match="b is declared binary"):
        sm(s.bool(), torch.full((2, 4, 5), 3, dtype=torch.uint8), binary="both", backend=backend)
    with pytest.raises(NonBinarySpikesError, match="a is declared binary.*nan"):
        sm(torch.full((2, 3, 4), float("nan")), t, binary="both", backend=backend)
    with pytest.raises(NonBinarySpikesError, match="neither a nor b is binary"):
        sm(f.transpose(1, 2), f, backend=backend)
    with pytest.raises(TypeError, match="a spike operand"):
        sm(s.int(), t, binary="both", backend=backend)


@cpp_only
def test_op_refuses_non_binary_and_bad_args():
    """The registered CPU op itself refuses non-binary spike operands (every kernel: bb, sd, ds; float and
    bytes) and malformed arguments."""
    ok = torch.ones(2, 3, 70)
    bad = ok.clone()
    bad[1, 2, 69] = 2.0
    d = torch.randn(2, 70, 70)
    for args in ((bad, ok.transpose(1, 2), "both"), (ok, bad.transpose(1, 2).contiguous(), "both"),
                 (bad, d, "a"), (d[:, :3], bad.transpose(1, 2).contiguous(), "b"),
                 (bad.to(torch.uint8), ok.transpose(1, 2).to(torch.uint8), "both"),
                 (d[:, :3], bad.transpose(1, 2).to(torch.uint8), "b")):
        with pytest.raises(ValueError, match="spikes must be binary"):
            OPS.spike_matmul_fwd(*args, False)
    with pytest.raises(ValueError, match="binary must be"):
        OPS.spike_matmul_fwd(ok, d, "x", False)
    with pytest.raises(RuntimeError, match="share Bt and K"):
        OPS.spike_matmul_fwd(ok, d[:, :5], "a", False)
    with pytest.raises(TypeError, match="float32 or float64"):
        OPS.spike_matmul_fwd(ok.bool(), d.bool(), "a", False)
    with pytest.raises(TypeError, match="same dtype"):
        OPS.spike_matmul_fwd(ok, d.double(), "a", False)


# ------------------------------------------------------------------------------------------------ sdsa
def _heaviside(x):
    return (x >= 2.0).to(x.dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t", TIMESTEPS)
def test_sdsa_vs_reference(rng, backend, t):
    """SDT's Q * SN(SUM_c(K * V)) on bits equals the float64 formula, with SDT's LIF and a Heaviside neuron,
    from empty to full spike tensors, float and bool inputs."""
    from snnsparse.functional import _sdt_neuron
    for rate, (n, d), dt in itertools.product(RATES, ((5, 3), (64, 64), (7, 130)), (torch.float32, torch.bool)):
        q, k, v = (rand_spikes((t, 2, 3, n, d), rate, rng, dt) for _ in range(3))
        for neuron, ref_neuron in ((None, _sdt_neuron("reference")), (_heaviside, _heaviside)):
            out = ss.functional.sdsa(q, k, v, neuron=neuron, backend=backend)
            ref = R.sdsa(q.double(), k.double(), v.double(), ref_neuron)
            assert out.dtype == torch.float32 and torch.equal(out.double(), ref), (rate, n, d, dt)


def test_sdsa_gradient_and_refusals(rng):
    q, k, v = (rand_spikes((4, 2, 9, 6), 0.4, rng).requires_grad_() for _ in range(3))
    ss.functional.sdsa(q, k, v, neuron=torch.sigmoid).sum().backward()
    q2, k2, v2 = (x.detach().double().requires_grad_() for x in (q, k, v))
    R.sdsa(q2, k2, v2, torch.sigmoid).sum().backward()
    for got, want in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    s = rand_spikes((4, 2, 9, 6), 0.4, rng)
    with pytest.raises(NonBinarySpikesError, match="sdsa: k"):
        ss.functional.sdsa(s, s * 3, s)
    with pytest.raises(ValueError, match="same shape"):
        ss.functional.sdsa(s, s[:, :, :3], s)
    with pytest.raises(NonBinarySpikesError, match="neuron's output"):
        ss.functional.sdsa(s, s, s, neuron=lambda x: x)
    with pytest.raises(TypeError, match="callable"):
        ss.functional.sdsa(s, s, s, neuron=0.5)


# ------------------------------------------------------------------------------------------------ CUDA device code
def _emu_matmul(lib, a, b, mode, count=True):
    a, b = a.contiguous(), b.contiguous()
    out = torch.full((a.shape[0], a.shape[1], b.shape[2]), float("nan"), dtype=a.dtype)
    n = ctypes.c_longlong(-1)
    rc = lib.emu_matmul(EMU_DT[a.dtype], _ptr(a), _ptr(b), _ptr(out), ctypes.byref(n), ctypes.c_longlong(a.shape[0]),
                        ctypes.c_longlong(a.shape[1]), ctypes.c_longlong(a.shape[2]), ctypes.c_longlong(b.shape[2]),
                        MODES.index(mode), int(count))
    assert rc == 0
    return out, n.value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_emu_cuda_matmul(emu, rng, dtype):
    """The CUDA kernels (pack, AND + popcount, spikes x dense with swapped strides, block counts) vs float64."""
    tol = {torch.float32: 1e-5, torch.float64: 1e-10, torch.float16: 1e-2, torch.bfloat16: 2e-2}[dtype]
    for mode, (m, k, n), rate in itertools.product(MODES, [(1, 1, 1), (3, 33, 5), (9, 70, 40), (2, 64, 300)],
                                                   (0.0, 0.3, 1.0)):
        a, b = _operands(rng, mode, (2,), m, k, n, rate, dtype, dtype)
        out, cnt = _emu_matmul(emu, a, b, mode)
        ref = a.double() @ b.double()
        what = f"{mode} {(m, k, n)} rate={rate}"
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * max(1.0, ref.abs().max().item()), msg=what)
        assert cnt == _count64(a, b, mode), what
        out2, cnt2 = _emu_matmul(emu, a, b, mode, count=False)
        assert torch.equal(out2, out) and cnt2 == 0, what
