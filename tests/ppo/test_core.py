"""varpo.ppo.core against independent float64 references written as plain Python loops over
sequences and tokens, on fresh random inputs with variable lengths (1 .. T) and odd sizes."""
from __future__ import annotations

import math

import pytest
import torch

from varpo.ppo import core

SEEDS = range(6)


def _batch(seed, B=None, T=None):
    g = torch.Generator().manual_seed(seed)
    B = B or int(torch.randint(1, 8, (1,), generator=g))
    T = T or int(torch.randint(1, 12, (1,), generator=g)) | 1  # odd T
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T  # one full-length sequence
    if B > 1:
        lengths[1] = 1  # and one of length 1
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    rnd = lambda: torch.randn(B, T, generator=g, dtype=torch.float64)  # noqa: E731
    return g, B, T, [int(x) for x in lengths], mask, rnd


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators(seed, estimator):
    _, B, T, L, mask, rnd = _batch(seed)
    lp, rlp = rnd(), rnd()
    got = core.kl_per_token(lp, rlp, estimator)
    for b in range(B):
        for t in range(T):
            r = lp[b, t].item() - rlp[b, t].item()
            want = {"k1": r, "k2": 0.5 * r * r, "k3": math.exp(-r) - 1 + r}[estimator]
            assert got[b, t].item() == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_shape_rewards_places_score_on_last_real_token(seed):
    g, B, T, L, mask, rnd = _batch(seed)
    score, kl = torch.randn(B, generator=g, dtype=torch.float64), rnd()
    w = torch.rand(B, generator=g, dtype=torch.float64) * 3
    beta = 0.37
    rewards, penalty = core.shape_rewards(score, kl * mask, w, mask, beta)
    for b in range(B):
        for t in range(T):
            want = -beta * w[b].item() * kl[b, t].item() if t < L[b] else 0.0
            assert penalty[b, t].item() == pytest.approx(want, abs=1e-12)
            if t == L[b] - 1:
                want += score[b].item()
            assert rewards[b, t].item() == pytest.approx(want, abs=1e-12), (b, t, L[b])


def _gae_ref(r, v, L, gamma, lam):
    adv = [0.0] * len(r)
    last = 0.0
    for t in reversed(range(L)):
        next_v = v[t + 1] if t + 1 < L else 0.0
        delta = r[t] + gamma * next_v - v[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [adv[t] + v[t] if t < L else 0.0 for t in range(len(r))]


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_matches_backward_loop(seed):
    g, B, T, L, mask, rnd = _batch(seed)
    rewards, values = rnd() * mask, rnd()
    gamma, lam = 0.93, 0.71  # distinct, so swapping them fails
    adv, ret = core.gae(rewards, values, mask, gamma, lam)
    for b in range(B):
        a_ref, r_ref = _gae_ref(rewards[b].tolist(), values[b].tolist(), L[b], gamma, lam)
        assert adv[b].tolist() == pytest.approx(a_ref, abs=1e-10)
        assert ret[b].tolist() == pytest.approx(r_ref, abs=1e-10)


def test_gae_does_not_bootstrap_from_padding():
    rewards = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.25, 100.0]], dtype=torch.float64)  # a huge value on the pad
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    adv, _ = core.gae(rewards, values, mask, 1.0, 1.0)
    assert adv[0].tolist() == pytest.approx([1.0 - 0.5, 1.0 - 0.25, 0.0])


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_statistics_and_whitening(seed):
    _, B, T, L, mask, rnd = _batch(seed)
    x = rnd() * 3 + 1
    vals = [x[b, t].item() for b in range(B) for t in range(L[b])]
    n = len(vals)
    mean = sum(vals) / n
    var = sum((v - mean) ** 2 for v in vals) / max(n - 1, 1)
    assert core.masked_mean(x, mask).item() == pytest.approx(mean, rel=1e-12)
    assert core.masked_var(x, mask).item() == pytest.approx(var, rel=1e-12)
    w = core.masked_whiten(x, mask)
    for b in range(B):
        for t in range(T):
            want = (x[b, t].item() - mean) / math.sqrt(var + 1e-8) if t < L[b] else 0.0
            assert w[b, t].item() == pytest.approx(want, rel=1e-9, abs=1e-12)
    keep = core.masked_whiten(x, mask, shift_mean=False)
    assert keep[0, 0].item() == pytest.approx((x[0, 0].item() - mean) / math.sqrt(var + 1e-8) + mean, rel=1e-9)
    s, sq, cnt = core.masked_moments(x, mask)
    assert (s.item(), sq.item(), cnt.item()) == pytest.approx((sum(vals), sum(v * v for v in vals), n))


@pytest.mark.parametrize("seed", SEEDS)
def test_policy_loss_matches_token_loop(seed):
    g, B, T, L, mask, rnd = _batch(seed)
    old, adv = rnd(), rnd()
    new = old + 0.4 * rnd()
    eps = 0.2
    loss, stats = core.policy_loss(new, old, adv, mask, eps)
    terms, clipped, kls = [], [], []
    for b in range(B):
        for t in range(L[b]):
            ratio = math.exp(new[b, t].item() - old[b, t].item())
            a = adv[b, t].item()
            u, c = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
            terms.append(max(u, c))
            clipped.append(1.0 if c > u else 0.0)
            kls.append(0.5 * (new[b, t].item() - old[b, t].item()) ** 2)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-10)
    assert stats["clipfrac"].item() == pytest.approx(sum(clipped) / len(clipped))
    assert stats["approx_kl"].item() == pytest.approx(sum(kls) / len(kls), rel=1e-10)


