"""Saving model + optimizer + pruner state mid-training and loading it into fresh objects resumes
bit-identically, for every pruner."""
import io

import pytest
import torch
import torch.nn.functional as F

from snnsparse import pruning as P
from snnsparse.recipes import digits_cnn


def data(i):
    g = torch.Generator().manual_seed(100 + i)
    return torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def setup(method):
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=4, hidden=16)
    if method == "gradr":
        gr = P.GradRewiring.from_model(model, lr=1e-2, alpha=0.2)
        managed = {id(p) for p in gr.param_groups[0]["params"]}
        adam = torch.optim.Adam([p for p in model.parameters() if id(p) not in managed], lr=1e-2)
        return model, [gr, adam], None
    if method == "lth":
        lt = P.LotteryTicket(model)
        return model, [torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)], lt
    if method == "criticality":
        cp = P.CriticalityPruner(model, final_sparsity=0.8, regrow_ratio=0.3, prune_every=2, prune_steps=4)
        return model, [torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)], cp
    mpt = P.MultiPrizeTicket(model, sparsity=0.5)
    return model, [torch.optim.Adam(mpt.parameters(), lr=0.05)], mpt


def train(method, model, opts, pruner, steps, start):
    for i in range(start, start + steps):
        x, y = data(i)
        for o in opts:
            o.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for o in opts:
            o.step()
        if method == "criticality":
            pruner.step()
        if method == "lth":
            pruner.zero_pruned()
            if i == 1:
                pruner.save_rewind_point()
            if i % 2 == 1:
                pruner.prune_round()


def masks_of(method, model, opts, pruner):
    if method == "gradr":
        return opts[0].named_masks()
    if method == "mpslt":
        return pruner.named_masks()
    return dict(pruner.masks)


@pytest.mark.parametrize("method", ["gradr", "lth", "criticality", "mpslt"])
def test_save_load_mid_training_resumes_identically(method):
    model, opts, pruner = setup(method)
    train(method, model, opts, pruner, 3, 0)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opts": [o.state_dict() for o in opts],
                "pruner": pruner.state_dict() if method in ("lth", "criticality") else None}, buf)
    train(method, model, opts, pruner, 4, 3)
    expect_state = {k: v.clone() for k, v in model.state_dict().items()}
    expect_masks = masks_of(method, model, opts, pruner)

    torch.manual_seed(123)                    # a different init: everything must come from the checkpoint
    model2, opts2, pruner2 = setup(method)
    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    model2.load_state_dict(ck["model"])
    for o, s in zip(opts2, ck["opts"]):
        o.load_state_dict(s)
    if ck["pruner"] is not None:
        pruner2.load_state_dict(ck["pruner"])
    train(method, model2, opts2, pruner2, 4, 3)
    got_masks = masks_of(method, model2, opts2, pruner2)
    assert set(got_masks) == set(expect_masks)
    for n in expect_masks:
        assert torch.equal(got_masks[n], expect_masks[n]), n
    for k, v in model2.state_dict().items():
        assert torch.equal(v, expect_state[k]), k
    if method == "gradr":
        assert 0 < opts2[0].connectivity() < 1
        st = opts2[0].state[opts2[0].param_groups[0]["params"][0]]
        assert {"sign", "strength", "exp_avg", "exp_avg_sq"} <= set(st)
