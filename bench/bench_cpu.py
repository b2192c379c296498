"""pytest-benchmark microbenchmarks of the cpp backend against torch dense, same process.

    .venv/bin/python -m pytest bench/bench_cpu.py --benchmark-only -q        # 2 threads
    .venv/bin/python -m pytest bench/bench_cpu.py --benchmark-only --benchmark-group-by=param:case

Each case has a `dense` and a `cpp` benchmark in one group, so the table shows both medians;
bench/sweep.py --targets prints the ratios of medians (the numbers of bench/RESULTS.md).
Shapes are the issue-3 targets. Set SNNSPARSE_BENCH_THREADS to change the thread count (default 2).
"""
import os

import pytest
import torch
import torch.nn.functional as F

import snnsparse as ss

from snnsparse import benchmark as sweep  # noqa: E402

pytestmark = pytest.mark.skipif(ss.backends.available()["cpp"] is not True, reason="cpp backend unavailable")
THREADS = int(os.environ.get("SNNSPARSE_BENCH_THREADS", "2"))
CPU = torch.device("cpu")

CONV_CASES = {
    "conv256@16_r.1_d1": (256, 16, 0.1, 1.0),
    "conv256@16_r.1_d.1": (256, 16, 0.1, 0.1),
    "conv128@32_r.1_d.01": (128, 32, 0.1, 0.01),
    "conv128@32_r.05_d.01": (128, 32, 0.05, 0.01),
}


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(old)


def _run(benchmark, fn, rounds=5):
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("impl", ["dense", "cpp"])
def test_conv_forward(benchmark, case, impl):
    c, hw, rate, dens = CONV_CASES[case]
    benchmark.group = case
    x, w, m = sweep._inputs("conv", dict(T=4, B=16, C=c, HW=hw), rate, dens, CPU)
    dense, ours = sweep._calls("conv", x, w, m, "cpp")
    _run(benchmark, dense if impl == "dense" else ours)


@pytest.mark.parametrize("impl", ["dense", "csr", "cpp"])
def test_linear_forward(benchmark, impl):
    benchmark.group = "linear4096_N64_r.1_d.1"
    x, w, m = sweep._inputs("linear", dict(N=64, K=4096, M=4096), 0.1, 0.1, CPU)
    dense, ours = sweep._calls("linear", x, w, m, "cpp")
    if impl == "csr":
        wc, xt = (w * m).to_sparse_csr(), x.t().contiguous()
        _run(benchmark, lambda: torch.sparse.mm(wc, xt))
    else:
        _run(benchmark, dense if impl == "dense" else ours, rounds=9)


@pytest.mark.parametrize("impl", ["spikingjelly", "cpp"])
def test_lif_forward_backward(benchmark, impl):
    benchmark.group = "lif_fwd_bwd_[8,64,16384]"
    x = (torch.randn(8, 64, 16384) * 0.8 + 0.6).requires_grad_()
    g = torch.randn_like(x)
    if impl == "spikingjelly":
        pytest.importorskip("spikingjelly")
        node = sweep._sj_lif()

        def step():
            node.reset()
            x.grad = None
            node(x).backward(g)
    else:
        def step():
            x.grad = None
            ss.functional.lif(x, backend="cpp")[0].backward(g)
    _run(benchmark, step, rounds=3)


@pytest.mark.parametrize("impl", ["dense", "cpp"])
def test_conv_training_step(benchmark, impl):
    benchmark.group = "train_conv256@16_r.1_d.1"
    x, w, m = sweep._inputs("conv", dict(T=4, B=16, C=256, HW=16), 0.1, 0.1, CPU)
    w = w.requires_grad_()
    x = x.requires_grad_()
    go = torch.randn(64, 256, 16, 16) * 0.01
    if impl == "dense":
        step = lambda: F.conv2d(x, w * m, None, 1, 1).backward(go)  # noqa: E731
    else:
        step = lambda: ss.functional.spike_conv2d(x, w, None, 1, 1, mask=m, backend="cpp").backward(go)  # noqa: E731
    _run(benchmark, step, rounds=3)
