"""Under DistributedDataParallel (2 CPU processes, gloo, loopback) every rank ends with identical
masks after several pruning steps, for every pruner. Each rank sees different data, so anything a
pruner measures locally (criticality) must be synchronised for the masks to agree."""
import os
import socket
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

METHODS = ("gradr", "lth", "criticality", "mpslt", "channel")
TIMEOUT_S = 120


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=__import__("datetime").timedelta(seconds=60))
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP

        from snnsparse import pruning as P
        from snnsparse.recipes import digits_cnn

        results = {}
        for method in METHODS:
            torch.manual_seed(0)                       # same init on every rank (DDP broadcasts anyway)
            model = digits_cnn(T=2, width=4, hidden=16)
            pruner = gr = None
            if method == "mpslt":
                pruner = P.MultiPrizeTicket(model, sparsity=0.5)
            ddp = DDP(model)
            if method == "gradr":
                gr = P.GradRewiring.from_model(ddp, lr=1e-2, alpha=0.2)
                managed = {id(p) for p in gr.param_groups[0]["params"]}
                opts = [gr, torch.optim.Adam([p for p in ddp.parameters() if id(p) not in managed], lr=1e-2)]
            elif method == "mpslt":
                opts = [torch.optim.Adam(pruner.parameters(), lr=0.05)]
            else:
                opts = [torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)]
            if method == "lth":
                pruner = P.LotteryTicket(ddp)
            elif method == "criticality":
                pruner = P.CriticalityPruner(ddp, final_sparsity=0.8, regrow_ratio=0.5, prune_every=2, prune_steps=3)
            elif method == "channel":
                pruner = P.CriticalityChannelPruner(ddp, percent=0.4, growth_rate=0.5)
            g = torch.Generator().manual_seed(1000 + rank)       # different data on every rank
            for step in range(6):
                x = torch.rand(8, 1, 8, 8, generator=g)
                y = torch.randint(0, 10, (8,), generator=g)
                for o in opts:
                    o.zero_grad()
                F.cross_entropy(ddp(x), y).backward()
                if method == "channel":
                    P.slimming_penalty(ddp, 1e-3)
                for o in opts:
                    o.step()
                if method == "lth":
                    pruner.zero_pruned()
                    if step % 2 == 1:
                        pruner.prune_round(rewind=False)
                elif method == "criticality":
                    pruner.step()
            if method == "gradr":
                masks = gr.named_masks()
            elif method == "mpslt":
                masks = pruner.named_masks()
            elif method == "channel":
                pruner.apply()
                masks = dict(pruner.channel_masks)
            else:
                masks = dict(pruner.masks)
            results[method] = {k: v.cpu() for k, v in masks.items()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns two torch.distributed ranks (heavy); make test runs every slow test too
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_ddp_two_cpu_ranks_agree_on_masks():
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, join=False, start_method="spawn")
        deadline = time.time() + TIMEOUT_S
        while not ctx.join(timeout=1):
            if time.time() > deadline:
                for p in ctx.processes:
                    p.terminate()
                pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
        r0 = torch.load(os.path.join(out, "rank0.pt"))
        r1 = torch.load(os.path.join(out, "rank1.pt"))
    assert set(r0) == set(METHODS)
    for method in METHODS:
        assert set(r0[method]) == set(r1[method]) and r0[method], method
        for name in r0[method]:
            assert torch.equal(r0[method][name], r1[method][name]), (method, name)
        kept = sum(int(m.sum()) for m in r0[method].values())
        total = sum(m.numel() for m in r0[method].values())
        assert 0 < kept < total, f"{method}: masks should be partly pruned ({kept}/{total})"
