"""Pruners against hand-built expectations (PRUNERS.md rules), masks through apply/save/load, and
bad arguments."""
import io
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import snnsparse as ss
from snnsparse import pruning as P
from snnsparse.pruning.criticality import prune_and_regrow


def small_snn(T=2, seed=0):
    torch.manual_seed(seed)
    from snnsparse.recipes import digits_cnn
    return digits_cnn(T=T, width=4, hidden=16)


def batch(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


# ------------------------------------------------------------------------------------------ masks
def test_apply_masks_spike_and_plain_modules_and_state_dict_roundtrip():
    model = nn.Sequential(ss.nn.SpikeLinear(4, 3), nn.Linear(3, 2))
    m0 = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    m1 = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    P.apply_masks(model, {"0.weight": m0, "1.weight": m1})
    assert torch.equal(model[0].weight_mask, m0)
    assert (model[0].weight.detach()[~m0] == 0).all()
    assert torch.equal(model[1].weight_mask.bool(), m1)           # torch.nn.utils.prune
    assert (model[1].weight.detach()[~m1] == 0).all()
    got = P.get_masks(model)
    assert torch.equal(got["0.weight"], m0) and torch.equal(got["1.weight"], m1)
    # Applying again replaces the plain module's prune mask instead of stacking a second one.
    P.apply_masks(model, {"1.weight": ~m1}, zero_weights=False)
    assert torch.equal(model[1].weight_mask.bool(), ~m1)
    # Masks survive save/load of the model's state_dict.
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = nn.Sequential(ss.nn.SpikeLinear(4, 3), nn.Linear(3, 2))
    P.apply_masks(other, {"1.weight": torch.ones(2, 3, dtype=torch.bool)})   # same structure (prune'd)
    other.load_state_dict(torch.load(buf))
    assert torch.equal(other[0].weight_mask, m0)
    assert torch.equal(other[1].weight_mask.bool(), ~m1)
    x = (torch.rand(5, 4) < 0.5).float()
    assert torch.equal(other(x), model(x))


def test_apply_masks_bad_arguments():
    model = nn.Sequential(ss.nn.SpikeLinear(4, 3))
    with pytest.raises(ValueError, match="unknown parameter name"):
        P.apply_masks(model, {"1.weight": torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="unknown parameter name"):
        P.apply_masks(model, {"0.bias": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        P.apply_masks(model, {"0.weight": torch.ones(4, 3, dtype=torch.bool)})
    with pytest.raises(TypeError, match="bool"):
        P.apply_masks(model, {"0.weight": torch.ones(3, 4)})
    with pytest.raises(ValueError, match="unknown parameter names in exclude"):
        P.prunable_weights(model, exclude=["nope.weight"])


def test_masks_from_weights_after_grad_r():
    model = nn.Sequential(ss.nn.SpikeLinear(4, 3, bias=False), nn.BatchNorm1d(3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1.0, 0.0, -2.0], [3.0, 0.0, 0.0, 0.0], [0.0] * 4]))
    masks = P.masks_from_weights(model)
    assert set(masks) == {"0.weight"}
    assert torch.equal(masks["0.weight"], model[0].weight.detach() != 0)
    assert P.density(masks) == 3 / 12 and P.sparsity(masks) == 9 / 12


def test_masks_accept_ddp_style_prefix():
    model = nn.Sequential(ss.nn.SpikeLinear(4, 3))
    m = torch.zeros(3, 4, dtype=torch.bool)
    P.apply_masks(model, {"module.0.weight": m})
    assert not model[0].weight_mask.any()


# ------------------------------------------------------------------------------------------ Grad R
def test_gradr_one_step_matches_formula_by_hand():
    p = nn.Parameter(torch.tensor([0.5, -0.2, 0.0, 0.1], dtype=torch.float64))
    opt = P.GradRewiring([p], lr=0.01, alpha=0.5, target_sparsity=0.95, eps=0.0)
    p.grad = torch.tensor([0.1, -0.3, 0.2, 0.4], dtype=torch.float64)
    opt.step()
    # t=1: m = 0.1 g, v = 0.001 g^2, lr_hat = 0.01 / 0.1 = 0.1, den = |g|  =>  Adam step = 0.01 sign(g)
    # theta = |p| - 0.01 * s * sign(g) - alpha * lr_hat * sign(theta - mu), mu = ln(0.1)/0.5 < theta
    # s = [1, -1, 0, 1], s*sign(g) = [1, 1, 0, 1], prior step = 0.5 * 0.1 = 0.05
    theta = torch.tensor([0.44, 0.14, -0.05, 0.04], dtype=torch.float64)
    st = opt.state[p]
    torch.testing.assert_close(st["strength"], theta, rtol=0, atol=1e-12)
    torch.testing.assert_close(p.detach(), torch.tensor([0.44, -0.14, 0.0, 0.04], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert torch.equal(st["sign"], torch.tensor([1.0, -1.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.equal(opt.masks()[p], torch.tensor([True, True, False, True]))


def test_gradr_prior_uses_pre_step_theta_and_is_not_preconditioned():
    alpha, target, lr = 100.0, 0.95, 0.01
    mu = math.log(2 * (1 - target)) / alpha          # -0.0230
    p = nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    opt = P.GradRewiring([p], lr=lr, alpha=alpha, target_sparsity=target, eps=0.0)
    p.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    opt.step()
    st = opt.state[p]
    # Put theta just above mu: the gradient step (+0.01 sign(g) * lr_hat-scaled) crosses mu for entry 0,
    # but the prior must use the pre-step sign (+1) for both entries.
    st["strength"].copy_(torch.tensor([mu + 1e-3, mu + 1e-3], dtype=torch.float64))
    m, v = st["exp_avg"].clone(), st["exp_avg_sq"].clone()
    g = torch.tensor([2.0, -2.0], dtype=torch.float64)
    p.grad = g.clone()
    opt.step()
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    lr_hat = lr / (1 - 0.9 ** 2)
    den = v.sqrt() / math.sqrt(1 - 0.999 ** 2)
    expect = (mu + 1e-3) - lr_hat * m / den - alpha * lr_hat * 1.0
    torch.testing.assert_close(st["strength"], expect, rtol=0, atol=1e-12)
    assert (p.detach() == 0).all()


def test_gradr_pruned_synapse_regrows_under_consistent_gradient():
    w = nn.Parameter(torch.tensor([0.05]))
    opt = P.GradRewiring([w], lr=0.01, alpha=0.0, target_sparsity=0.95)
    history = []
    for g in [1.0] * 10 + [-1.0] * 30:
        w.grad = torch.tensor([g])
        opt.step()
        history.append((float(opt.state[w]["strength"]), float(w.detach()), bool(opt.masks()[w])))
    pruned = [i for i, (_, _, keep) in enumerate(history) if not keep]
    assert pruned, "the synapse should be pruned by the positive gradient"
    assert all(wv == 0.0 for th, wv, keep in history if th <= 0)       # w = s relu(theta)
    assert history[-1][2] and history[-1][1] > 0                         # regrown, same sign
    assert pruned[-1] < len(history) - 1


def test_gradr_layers_give_dense_gradient_to_pruned_synapses():
    torch.manual_seed(0)
    lin = ss.nn.SpikeLinear(6, 3, bias=False)
    model = nn.Sequential(lin)
    opt = P.GradRewiring.from_model(model, lr=1e-3)
    assert lin.dense_weight_grad
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 0] = False
    P.apply_masks(model, {"0.weight": mask})
    x = torch.ones(2, 6)
    model(x).sum().backward()
    assert lin.weight.grad[0, 0] == 2.0        # dL/dw of a pruned synapse is not masked out
    names = opt.named_masks()
    assert set(names) == {"0.weight"} and not names["0.weight"][0, 0]


def test_gradr_bad_arguments():
    p = [nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="target_sparsity"):
        P.GradRewiring(p, target_sparsity=0.4)
    with pytest.raises(ValueError, match="target_sparsity"):
        P.GradRewiring(p, target_sparsity=1.0)
    with pytest.raises(ValueError, match="alpha"):
        P.GradRewiring(p, alpha=-1.0)
    with pytest.raises(ValueError, match="betas"):
        P.GradRewiring(p, betas=(0.9, 1.0))
    opt = P.GradRewiring(p)
    with pytest.raises(ValueError, match="without names"):
        opt.named_masks()


# ------------------------------------------------------------------------------------------ LTH
def two_layer(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(ss.nn.SpikeLinear(32, 64, bias=True), nn.BatchNorm1d(64), ss.nn.SpikeLinear(64, 32))


def test_lth_sparsity_sequence_is_one_minus_075_pow_k_and_global_magnitude():
    model = two_layer()                                    # 4096 prunable weights (biases/BN excluded)
    lt = P.LotteryTicket(model)
    assert set(lt.masks) == {"0.weight", "2.weight"}
    for k in range(1, 7):
        before = {n: w.detach().abs().clone() for n, w in lt.weights.items()}
        alive_before = {n: m.clone() for n, m in lt.masks.items()}
        lt.prune_round(rewind=False)
        assert lt.sparsity() == 1 - 0.75 ** k == P.lth_sparsity(k)
        # Everything kept is at least as large as everything pruned this round (global ranking).
        kept = torch.cat([before[n][lt.masks[n]] for n in before])
        dropped = torch.cat([before[n][alive_before[n] & ~lt.masks[n]] for n in before])
        assert kept.min() >= dropped.max()
        for n, w in lt.weights.items():
            assert (w.detach()[~lt.masks[n]] == 0).all()
            assert torch.equal(P.get_masks(model)[n], lt.masks[n])
    assert abs(P.lth_sparsity(11) - 0.9578) < 1e-4


def test_lth_late_rewinding_and_zeroed_gradients():
    model = two_layer()
    lt = P.LotteryTicket(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(16, 32)
    model(x).pow(2).mean().backward()
    opt.step()
    lt.save_rewind_point()
    early = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    lt.prune_round()
    for n, w in lt.weights.items():
        expect = early[n] * lt.masks[n]
        assert torch.equal(w.detach(), expect)
    assert torch.equal(model[1].running_mean, early["1.running_mean"])
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    for n, w in lt.weights.items():
        assert (w.grad[~lt.masks[n]] == 0).all()


def test_lth_early_time_ticket_kl_criterion():
    # Two classes; logits per number of time steps. KL(P_t || P_T) by hand.
    logits = {2: [2.0, 0.0], 3: [1.5, 0.0], 4: [0.5, 0.0], 5: [0.0, 0.0]}

    def fwd(x, t):
        return torch.tensor([logits[t]]).expand(x.shape[0], 2)

    def kl(a):
        p = torch.softmax(torch.tensor([a, 0.0]), 0)
        return float((p * (p / 0.5).log()).sum())

    r3, r4 = kl(1.5) / kl(2.0), kl(0.5) / kl(2.0)
    assert r3 > 0.6 > r4                    # so t=3 is rejected and t=4 accepted
    assert P.early_time_steps(fwd, torch.zeros(3, 1), T=5) == 4
    logits[4] = [1.9, 0.0]
    assert P.early_time_steps(fwd, torch.zeros(3, 1), T=5) == 5   # none below lambda: full T
    with pytest.raises(ValueError, match="candidates"):
        P.early_time_steps(fwd, torch.zeros(3, 1), T=3)


def test_lth_bad_arguments():
    with pytest.raises(ValueError, match="prune_fraction"):
        P.LotteryTicket(two_layer(), prune_fraction=1.0)
    with pytest.raises(ValueError, match="prune_fraction"):
        P.LotteryTicket(two_layer(), prune_fraction=-0.1)
    with pytest.raises(ValueError, match="unknown parameter names"):
        P.LotteryTicket(two_layer(), exclude=["3.weight"])
    with pytest.raises(RuntimeError, match="rewind point"):
        P.LotteryTicket(two_layer()).rewind()


# ------------------------------------------------------------------------------------------ MPSLT
def test_biprop_gain_and_binary_weights_and_score_gradient():
    lin = ss.nn.SpikeLinear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
    model = nn.Sequential(lin)
    mpt = P.MultiPrizeTicket(model, sparsity=0.5, binarize=True, weight_init=None)
    scores = mpt.parameters()[0]
    with torch.no_grad():
        scores.copy_(torch.tensor([[0.1, -0.9], [0.2, 0.8]]))       # |S| top-2: (0,1) and (1,1)
    mask = torch.tensor([[False, True], [False, True]])
    assert torch.equal(mpt.named_masks()["0.weight"], mask)
    assert float(P.biprop_gain(torch.tensor([[1.0, -2.0], [3.0, -4.0]]), mask)) == 3.0   # (2 + 4) / 2
    w_eff = lin.weight
    assert torch.equal(w_eff, torch.tensor([[0.0, -3.0], [0.0, -3.0]]))
    C = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    (lin.weight * C).sum().backward()
    # dL/dS = dL/dW_eff * sign(W) * |W| * sign(S) = C * W * sign(S)
    W = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    assert torch.equal(scores.grad, C * W * torch.sign(scores.detach()))
    masks = mpt.finalize()
    assert torch.equal(masks["0.weight"], mask) and torch.equal(lin.weight_mask, mask)
    assert torch.equal(lin.weight.detach(), torch.tensor([[0.0, -3.0], [0.0, -3.0]]))


def test_edge_popup_full_precision_and_per_layer_topk():
    model = small_snn()
    mpt = P.MultiPrizeTicket(model, sparsity=0.5, binarize=False)
    masks = mpt.named_masks()
    for n, m in masks.items():
        assert int(m.sum()) == m.numel() - int(0.5 * m.numel())
    lin = model.body[-1]
    orig = lin.parametrizations["weight"].original
    assert torch.equal(lin.weight, orig * masks["body.8.weight"])
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    assert orig.grad is None and all(s.grad is not None for s in mpt.parameters())
    with pytest.raises(ValueError, match="sparsity"):
        P.MultiPrizeTicket(small_snn(), sparsity=1.0)
    with pytest.raises(ValueError, match="include"):
        P.MultiPrizeTicket(small_snn(), include=["nope.weight"])


def test_multisp_slt_patch_selection_keeps_top_patches_and_their_position_embeddings():
    torch.manual_seed(0)
    net = P.MultiSpSLT(img_size=8, patch_size=2, embed_dim=8, num_heads=2, T=2)
    mpt = P.MultiPrizeTicket(net, sparsity=0.5, binarize=True, include=["cpm.weight"])
    assert mpt.names == ["cpm.weight"]
    x = torch.rand(4, 1, 8, 8)
    assert net.cpm_head_logits(x).shape == (4, 10)
    scores = torch.arange(16.0).flip(0)                  # patch 0 best
    keep = net.select_patches(scores, 0.31)
    assert int(keep.sum()) == 16 - 4 and keep[:12].all() and not keep[12:].any()
    z = net.tokens(x)
    assert z.shape == (2, 4, 12, 8) and ss.functional.is_binary(z)
    # The kept tokens carry their own position embeddings: compare with the unselected path.
    with torch.no_grad():
        net.eval()
        full = net.tokens(x, select=False)
        assert torch.equal(net.tokens(x), full[:, :, keep])
    assert net(x).shape == (4, 10)
    s = net.patch_scores(x)
    assert s.shape == (16,) and ((s >= 0) & (s <= 1)).all()
    with pytest.raises(ValueError, match="patch_sparsity"):
        net.select_patches(scores, 1.0)


# ------------------------------------------------------------------------------------------ criticality
def test_criticality_values_on_hand_made_trace():
    # h_seq [T=2, B=2, C=2, H=1, W=2]; atan (alpha 2): sigma'(x) = 1 / (1 + (pi x)^2), V_th = 1.
    h = torch.tensor([
        [[[[1.0, 0.0]], [[2.0, 1.5]]], [[[0.0, 0.0]], [[1.0, 1.0]]]],     # t = 0
        [[[[1.0, 1.5]], [[2.0, 1.5]]], [[[0.5, 0.0]], [[0.0, 1.0]]]],     # t = 1
    ])

    def s(u):
        return 1.0 / (1.0 + (math.pi * (u - 1.0)) ** 2)

    # mean over T per (b, c, w), then max over space, then mean over batch:
    b0c0 = max((s(1.0) + s(1.0)) / 2, (s(0.0) + s(1.5)) / 2)
    b0c1 = max((s(2.0) + s(2.0)) / 2, (s(1.5) + s(1.5)) / 2)
    b1c0 = max((s(0.0) + s(0.5)) / 2, (s(0.0) + s(0.0)) / 2)
    b1c1 = max((s(1.0) + s(0.0)) / 2, (s(1.0) + s(1.0)) / 2)
    expect = torch.tensor([(b0c0 + b1c0) / 2, (b0c1 + b1c1) / 2])
    got = P.criticality(h, v_threshold=1.0, surrogate="atan", alpha=2.0)
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-7)
    # The official weight-pruning code's variant: the surrogate function, monotonic in u.
    code = P.criticality(h, v_threshold=1.0, score="code_tanh")
    assert code.shape == (2,)
    with pytest.raises(ValueError, match="score"):
        P.criticality(h, score="nope")


def test_criticality_monitor_hooks_lif_modules():
    model = small_snn()
    cp = P.CriticalityPruner(model, final_sparsity=0.5, prune_every=1, prune_steps=2)
    # digits_cnn: static conv -> body.0 LIF, body.1 conv -> body.3 LIF, body.6 fc1 -> body.7 LIF
    assert dict(cp.monitor.pairs) == {"static.0.weight": "body.0", "body.1.weight": "body.3",
                                      "body.6.weight": "body.7"}
    assert cp.classifier == "body.8.weight"
    x, _ = batch()
    model.train()
    model(x)
    vals = cp.monitor.values()
    lif = model.body[3]
    expect = P.criticality(lif.h_seq, lif.v_threshold, lif.surrogate, lif.alpha)
    torch.testing.assert_close(vals["body.1.weight"], expect)
    model.eval()
    model(x)                                          # eval forwards are not counted
    assert cp.monitor.counts["body.1.weight"] == 1


def _regrow_weights():
    return {"a.weight": torch.tensor([[0.9, 0.1], [0.8, 0.2]]),
            "b.weight": torch.tensor([[0.7, 0.05], [0.6, 0.04]]),
            "c.weight": torch.tensor([[0.5, 0.3], [0.01, 0.02]])}


def test_regrowth_picks_the_most_critical_neurons():
    # N = 12, sparsity 0.5: n_keep 6, tau = 0.3, keep_last 1, g = int(5 * 0.2) = 1, tau' = 4th body = 0.6
    crit = {"a.weight": torch.tensor([0.1, 0.9]), "b.weight": torch.tensor([0.5, 0.3])}
    m = prune_and_regrow(_regrow_weights(), crit, 0.5, 0.2, "c.weight")
    assert torch.equal(m["a.weight"], torch.tensor([[True, False], [True, True]]))   # regrown: a[1,1]
    assert torch.equal(m["b.weight"], torch.tensor([[True, False], [False, False]]))
    assert torch.equal(m["c.weight"], torch.tensor([[True, False], [False, False]]))  # never regrown


def test_regrowth_ties_regrow_whole_channels():
    # r = 0.4: g = 2, tau' = 3rd body = 0.7 (b[0,0] = 0.7 is not > 0.7). Scores of pruned entries:
    # a: 0.1, 0.9; b row 0: 0.5, 0.5; row 1: 0.3, 0.3 -> 2nd largest 0.5 -> a[1,1], b[0,0], b[0,1] (3 > g).
    crit = {"a.weight": torch.tensor([0.1, 0.9]), "b.weight": torch.tensor([0.5, 0.3])}
    m = prune_and_regrow(_regrow_weights(), crit, 0.5, 0.4, "c.weight")
    assert torch.equal(m["a.weight"], torch.tensor([[True, False], [True, True]]))
    assert torch.equal(m["b.weight"], torch.tensor([[True, True], [False, False]]))
    # r = 0: plain global magnitude pruning, exactly the 6 largest.
    m0 = prune_and_regrow(_regrow_weights(), crit, 0.5, 0.0, "c.weight")
    assert sum(int(v.sum()) for v in m0.values()) == 5        # > tau strictly: 0.3 itself dropped
    with pytest.raises(ValueError, match="channels"):
        prune_and_regrow(_regrow_weights(), {"a.weight": torch.ones(3)}, 0.5, 0.4, "c.weight")


def test_cubic_schedule_and_gradual_pruning_reaches_final_sparsity():
    assert P.cubic_sparsity(0, 10, 0.9) == 0.0
    assert abs(P.cubic_sparsity(10, 10, 0.9) - 0.9) < 1e-12
    assert abs(P.cubic_sparsity(5, 10, 0.9) - 0.9 * (1 - 0.5 ** 3)) < 1e-12
    model = small_snn()
    cp = P.CriticalityPruner(model, final_sparsity=0.8, regrow_ratio=0.3, prune_every=2, prune_steps=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = []
    for i in range(10):
        x, y = batch(i)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if cp.step():
            sp.append(cp.sparsity())
    assert cp.k == 3 and len(sp) == 3 and sp[0] < sp[1] < sp[2]
    assert abs(sp[-1] - 0.8) < 0.01
    for n, w in cp.weights.items():
        assert (w.detach()[~cp.masks[n]] == 0).all()
        assert torch.equal(P.get_masks(model)[n], cp.masks[n])


def test_channel_pruner_slimming_and_critical_channel_regrowth():
    model = small_snn()
    cp = P.CriticalityChannelPruner(model, percent=0.5, growth_rate=0.5)
    assert cp.bn_names == ["static.1", "body.2.module"] and cp.producers["body.2.module"] == "body.1.weight"
    with torch.no_grad():
        model.static[1].weight.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
        model.body[2].module.weight.copy_(torch.tensor([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75]))
    # total 12: n_prune 6, g = int(6 * 0.5) = 3, thr = sorted[9] = 0.55 -> keep 0.65, 0.75
    cp.monitor.sums = {"static.1": torch.tensor([0.0, 0.9, 0.0, 0.8]),
                       "body.2.module": torch.tensor([0.7, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0])}
    cp.monitor.counts = {"static.1": 1, "body.2.module": 1}
    cms = cp.compute_channel_masks()
    assert torch.equal(cms["static.1"], torch.tensor([False, True, False, True]))
    assert torch.equal(cms["body.2.module"], torch.tensor([True, False, False, False, False, False, True, True]))
    wm = cp.apply(cms)
    assert not wm["body.1.weight"][1:6].any() and wm["body.1.weight"][6:].all()
    assert (model.body[2].module.weight.detach()[1:6] == 0).all() and (model.body[2].module.bias.detach()[1:6] == 0).all()
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    assert (model.body[2].module.bias.grad[1:6] == 0).all()
    P.slimming_penalty(model, 1e-4)
    with pytest.raises(ValueError, match="percent"):
        P.CriticalityChannelPruner(small_snn(), percent=1.5)


def test_criticality_bad_arguments():
    with pytest.raises(ValueError, match="final_sparsity"):
        P.CriticalityPruner(small_snn(), final_sparsity=1.0)
    with pytest.raises(ValueError, match="final_sparsity"):
        P.CriticalityPruner(small_snn(), final_sparsity=-0.2)
    with pytest.raises(ValueError, match="regrow_ratio"):
        P.CriticalityPruner(small_snn(), regrow_ratio=2)
    with pytest.raises(ValueError, match="unknown classifier"):
        P.CriticalityPruner(small_snn(), classifier="fc9.weight")
    with pytest.raises(ValueError, match="prune_every"):
        P.CriticalityPruner(small_snn(), prune_every=0)


def test_criticality_monitor_remove_restores_lif_settings():
    model = small_snn()
    lifs = [m for m in model.modules() if isinstance(m, ss.nn.LIF)]
    assert not any(m.record_h for m in lifs)
    cp = P.CriticalityPruner(model, final_sparsity=0.5, prune_every=1, prune_steps=1)
    assert all(m.record_h for m in lifs[:3])
    cp.remove()
    assert not any(m.record_h for m in lifs) and not any(m._forward_hooks for m in lifs)
