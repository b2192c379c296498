"""CPU kernel variants (csrc/cpu/isa_*.cpp): every variant this CPU runs, forced with
SNNSPARSE_CPU_ISA in a fresh process, checked op by op against a float64 reference; bad values of
SNNSPARSE_CPU_ISA refused at import; the default build portable (no -march, nothing beyond
baseline x86-64 outside the AVX2/AVX-512 kernel namespaces) and, where qemu-user exists, loading and
computing on an emulated CPU without AVX / without AVX-512 (slow).

The variant is chosen once, when snnsparse._C is imported, so each variant needs its own process:
this file is also the worker (`python tests/test_cpu_isa.py <seed>` under SNNSPARSE_CPU_ISA=...).
Replay a failure with SNNSPARSE_TEST_SEED=<seed> (the seed is printed).
"""
import functools
import itertools
import os
import platform
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import snnsparse as ss

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = ("avx512", "avx2", "generic")

pytestmark = pytest.mark.skipif(ss.backends.available()["cpp"] is not True,
                                reason=f"cpp backend unavailable: {ss.backends.available()['cpp']}")


def _env(isa):
    env = dict(os.environ)
    env.pop("SNNSPARSE_CPU_ISA", None)
    if isa is not None:
        env["SNNSPARSE_CPU_ISA"] = isa
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _import_c(isa):
    """(returncode, output) of importing snnsparse._C under SNNSPARSE_CPU_ISA=isa."""
    code = "import torch, snnsparse._C; print('selected', torch.ops.snnsparse.cpu_isa())"
    p = subprocess.run([sys.executable, "-c", code], env=_env(isa), capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


@functools.lru_cache(maxsize=None)
def _runnable():
    """Variants compiled into this build that this CPU runs, as the extension reports them in its
    refusal message (the same list the selection uses)."""
    rc, out = _import_c("no-such-variant")
    m = re.search(r"this CPU runs ([a-z0-9,]+)", out)
    assert rc != 0 and m, out
    return tuple(m.group(1).split(","))


def _seed():
    env = os.environ.get("SNNSPARSE_TEST_SEED")
    return int(env) if env else int.from_bytes(os.urandom(4), "little")


# ------------------------------------------------------------------------------------------- tests
def test_default_selection_is_widest_runnable():
    from snnsparse.ops import cpp as C
    compiled = ss._ext.cpu_isa_compiled().split(",")
    runnable = _runnable()
    assert C.cpu_isa() == runnable[0] and set(runnable) <= set(compiled)
    assert list(compiled) == [v for v in VARIANTS if v in compiled]  # widest first


@pytest.mark.parametrize("value", ["avx9", "AVX2", "generic,avx2"])
def test_bad_env_values_refused(value):
    rc, out = _import_c(value)
    assert rc != 0 and "ImportError" in out and f"SNNSPARSE_CPU_ISA='{value}' is not a CPU kernel variant" in out, out
    assert "avx512, avx2 or generic" in out


def test_variant_the_cpu_cannot_run_refused():
    compiled = ss._ext.cpu_isa_compiled().split(",")
    runnable = _runnable()
    missing = [v for v in compiled if v not in runnable]
    for v in missing:
        rc, out = _import_c(v)
        assert rc != 0 and "ImportError" in out and f"this CPU cannot run the {v} kernels" in out, out
    for v in [v for v in VARIANTS if v not in compiled]:  # a SNNSPARSE_MARCH build holds one variant
        rc, out = _import_c(v)
        assert rc != 0 and f"SNNSPARSE_CPU_ISA={v}: this build of snnsparse._C has" in out, out
    if not missing:
        print(f"this CPU runs every compiled variant ({','.join(runnable)}): nothing to refuse here")
    # empty and "auto" mean the widest the CPU runs, as unset does (test_default_selection_is_widest_runnable)
    for v in ("", "auto"):
        rc, out = _import_c(v)
        assert rc == 0 and f"selected {runnable[0]}" in out, out


def test_refused_selection_runs_no_kernel():
    # The ops are registered with torch even when the import is refused; they raise, never compute.
    code = ("import torch\n"
            "try:\n    import snnsparse._C\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('imported')\n"
            "x, w = torch.ones(2, 3), torch.ones(4, 3)\n"
            "for f in (lambda: torch.ops.snnsparse.spike_linear_fwd(x, w, None, None, False, False),\n"
            "          lambda: torch.ops.snnsparse.lif_fwd(x, x[0], 2.0, 1.0, 0.0, True, False, 'sigmoid', 4.0, False),\n"
            "          lambda: torch.ops.snnsparse.cpu_isa()):\n"
            "    try:\n        f()\n    except RuntimeError as e:\n        assert 'not a CPU kernel variant' in str(e), e\n"
            "    else:\n        raise SystemExit('ran')\n"
            "print('refused')\n")
    p = subprocess.run([sys.executable, "-c", code], env=_env("avx9"), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "refused" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("isa", VARIANTS)
def test_variant_against_reference(isa):
    compiled = ss._ext.cpu_isa_compiled().split(",")
    if isa not in compiled:
        pytest.skip(f"{isa} is not compiled into this build (cpu_isa_compiled() = {','.join(compiled)})")
    if isa not in _runnable():
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    seed = _seed()
    print(f"SNNSPARSE_CPU_ISA={isa} seed {seed} (replay: SNNSPARSE_TEST_SEED={seed})")
    p = subprocess.run([sys.executable, os.path.join(HERE, "test_cpu_isa.py"), str(seed)], env=_env(isa),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and f"OK {isa}" in p.stdout, (
        f"SNNSPARSE_CPU_ISA={isa} seed {seed}:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")


def test_default_build_is_portable():
    """The default build is a generic x86-64 (or aarch64) build: no -march, and (x86-64) no
    instruction beyond baseline x86-64 outside the avx512/avx2 kernel namespaces (objdump)."""
    march = ss._ext.cpu_march()
    if march:
        pytest.skip(f"snnsparse._C was built with SNNSPARSE_MARCH={march} (the opt-in); rebuild without it "
                    f"(make install) for the portable build these checks are about")
    compiled = ss._ext.cpu_isa_compiled()
    if platform.machine() not in ("x86_64", "AMD64"):
        assert compiled == "generic"
        return
    assert compiled == "avx512,avx2,generic"
    import shutil
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) not installed: the instruction check of the built library needs it")
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import check_isa_symbols
    finally:
        sys.path.pop(0)
    import snnsparse._C as ext
    assert check_isa_symbols.check([ext.__file__]) == 0


_EMULATED_CHECK = """
import torch, torch.nn.functional as F
import snnsparse as ss
from snnsparse.ops import cpp as C
assert ss.backends.available()["cpp"] is True, ss.backends.available()["cpp"]
g = torch.Generator().manual_seed(0)
x = (torch.rand(20, 130, generator=g) < 0.3).float()
w = torch.randn(17, 130, generator=g)
xc = (torch.rand(2, 8, 12, 12, generator=g) < 0.3).float()
wc = torch.randn(8, 8, 3, 3, generator=g)
for d in (0.9, 0.02):  # dense rows / blocks and compressed rows
    m = torch.rand(w.shape, generator=g) < d
    y = ss.functional.spike_linear(x, w, mask=m, backend="cpp")
    torch.testing.assert_close(y.double(), F.linear(x.double(), (w * m).double()), rtol=1e-5, atol=1e-5)
    m = torch.rand(wc.shape, generator=g) < d
    y = ss.functional.spike_conv2d(xc, wc, None, 1, 1, mask=m, backend="cpp")
    torch.testing.assert_close(y.double(), F.conv2d(xc.double(), (wc * m).double(), None, 1, 1), rtol=1e-5, atol=1e-5)
xl = torch.randn(4, 5000, generator=g)
s, v = ss.functional.lif(xl, backend="cpp")
sr, vr = ss.functional.lif(xl, backend="reference")
assert torch.equal(s, sr) and torch.equal(v, vr)
print("selected", C.cpu_isa())
"""


@pytest.mark.slow
@pytest.mark.parametrize("cpu,expect,refused", [("Nehalem", "generic", "avx2"), ("Haswell-v4", "avx2", "avx512")])
def test_emulated_older_cpu(cpu, expect, refused):
    """The library moved to an older CPU: under qemu-user emulating a CPU without AVX (Nehalem) or
    without AVX-512 (Haswell), the default build loads, selects the widest variant that CPU has,
    computes correctly, and refuses a wider SNNSPARSE_CPU_ISA (an -march=native build of this
    library died there with SIGILL, measured). ~20 s per CPU under emulation."""
    import shutil
    qemu = shutil.which("qemu-x86_64")
    if qemu is None or platform.machine() != "x86_64":
        pytest.skip("qemu-x86_64 (Debian: qemu-user) not installed: no emulated older CPU to run on")
    if ss._ext.cpu_march():
        pytest.skip(f"snnsparse._C was built with SNNSPARSE_MARCH={ss._ext.cpu_march()}: it is not meant to run on "
                    f"older CPUs")
    p = subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", _EMULATED_CHECK], env=_env(None),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0 and f"selected {expect}" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    p = subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", "import snnsparse._C"], env=_env(refused),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode != 0 and f"this CPU cannot run the {refused} kernels" in p.stderr, p.stderr[-3000:]


# ------------------------------------------------------------------------------------------- worker
class _one_thread:
    """The float64 reference runs on 1 thread: on this 2-core box shared with other jobs, torch's
    2-thread float64 conv took 30-150 ms per tiny call (OpenMP waiting for the busy core) against
    0.05-0.2 ms on 1 thread. The kernels under test keep 2 threads (their parallel splits)."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def _close(a, e, what, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(a.double(), e.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _expect_non_binary(fn, what):
    try:
        fn()
    except ValueError as e:
        assert "spikes must be binary" in str(e), f"{what}: {e}"
    else:
        raise AssertionError(f"{what}: a non-binary spike was accepted")


def _check_linear(g, isa):
    O = torch.ops.snnsparse
    from snnsparse.ops import linear as L
    # rows N: 1..4 groups of 16 rows in a 64-row block and several blocks; K: full and partial 64-wide words
    for dt in (torch.float32, torch.float64):
        for N, K, M, rate, dens in ((1, 3, 5, 1.0, 1.0), (20, 64, 17, 0.3, 0.3), (40, 127, 33, 0.05, 0.1),
                                    (64, 300, 16, 0.5, 0.6), (130, 129, 40, 0.2, 0.02), (7, 70, 9, 0.0, 0.5)):
            x = (torch.rand(N, K, generator=g) < rate).to(dt)
            w = torch.randn(M, K, generator=g).to(dt)
            b = torch.randn(M, generator=g).to(dt)
            m = torch.rand(M, K, generator=g) < dens
            with _one_thread():
                expect = F.linear(x.double(), (w * m).double(), b.double())
                count = int((x.double() @ m.double().t()).sum())
            y, n = O.spike_linear_fwd(x, w, b, m, True, False)
            _close(y, expect, f"linear fwd {dt} N{N} K{K}")
            assert int(n) == count
            fmt_auto, _ = O.spike_linear_pack(w, m, 0)
            assert fmt_auto == (1 if m.float().mean() >= 0.5 else 2)  # kLinearDenseMin
            for fmt in (1, 2):
                p = L.pack(w, m, fmt)
                y, n = O.spike_linear_fwd_packed(x, w, b, m, fmt, list(p.tensors), True, False)
                _close(y, expect, f"linear format {fmt} {dt} N{N} K{K}")
                assert int(n) == count, f"linear format {fmt} count"
            # backward, both weight-gradient modes
            go = torch.randn(N, M, generator=g).to(dt)
            tol = 1e-4 if dt == torch.float32 else 1e-9  # products of non-binary values (MKL for grad_in)
            for dwg in (False, True):
                gi, gw = O.spike_linear_bwd(go, x, w, m, True, True, dwg)
                with _one_thread():
                    gie, gwe = go.double() @ (w * m).double(), go.double().t() @ x.double()
                _close(gi, gie, f"linear grad_in {dt}", rtol=tol, atol=tol)
                _close(gw, gwe if dwg else gwe * m, f"linear grad_w {dt} dense={dwg}", rtol=tol, atol=tol)
    # int32 indices (K > 65536): compressed rows of a wide layer
    K = 70000
    x = (torch.rand(5, K, generator=g) < 0.05).float()
    w = torch.randn(3, K, generator=g)
    m = torch.rand(3, K, generator=g) < 0.01
    p = L.pack(w, m, 2)
    assert p.tensors[1].dtype == torch.int32
    y, _ = O.spike_linear_fwd_packed(x, w, None, m, 2, list(p.tensors), False, False)
    _close(y, F.linear(x.double(), (w * m).double()), "linear int32 indices")
    # the binary check of the scan: a value in a full 64-wide word and in the partial tail word
    for dt in (torch.float32, torch.float64):
        for pos in (5, 70, 129):
            for bad in (0.5, 2.0, -1.0, float("nan")):
                x = (torch.rand(3, 130, generator=g) < 0.3).to(dt)
                x[1, pos] = bad
                w = torch.randn(4, 130, generator=g).to(dt)
                _expect_non_binary(lambda: O.spike_linear_fwd(x, w, None, None, False, False), f"linear {dt} {bad}")
                m = torch.rand(4, 130, generator=g) < 0.1
                _expect_non_binary(lambda: O.spike_linear_fwd(x, w, None, m, False, False), f"linear csr {dt} {bad}")
                _expect_non_binary(lambda: O.spike_linear_bwd(torch.ones(3, 4, dtype=dt), x, w, None, False, True,
                                                              False), f"linear bwd {dt} {bad}")


CONV_CASES = [  # cin, cout, groups, (kh, kw), stride, padding, dilation, (h, w)
    (3, 70, 1, (3, 3), (1, 1), (1, 1), (1, 1), (9, 9)),     # two 64-channel blocks
    (4, 6, 2, (1, 3), (2, 1), (0, 1), (1, 1), (5, 6)),      # groups, stride
    (6, 6, 6, (3, 3), (1, 1), (2, 2), (2, 2), (8, 8)),      # depthwise, dilation
    (5, 8, 1, (3, 3), (1, 1), (1, 1), (1, 1), (7, 40)),     # rows of 40 pixels: 3 vectors of 16
    (2, 4, 1, (3, 3), (1, 1), (0, 0), (1, 1), (4, 64)),     # rows of 64 input pixels
    (8, 16, 1, (3, 3), (1, 1), (1, 1), (1, 1), (8, 8)),     # 64-pixel planes: whole-plane scan
    (2, 3, 1, (2, 5), (2, 2), (1, 2), (1, 2), (11, 10)),
    (16, 70, 1, (3, 3), (1, 1), (1, 1), (1, 1), (2, 2)),    # small maps: format 2 output-stationary
    (12, 6, 3, (3, 3), (2, 2), (1, 1), (1, 1), (4, 3)),
]


def _conv_ref(x, w, b, m, st, pd, dl, gr):
    return F.conv2d(x.double(), (w * m).double(), None if b is None else b.double(), st, pd, dl, gr)


def _check_conv(g, isa):
    O = torch.ops.snnsparse
    from snnsparse.ops import conv2d as CV
    for dt in (torch.float32, torch.float64):
        for ci, co, gr, k, st, pd, dl, hw in CONV_CASES:
            for rate, dens in ((0.3, 1.0), (0.1, 0.3), (0.5, 0.02), (1.0, 0.5), (0.0, 1.0)):
                x = (torch.rand(3, ci, *hw, generator=g) < rate).to(dt)
                w = torch.randn(co, ci // gr, *k, generator=g).to(dt)
                b = torch.randn(co, generator=g).to(dt)
                m = torch.rand(w.shape, generator=g) < dens
                with _one_thread():
                    expect = _conv_ref(x, w, b, m, st, pd, dl, gr)
                    count = int(F.conv2d(x.double(), m.double(), None, st, pd, dl, gr).sum())
                geo = (list(st), list(pd), list(dl), gr)
                y, n = O.spike_conv2d_fwd(x, w, b, m, *geo, True, False)
                _close(y, expect, f"conv fwd {dt} {ci}->{co} {hw}")
                assert int(n) == count
                fmts = [1, 2] + ([3] if gr == 1 else [])
                s1 = tuple(st) == (1, 1)
                wo = y.shape[-1]
                outrows = isa != "generic" and dt == torch.float32 and s1 and hw[1] <= 64 and wo <= 64
                if outrows:
                    fmts.append(4)
                auto, _ = O.spike_conv2d_pack(w, m, gr, list(st), hw[1], wo, 0)
                if m.float().mean() < 0.05:  # kConvDenseMin
                    assert auto == (4 if outrows else 2), f"auto format {auto} under {isa}"
                for fmt in fmts:
                    p = CV.pack(w, m, gr, fmt, stride=st, in_width=hw[1], out_width=wo)
                    y, n = O.spike_conv2d_fwd_packed(x, w, b, m, fmt, list(p.tensors), *geo, True, False)
                    _close(y, expect, f"conv format {fmt} {dt} {ci}->{co} {hw}")
                    assert int(n) == count, f"conv format {fmt} count"
                if s1 and not outrows and dt == torch.float32 and hw[1] <= 64 and wo <= 64:
                    # format 4 exists only in the avx512 and avx2 kernels: refused cleanly, never a null call
                    with pytest.raises(RuntimeError, match=f"avx512 or avx2 kernels \\(cpu_isa\\(\\) = {isa}\\)"):
                        O.spike_conv2d_pack(w, m, gr, list(st), hw[1], wo, 4)
                go = torch.randn_like(y)
                # grad_in (oneDNN) and grad_w multiply non-binary values: fp32 rounding, not exact
                tol = 1e-4 if dt == torch.float32 else 1e-9
                for dwg in (False, True):
                    gi, gw = O.spike_conv2d_bwd(go, x, w, m, *geo, True, True, dwg)
                    with _one_thread():
                        xr = x.double().requires_grad_()
                        wr = w.double().requires_grad_()
                        yr = F.conv2d(xr, wr * m.double(), None, st, pd, dl, gr)
                        gir, gwr = torch.autograd.grad(yr, (xr, wr), go.double())
                        if dwg:
                            (gwr,) = torch.autograd.grad(F.conv2d(x.double(), wr, None, st, pd, dl, gr), (wr,),
                                                         go.double())
                    _close(gi, gir, f"conv grad_in {dt}", rtol=tol, atol=tol)
                    _close(gw, gwr, f"conv grad_w {dt} dense={dwg}", rtol=tol, atol=tol)
    # int32 indices: compressed rows per input channel (kh*kw*Cout/g > 32768) and, on avx512 / avx2, per
    # output channel (Cin/g*kh*kw > 32768)
    for fmt, xshape, wshape in ((2, (2, 1, 6, 6), (3700, 1, 3, 3)), (4, (2, 3700, 5, 5), (2, 3700, 3, 3))):
        if fmt == 4 and isa == "generic":
            continue
        x = (torch.rand(xshape, generator=g) < 0.2).float()
        w = torch.randn(wshape, generator=g)
        m = torch.rand(w.shape, generator=g) < 0.01
        p = CV.pack(w, m, 1, fmt, stride=(1, 1), in_width=xshape[-1], out_width=xshape[-1])
        assert p.tensors[1].dtype == torch.int32
        y, _ = O.spike_conv2d_fwd_packed(x, w, None, m, fmt, list(p.tensors), [1, 1], [1, 1], [1, 1], 1, False, False)
        with _one_thread():
            expect = _conv_ref(x, w, None, m, 1, 1, 1, 1)
        _close(y, expect, f"conv format {fmt} int32 indices")
    # binary check in every format, including input channels without any kept synapse (format 2)
    for dt in (torch.float32, torch.float64):
        for bad in (0.5, -1.0, float("nan")):
            x = (torch.rand(2, 4, 9, 40, generator=g) < 0.3).to(dt)
            x[1, 2, 4, 37] = bad
            w = torch.randn(6, 4, 3, 3, generator=g).to(dt)
            m = torch.zeros(w.shape, dtype=torch.bool)
            m[:, 0] = True  # channel 2 has no kept synapse
            for fmt in (1, 2, 3) + ((4,) if isa != "generic" and dt == torch.float32 else ()):
                p = CV.pack(w, m, 1, fmt, stride=(1, 1), in_width=40, out_width=40)
                _expect_non_binary(lambda: O.spike_conv2d_fwd_packed(x, w, None, m, fmt, list(p.tensors), [1, 1],
                                                                     [1, 1], [1, 1], 1, False, False),
                                   f"conv format {fmt} {dt} {bad}")
            _expect_non_binary(lambda: O.spike_conv2d_bwd(torch.ones(2, 6, 9, 40, dtype=dt), x, w, m, [1, 1], [1, 1],
                                                          [1, 1], 1, False, True, False), f"conv bwd {dt} {bad}")


BYTE_DTYPES = (torch.bool, torch.uint8)


def _same_on_bytes(run, x, what):
    """run(spikes) on bool and uint8 copies of float spikes x gives bit-identical results to run(x): the
    byte kernels are the float ones reading one byte per spike (same events, same summation order)."""
    expect = run(x)
    for bdt in BYTE_DTYPES:
        got = run(x.to(bdt))
        for a, e in zip(got, expect):
            assert a.dtype == e.dtype and torch.equal(a, e), f"{what}: {bdt} spikes differ from float spikes"


def _check_byte_spikes(g, isa):
    """bool / uint8 spikes read by every kernel of this variant: all formats, partial 64-wide words
    (K, H*W, W not multiples of 64 or 32), forward, counts and weight gradient; non-binary bytes refused."""
    O = torch.ops.snnsparse
    from snnsparse.ops import conv2d as CV
    from snnsparse.ops import linear as L
    for dt in (torch.float32, torch.float64):
        for N, K, M, rate, dens in ((1, 3, 5, 1.0, 1.0), (70, 129, 33, 0.2, 0.3), (9, 64, 7, 0.5, 0.02),
                                    (5, 96, 4, 0.0, 0.5)):
            x = (torch.rand(N, K, generator=g) < rate).to(dt)
            w, b = torch.randn(M, K, generator=g).to(dt), torch.randn(M, generator=g).to(dt)
            m = torch.rand(M, K, generator=g) < dens
            _same_on_bytes(lambda s: O.spike_linear_fwd(s, w, b, m, True, False), x, f"linear {dt} K{K}")
            for fmt in (1, 2):
                p = L.pack(w, m, fmt)
                _same_on_bytes(lambda s: O.spike_linear_fwd_packed(s, w, b, m, fmt, list(p.tensors), True, False), x,
                               f"linear format {fmt} {dt} K{K}")
            go = torch.randn(N, M, generator=g).to(dt)
            for dwg in (False, True):
                _same_on_bytes(lambda s: O.spike_linear_bwd(go, s, w, m, False, True, dwg)[1:], x,
                               f"linear grad_w {dt} dwg={dwg}")
        for ci, co, gr, k, st, pd, dl, hw in CONV_CASES:
            x = (torch.rand(3, ci, *hw, generator=g) < 0.3).to(dt)
            w, b = torch.randn(co, ci // gr, *k, generator=g).to(dt), torch.randn(co, generator=g).to(dt)
            m = torch.rand(w.shape, generator=g) < 0.3
            m[:, : max(1, ci // gr // 2)] = False  # input channels with no kept synapse (checked, not scanned)
            geo = (list(st), list(pd), list(dl), gr)
            wo = O.spike_conv2d_fwd(x, w, b, m, *geo, False, False)[0].shape[-1]
            fmts = [1, 2] + ([3] if gr == 1 else [])
            if isa != "generic" and dt == torch.float32 and tuple(st) == (1, 1) and hw[1] <= 64 and wo <= 64:
                fmts.append(4)
            _same_on_bytes(lambda s: O.spike_conv2d_fwd(s, w, b, m, *geo, True, False), x, f"conv {dt} {hw}")
            for fmt in fmts:
                p = CV.pack(w, m, gr, fmt, stride=st, in_width=hw[1], out_width=wo)
                _same_on_bytes(lambda s: O.spike_conv2d_fwd_packed(s, w, b, m, fmt, list(p.tensors), *geo, True,
                                                                   False), x, f"conv format {fmt} {dt} {hw}")
            go = torch.randn(O.spike_conv2d_fwd(x, w, b, m, *geo, False, False)[0].shape, generator=g).to(dt)
            _same_on_bytes(lambda s: O.spike_conv2d_bwd(go, s, w, m, *geo, False, True, False)[1:], x,
                           f"conv grad_w {dt} {hw}")
    # a byte other than 0 and 1, in a full 64-spike word and in a partial tail word; a bool tensor
    # viewed from such bytes is refused the same way
    for pos in (5, 70, 129):
        for bad in (2, 255):
            x = (torch.rand(3, 130, generator=g) < 0.3).to(torch.uint8)
            x[1, pos] = bad
            w = torch.randn(4, 130, generator=g)
            m = torch.rand(4, 130, generator=g) < 0.1
            for xs in (x, x.view(torch.bool)):
                _expect_non_binary(lambda: O.spike_linear_fwd(xs, w, None, None, False, False), f"linear u8 {bad}")
                _expect_non_binary(lambda: O.spike_linear_fwd(xs, w, None, m, False, False), f"linear u8 csr {bad}")
    x = (torch.rand(2, 4, 9, 40, generator=g) < 0.3).to(torch.uint8)
    x[1, 2, 4, 37] = 7
    w = torch.randn(6, 4, 3, 3, generator=g)
    m = torch.zeros(w.shape, dtype=torch.bool)
    m[:, 0] = True  # channel 2 has no kept synapse
    for fmt in (1, 2, 3) + ((4,) if isa != "generic" else ()):
        p = CV.pack(w, m, 1, fmt, stride=(1, 1), in_width=40, out_width=40)
        _expect_non_binary(lambda: O.spike_conv2d_fwd_packed(x, w, None, m, fmt, list(p.tensors), [1, 1], [1, 1],
                                                             [1, 1], 1, False, False), f"conv u8 format {fmt}")
    # bytes have no gradient: asking the backward for one is refused, not answered with garbage
    with pytest.raises(RuntimeError, match="bool / uint8 spikes have no gradient"):
        O.spike_linear_bwd(torch.ones(3, 4), (torch.rand(3, 130) < 0.5).to(torch.uint8), torch.randn(4, 130), None,
                           True, False, False)


def _check_lif(g):
    from snnsparse.ops import reference as R
    from snnsparse.ops import surrogate as SG
    O = torch.ops.snnsparse
    # 8192 fp32 neurons: whole 64-byte-aligned blocks (streaming stores); 4100: a ragged last block
    for dt, N in ((torch.float32, 8192), (torch.float32, 4100), (torch.float64, 1000)):
        for decay in (True, False):
            for v_reset in (0.0, None, -0.2):
                for detach in (False, True):
                    sg = SG.NAMES[(int(decay) + 2 * int(detach) + (v_reset is None)) % len(SG.NAMES)]
                    alpha = SG.DEFAULT_ALPHA[sg]
                    x = (torch.randn(4, N, generator=g) * 1.2 + 0.6).to(dt)
                    v0 = (torch.randn(N, generator=g) * 0.5).to(dt)
                    s, v, h = O.lif_fwd(x, v0, 1.7, 0.9, v_reset, decay, detach, sg, alpha, True)
                    with _one_thread():
                        sr, vr, hr = R.lif(x, v0, 1.7, 0.9, v_reset, decay, detach, sg, alpha, return_h=True)
                    assert torch.equal(s, sr) and torch.equal(v, vr) and torch.equal(h, hr), f"lif fwd {dt} {sg}"
                    s2, v2, h2 = O.lif_fwd(x, v0, 1.7, 0.9, v_reset, decay, detach, sg, alpha, False)
                    assert torch.equal(s2, sr) and torch.equal(v2, vr) and h2.numel() == 0
                    gs, gv, gh = torch.randn_like(s), torch.randn_like(v), torch.randn_like(h)
                    gx, gv0, _ = O.lif_bwd(gs, gv, gh, h, 1.7, 0.9, v_reset, decay, detach, sg, alpha)
                    with _one_thread():
                        xr, v0r = x.double().requires_grad_(), v0.double().requires_grad_()
                        sr, vr, hr = R.lif(xr, v0r, 1.7, 0.9, v_reset, decay, detach, sg, alpha, return_h=True)
                        loss = (sr * gs.double()).sum() + (vr * gv.double()).sum() + (hr * gh.double()).sum()
                        gxr, gv0r = torch.autograd.grad(loss, (xr, v0r))
                    tol = 1e-4 if dt == torch.float32 else 1e-9
                    _close(gx, gxr, f"lif grad_x {dt} {sg}", rtol=tol, atol=tol)
                    _close(gv0, gv0r, f"lif grad_v0 {dt} {sg}", rtol=tol, atol=tol)
    # the IF and ParametricLIF charges (csrc/cpu/lif_kernels.h charge_h), k's gradient included
    for charge, dt, N, decay, v_reset in itertools.product(("if", "plif"), (torch.float32, torch.float64), (4100,),
                                                           (True, False), (0.0, None)):
        if charge == "if" and not decay:
            continue
        x = (torch.randn(4, N, generator=g) * 1.2 + 0.5).to(dt)
        v0 = (torch.randn(N, generator=g) * 0.3).to(dt)
        k = torch.sigmoid(torch.randn((), generator=g)).to(dt) if charge == "plif" else None
        args = (0.0, 0.9, v_reset, decay, False, "atan", 2.0)
        s, v, h = O.lif_fwd(x, v0, *args, True, charge, k)
        with _one_thread():
            sr, vr, hr = R.lif(x, v0, *args, return_h=True, charge=charge, k=k)
        assert torch.equal(s, sr) and torch.equal(v, vr) and torch.equal(h, hr), f"{charge} fwd {dt} {decay} {v_reset}"
        gs, gv = torch.randn_like(s), torch.randn_like(v)
        gx, gv0, gk = O.lif_bwd(gs, gv, None, h, *args, charge, k, x if k is not None else None,
                                v0 if k is not None else None)
        with _one_thread():
            xr, v0r = x.double().requires_grad_(), v0.double().requires_grad_()
            kr = None if k is None else k.double().requires_grad_()
            sr, vr, _ = R.lif(xr, v0r, *args, charge=charge, k=kr)
            want = torch.autograd.grad((sr * gs.double()).sum() + (vr * gv.double()).sum(),
                                       (xr, v0r) + ((kr,) if kr is not None else ()))
        tol = 1e-4 if dt == torch.float32 else 1e-9
        _close(gx, want[0], f"{charge} grad_x {dt}", rtol=tol, atol=tol)
        _close(gv0, want[1], f"{charge} grad_v0 {dt}", rtol=tol, atol=tol)
        if k is not None:
            _close(gk, want[2], f"{charge} grad_k {dt}", rtol=tol, atol=tol * max(1.0, float(want[2].abs())) * 100)


def _check_matmul(g):
    """spike_matmul: each variant has its own binary x binary algorithm (avx512: masked byte counters; avx2,
    generic: AND + POPCNT) and dense x spikes path; float, double and byte spikes, tails of 64-bit words."""
    O = torch.ops.snnsparse
    for dt, mode, (bt, m, k, n), rate in itertools.product((torch.float32, torch.float64), ("both", "a", "b"),
                                                          ((2, 3, 70, 5), (1, 64, 64, 64), (3, 9, 300, 130)),
                                                          (0.0, 0.3, 1.0)):
        sp = lambda *s: (torch.rand(s, generator=g) < rate).to(dt)  # noqa: E731
        a = sp(bt, m, k) if mode != "b" else torch.randn(bt, m, k, generator=g).to(dt)
        b = sp(bt, k, n) if mode != "a" else torch.randn(bt, k, n, generator=g).to(dt)
        ref = a.double() @ b.double()
        for aa, bb in ((a, b), (a.bool() if mode != "b" else a, b.bool() if mode != "a" else b)):
            y, cnt = O.spike_matmul_fwd(aa, bb, mode, True)
            # fp32 sums of up to 300 values: rounding grows with the sums' magnitude
            _close(y, ref, f"matmul {mode} {dt} {(bt, m, k, n)} rate {rate} {aa.dtype}",
                   atol=1e-5 * max(1.0, ref.abs().max().item()))
            want = {"both": ref.sum(), "a": (a != 0).sum() * n, "b": (b != 0).sum() * m}[mode]
            assert int(cnt) == int(want), (mode, dt, int(cnt), int(want))
        bad = sp(bt, m, k) if mode != "b" else sp(bt, k, n)
        bad.view(-1)[-1] = 3.0
        args = {"both": (bad, sp(bt, k, n)), "a": (bad, b), "b": (a, bad)}[mode]
        _expect_non_binary(lambda: O.spike_matmul_fwd(*args, mode, False), f"matmul {mode} {dt}")
        _expect_non_binary(lambda: O.spike_matmul_fwd(*(t.to(torch.uint8) if t is bad else t for t in args),
                                                      mode, False), f"matmul {mode} uint8")


def _worker(seed):
    from snnsparse.ops import cpp as C
    isa = os.environ.get("SNNSPARSE_CPU_ISA", "")
    assert ss.backends.available()["cpp"] is True, ss.backends.available()["cpp"]
    assert C.cpu_isa() == isa, (C.cpu_isa(), isa)
    torch.set_num_threads(2)
    print(f"worker SNNSPARSE_CPU_ISA={isa} seed {seed}", flush=True)
    g = torch.Generator().manual_seed(seed)
    _check_linear(g, isa)
    _check_conv(g, isa)
    _check_byte_spikes(g, isa)
    _check_lif(g)
    _check_matmul(g)
    print(f"OK {isa}")


if __name__ == "__main__":
    _worker(int(sys.argv[1]))


def test_unknown_or_zero_width_never_packs_output_channel_rows():
    # A pack without geometry (widths 0) or an empty image must not pick format 4 (its rows are 64-bit
    # words; a width of 0 divided by zero in the kernel), and negative widths are refused.
    import snnsparse as ss  # noqa: F401  (loads the extension)
    w = torch.randn(64, 3, 1, 1)
    m = torch.zeros(64, 3, 1, 1, dtype=torch.bool)
    m[0, 0] = True
    fmt, _ = torch.ops.snnsparse.spike_conv2d_pack(w, m, 1, [1, 1], 0, 0, 0)
    assert fmt != 4
    with pytest.raises(RuntimeError, match="in_width and out_width must be >= 0"):
        torch.ops.snnsparse.spike_conv2d_pack(w, m, 1, [1, 1], -5, 3, 0)
    out, _ = torch.ops.snnsparse.spike_conv2d_fwd(torch.zeros(1, 3, 2, 0), w, None, m, [1, 1], [1, 1], [1, 1], 1,
                                                  False, False)
    assert out.shape == (1, 64, 4, 2) and not out.any()
