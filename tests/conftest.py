"""Shared test helpers: random spikes/masks from fresh seeds, the DESIGN.md grid, float64 checks."""
import os
import tempfile

# A compile cache of this test run only: inductor's on-disk cache (default /tmp/torchinductor_<user>) is
# keyed on the traced graph, not on the schema of the custom ops in it, so code compiled by another
# checkout or an older build of snnsparse._C could be replayed against a changed op (seen: a cached
# graph calling lif_fwd with arguments another build's schema does not have). Set before torch loads.
_OWN_INDUCTOR_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _OWN_INDUCTOR_CACHE = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="snnsparse-test-inductor-")


def pytest_sessionfinish(session, exitstatus):
    if _OWN_INDUCTOR_CACHE:
        import shutil
        shutil.rmtree(_OWN_INDUCTOR_CACHE, ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

# DESIGN.md section 7 grid.
RATES = (0.0, 0.05, 0.5, 1.0)
DENSITIES = (1.0, 0.5, 0.1, 0.0)
ODD_SIZES = (1, 3, 127)
TIMESTEPS = (1, 4)


def _seed():
    # Fresh random inputs every run; SNNSPARSE_TEST_SEED=<seed> replays a failure.
    env = os.environ.get("SNNSPARSE_TEST_SEED")
    return int(env) if env else int.from_bytes(os.urandom(4), "little")


@pytest.fixture
def rng():
    seed = _seed()
    # shown by pytest when the test fails; replay with SNNSPARSE_TEST_SEED=<seed>
    print(f"rng seed {seed} (replay: SNNSPARSE_TEST_SEED={seed})")
    return torch.Generator().manual_seed(seed)


def spikes(shape, rate, gen, dtype=torch.float32):
    """Binary tensor with P(1) = rate."""
    return (torch.rand(shape, generator=gen) < rate).to(dtype)


def mask(shape, density, gen):
    """Bool mask with P(True) = density (exactly all/none at 1 and 0)."""
    if density >= 1:
        return torch.ones(shape, dtype=torch.bool)
    return torch.rand(shape, generator=gen) < density


def randn(shape, gen, dtype=torch.float32):
    return torch.randn(shape, generator=gen).to(dtype)


def assert_close64(actual, expected, *, rtol=1e-5, atol=1e-5, msg=""):
    """Compare to a float64 reference; binary x fp32 accumulation is exact up to summation order."""
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=msg or None)


def assert_twin_grads(m, twin, y, yt, x1, x2, msk, gen):
    """A masked Spike* layer `m` against its dense torch twin (weight already multiplied by msk), float64:
    the outputs y / yt, then, after one random upstream gradient, the input, weight (the twin's masked)
    and bias gradients."""
    assert_close64(y, yt, rtol=1e-12, atol=1e-12)
    g = randn(y.shape, gen, torch.float64)
    y.backward(g)
    yt.backward(g)
    assert_close64(x1.grad, x2.grad, rtol=1e-12, atol=1e-12)
    assert_close64(m.weight.grad, twin.weight.grad * msk, rtol=1e-12, atol=1e-12)
    assert (m.bias is None) == (twin.bias is None)
    if twin.bias is not None:
        assert_close64(m.bias.grad, twin.bias.grad, rtol=1e-12, atol=1e-12)