def test_policy_loss_clips_on_the_right_side():
    old = torch.zeros(1, 2, dtype=torch.float64)
    new = torch.log(torch.tensor([[1.5, 0.5]], dtype=torch.float64))
    mask = torch.ones(1, 2, dtype=torch.float64)
    # positive advantage: a ratio above 1+ε is clipped; negative advantage: below 1−ε is clipped
    lp, _ = core.policy_loss(new, old, torch.tensor([[1.0, 1.0]], dtype=torch.float64), mask, 0.2)
    assert lp.item() == pytest.approx((-1.2 + -0.5) / 2)
    ln, _ = core.policy_loss(new, old, torch.tensor([[-1.0, -1.0]], dtype=torch.float64), mask, 0.2)
    assert ln.item() == pytest.approx((1.5 + 0.8) / 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_value_loss_matches_token_loop(seed):
    _, B, T, L, mask, rnd = _batch(seed)
    old, ret = rnd(), rnd()
    v = old + 0.5 * rnd()
    eps = 0.2
    loss, stats = core.value_loss(v, old, ret, mask, eps)
    terms = []
    for b in range(B):
        for t in range(L[b]):
            vc = old[b, t].item() + min(max(v[b, t].item() - old[b, t].item(), -eps), eps)
            terms.append(0.5 * max((v[b, t].item() - ret[b, t].item()) ** 2, (vc - ret[b, t].item()) ** 2))
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-10)


def test_entropy_from_logits():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 7, generator=g, dtype=torch.float64) * 4
    got = core.entropy_from_logits(z)
    for idx in [(0, 0), (2, 4), (1, 3)]:
        row = z[idx].tolist()
        mx = max(row)
        ps = [math.exp(x - mx) for x in row]
        s = sum(ps)
        want = -sum(p / s * math.log(p / s) for p in ps)
        assert got[idx].item() == pytest.approx(want, rel=1e-10)


def test_variance_weights_modes_and_clamp():
    var = torch.tensor([0.5, 1.0, 2.5, 4.0], dtype=torch.float64)
    assert core.variance_weights(var, "none").tolist() == [1.0] * 4
    assert core.variance_weights(var, "raw").tolist() == var.tolist()
    m = sum(var.tolist()) / 4
    assert core.variance_weights(var, "batch_mean", eps=0).tolist() == pytest.approx([v / m for v in var.tolist()])
    assert core.variance_weights(var, "batch_mean", eps=0, batch_mean=2.0).tolist() == pytest.approx([v / 2 for v in var.tolist()])
    assert core.variance_weights(var, "running_mean", running_mean=4.0, eps=0).tolist() == pytest.approx([v / 4 for v in var.tolist()])
    assert core.variance_weights(var, "raw", floor=1.0, ceiling=3.0).tolist() == [1.0, 1.0, 2.5, 3.0]
    with pytest.raises(ValueError, match="running mean"):
        core.variance_weights(var, "running_mean")


def test_variance_aware_equals_vanilla_when_sigma_sq_is_one():
    g, B, T, L, mask, rnd = _batch(11)
    score, kl = torch.randn(B, generator=g, dtype=torch.float64), rnd() * mask
    ones = torch.ones(B, dtype=torch.float64)
    a, _ = core.shape_rewards(score, kl, core.variance_weights(ones, "none"), mask, 0.1)
    b, _ = core.shape_rewards(score, kl, core.variance_weights(ones, "raw"), mask, 0.1)
    assert torch.equal(a, b)


def test_missing_eos_penalty():
    s = torch.tensor([1.0, 2.0])
    assert core.apply_missing_eos_penalty(s, torch.tensor([True, False]), 0.5).tolist() == [1.0, 1.5]
    assert core.apply_missing_eos_penalty(s, torch.tensor([True, False]), None).tolist() == [1.0, 2.0]


def test_kl_controllers_and_state():
    from varpo.config import KLConfig

    fixed = core.make_kl_controller(KLConfig(beta=0.3))
    fixed.update(100.0, 64)
    assert fixed.value == 0.3
    ctl = core.make_kl_controller(KLConfig(beta=0.1, controller="adaptive", target=6.0, horizon=1000))
    ctl.update(9.0, 50)  # error 0.5 -> clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 50 / 1000))
    ctl.update(5.4, 100)  # error -0.1
    want = 0.1 * (1 + 0.2 * 50 / 1000) * (1 - 0.1 * 100 / 1000)
    assert ctl.value == pytest.approx(want)
    other = core.make_kl_controller(KLConfig(beta=1.0, controller="adaptive", target=6.0, horizon=1000))
    other.load_state_dict(ctl.state_dict())
    assert other.value == ctl.value
    rm = core.RunningMean(0.5)
    assert rm.update(2.0) == 2.0 and rm.update(4.0) == 3.0
    rm2 = core.RunningMean()
    rm2.load_state_dict(rm.state_dict())
    assert rm2.update(1.0) == 2.0
