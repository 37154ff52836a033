"""varpo.ppo.core against independent float64 references written as plain Python loops over
sequences and tokens (floats, not tensors), on fresh random inputs with odd T and variable lengths
(always one of length 1 and one of full length), plus small hand-computed cases that a sign error,
an off-by-one, swapped γ/λ or a clip on the wrong side would fail."""
from __future__ import annotations

import math

import pytest
import torch

from varpo.ppo import core

SEEDS = range(6)
F64 = torch.float64


def _batch(seed):
    """Random B in [2, 8], odd T in [1, 13]; lengths in 1..T with row 0 full and row 1 of length 1."""
    g = torch.Generator().manual_seed(1000 + seed)
    B = int(torch.randint(2, 9, (1,), generator=g))
    T = int(torch.randint(0, 7, (1,), generator=g)) * 2 + 1
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0], lengths[1] = T, 1
    L = [int(x) for x in lengths]
    mask = torch.tensor([[1.0 if t < L[b] else 0.0 for t in range(T)] for b in range(B)], dtype=F64)

    def rnd():
        return torch.randn(B, T, generator=g, dtype=F64)

    return g, B, T, L, mask, rnd


def _real(x, L):
    """The real-token values of a [B, T] tensor as a flat list of floats."""
    return [x[b, t].item() for b in range(len(L)) for t in range(L[b])]


def _close(got, want, **kw):
    torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype), **kw)


def _pad_with_garbage(x, mask, value=float("nan")):
    """Put NaN (or `value`) on padding: no output may depend on it."""
    return torch.where(mask.bool(), x, torch.full_like(x, value))


# ---------------------------------------------------------------------------- masked statistics


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_sum_mean_var_moments(seed):
    _, B, T, L, mask, rnd = _batch(seed)
    x = _pad_with_garbage(rnd() * 3 + 1, mask)
    vals = _real(x, L)
    n = len(vals)
    mean = sum(vals) / n
    assert core.masked_sum(x, mask).item() == pytest.approx(sum(vals), rel=1e-12)
    assert core.masked_mean(x, mask).item() == pytest.approx(mean, rel=1e-12)
    assert core.masked_var(x, mask).item() == pytest.approx(sum((v - mean) ** 2 for v in vals) / (n - 1), rel=1e-12)
    assert core.masked_var(x, mask, unbiased=False).item() == pytest.approx(sum((v - mean) ** 2 for v in vals) / n, rel=1e-12)
    row_sum, row_mean = core.masked_sum(x, mask, dim=-1), core.masked_mean(x, mask, dim=1)
    for b in range(B):
        r = [x[b, t].item() for t in range(L[b])]
        assert row_sum[b].item() == pytest.approx(sum(r), rel=1e-12)
        assert row_mean[b].item() == pytest.approx(sum(r) / len(r), rel=1e-12)
    col_mean = core.masked_mean(x, mask, dim=0)
    for t in range(T):
        c = [x[b, t].item() for b in range(B) if t < L[b]]
        assert col_mean[t].item() == pytest.approx(sum(c) / len(c), rel=1e-12)
    s, sq, cnt = core.masked_moments(x, mask)
    assert (s.item(), sq.item(), cnt.item()) == pytest.approx((sum(vals), sum(v * v for v in vals), n), rel=1e-12)


def test_masked_statistics_of_empty_and_single_token():
    x = torch.tensor([[3.0, 7.0]], dtype=F64)
    empty = torch.zeros(1, 2, dtype=F64)
    assert core.masked_mean(x, empty).item() == 0.0
    one = torch.tensor([[1.0, 0.0]], dtype=F64)
    assert core.masked_mean(x, one).item() == 3.0
    assert core.masked_var(x, one).item() == 0.0
    assert core.masked_whiten(x, one).tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("seed", SEEDS)
def test_whitening_matches_loop(seed):
    _, B, T, L, mask, rnd = _batch(seed)
    x = _pad_with_garbage(rnd() * 2 - 0.7, mask)
    vals = _real(x, L)
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    white, scaled = core.masked_whiten(x, mask), core.masked_whiten(x, mask, shift_mean=False)
    for b in range(B):
        for t in range(T):
            real = t < L[b]
            want = (x[b, t].item() - mean) / math.sqrt(var + 1e-8) if real else 0.0
            assert white[b, t].item() == pytest.approx(want, rel=1e-10, abs=1e-12)
            assert scaled[b, t].item() == pytest.approx(want + mean if real else 0.0, rel=1e-10, abs=1e-12)
    out = _real(white, L)
    assert sum(out) / len(out) == pytest.approx(0.0, abs=1e-10)
    assert sum(v * v for v in out) / (len(out) - 1) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_whiten_with_summed_moments_equals_whole_batch(seed):
    """Two 'ranks' each hold some rows; summing their moments and whitening with the global
    statistics gives what whitening the whole batch at once gives (the trainer's path)."""
    _, B, _T, _L, mask, rnd = _batch(seed)
    x = rnd()
    k = B // 2
    parts = [core.masked_moments(x[:k], mask[:k]), core.masked_moments(x[k:], mask[k:])]
    s, sq, n = (sum(p[i] for p in parts) for i in range(3))
    mean = s / n
    var = (sq - n * mean**2) / (n - 1)
    got = torch.cat([core.whiten_with(x[:k], mean, var, mask[:k]), core.whiten_with(x[k:], mean, var, mask[k:])])
    torch.testing.assert_close(got, core.masked_whiten(x, mask), rtol=1e-9, atol=1e-12)
    # floats work as well as tensors
    torch.testing.assert_close(core.whiten_with(x, float(mean), float(var), mask), core.masked_whiten(x, mask))


# ---------------------------------------------------------------------------- KL estimators


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators(seed, estimator):
    _, B, T, _L, _mask, rnd = _batch(seed)
    lp, rlp = rnd() - 2, rnd() - 2
    got = core.kl_per_token(lp, rlp, estimator)
    assert got.dtype == F64 and got.shape == (B, T)
    for b in range(B):
        for t in range(T):
            r = lp[b, t].item() - rlp[b, t].item()
            want = {"k1": r, "k2": 0.5 * r * r, "k3": math.exp(-r) - 1 + r}[estimator]
            assert got[b, t].item() == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_kl_estimator_signs_and_errors():
    lp = torch.tensor([[-1.0, -2.0]], dtype=F64)
    ref = torch.tensor([[-2.0, -1.0]], dtype=F64)
    # r = log π − log π_ref: +1 where the policy likes the token more than the reference
    assert core.kl_per_token(lp, ref, "k1").tolist() == [[1.0, -1.0]]
    assert (core.kl_per_token(lp, ref, "k3") >= 0).all() and (core.kl_per_token(lp, ref, "k2") >= 0).all()
    # k3 is not symmetric in r: e^{−1} − 1 + 1 vs e^{1} − 1 − 1
    _close(core.kl_per_token(lp, ref, "k3"), [[math.exp(-1), math.e - 2]])
    with pytest.raises(ValueError, match="k4.*k1, k2, k3"):
        core.kl_per_token(lp, ref, "k4")
    with pytest.raises(ValueError, match="shape"):
        core.kl_per_token(lp, ref[:, :1], "k1")


# ---------------------------------------------------------------------------- σ² weights


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["none", "raw", "batch_mean", "running_mean"])
def test_variance_weights_match_loop(seed, mode):
    g = torch.Generator().manual_seed(seed)
    B = int(torch.randint(1, 12, (1,), generator=g))
    var = torch.rand(B, generator=g, dtype=F64) * 3
    floor, ceiling = (0.2, 1.7) if seed % 2 else (None, None)
    running = 0.9 + seed * 0.1
    eps = 1e-8
    got = core.variance_weights(var, mode, floor=floor, ceiling=ceiling, running_mean=running, eps=eps)
    v = var.tolist()
    for i in range(B):
        want = {"none": 1.0, "raw": v[i], "batch_mean": v[i] / (sum(v) / B + eps),
                "running_mean": v[i] / (running + eps)}[mode]
        if floor is not None:
            want = min(max(want, floor), ceiling)
        assert got[i].item() == pytest.approx(want, rel=1e-12)


def test_variance_weights_clamp_and_global_mean():
    var = torch.tensor([0.5, 1.0, 2.5, 4.0], dtype=F64)
    assert core.variance_weights(var, "raw", floor=1.0, ceiling=3.0).tolist() == [1.0, 1.0, 2.5, 3.0]
    assert core.variance_weights(var, "raw", floor=1.0).tolist() == [1.0, 1.0, 2.5, 4.0]
    assert core.variance_weights(var, "raw", ceiling=1.0).tolist() == [0.5, 1.0, 1.0, 1.0]
    # the clamp applies after normalisation: mean 2 → [0.25, 0.5, 1.25, 2] → [0.3, 0.5, 1.25, 1.5]
    assert core.variance_weights(var, "batch_mean", eps=0, floor=0.3, ceiling=1.5).tolist() == [0.3, 0.5, 1.25, 1.5]
    # a mean passed in (e.g. over all ranks) replaces this batch's mean
    assert core.variance_weights(var, "batch_mean", eps=0, batch_mean=torch.tensor(4.0)).tolist() == [0.125, 0.25, 0.625, 1.0]
    assert core.variance_weights(var, "running_mean", running_mean=torch.tensor(0.5), eps=0).tolist() == [1.0, 2.0, 5.0, 8.0]
    assert core.variance_weights(var, "batch_mean").mean().item() == pytest.approx(1.0, rel=1e-7)


def test_variance_weights_errors():
    var = torch.tensor([0.5, 1.0])
    with pytest.raises(ValueError, match="running mean"):
        core.variance_weights(var, "running_mean")
    with pytest.raises(ValueError, match="unknown variance weighting 'sigma'"):
        core.variance_weights(var, "sigma")
    with pytest.raises(ValueError, match="floor .* ceiling"):
        core.variance_weights(var, "raw", floor=2.0, ceiling=1.0)
    with pytest.raises(ValueError, match="≥ 0"):
        core.variance_weights(torch.tensor([0.5, -0.1]), "raw")
    with pytest.raises(ValueError, match=r"\[B\]"):
        core.variance_weights(var[None], "raw")


def _tempered_loop(v, mode, alpha, running, eps, floor, ceiling, keep):
    """Float64 reference of the heterogeneity-scaled weights: plain floats, means over `keep`."""
    sub = [x for x, k in zip(v, keep) if k]
    level = math.fsum(sub) / len(sub)
    m = level if mode == "batch_mean" else running
    r = [x / (m + eps) for x in v]
    if alpha == 1:
        w = r
    else:
        p = [x**alpha for x in r]
        p_mean = math.fsum(x for x, k in zip(p, keep) if k) / len(sub)
        w = [(level / (m + eps)) ** alpha * x / max(p_mean, eps) for x in p]
    lo, hi = (-math.inf if floor is None else floor), (math.inf if ceiling is None else ceiling)
    return [min(max(x, lo), hi) for x in w]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["batch_mean", "running_mean"])
def test_variance_weights_heterogeneity_match_loop(seed, mode):
    """Random α (with 0, 1 and 2 always among them), σ² spanning two decades (some exactly 0),
    a random subset as the batch the means run over (the trainer's valid samples), and clamps."""
    g = torch.Generator().manual_seed(100 + seed)
    B = int(torch.randint(2, 12, (1,), generator=g))
    var = torch.exp(torch.rand(B, generator=g, dtype=F64) * 4.6 - 2.3)
    var[int(torch.randint(0, B, (1,), generator=g))] = 0.0
    keep = torch.rand(B, generator=g) < 0.7
    keep[0] = True
    floor, ceiling = (0.3, 2.5) if seed % 2 else (None, None)
    running, eps = 0.5 + seed * 0.3, 1e-8
    for alpha in (0.0, 1.0, 2.0, float(torch.rand(1, generator=g)) * 3):
        got = core.variance_weights(var, mode, floor=floor, ceiling=ceiling, running_mean=running, eps=eps,
                                    heterogeneity=alpha, mean_fn=lambda x: x[keep].mean())
        want = _tempered_loop(var.tolist(), mode, alpha, running, eps, floor, ceiling, keep.tolist())
        for i in range(B):
            assert got[i].item() == pytest.approx(want[i], rel=1e-12, abs=0), (alpha, i)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_variance_weights_heterogeneity_limits(dtype):
    g = torch.Generator().manual_seed(7)
    var = (torch.rand(9, generator=g, dtype=F64) * 3).to(dtype)
    var[2] = 0.0
    for mode in ("batch_mean", "running_mean"):
        kw = {"running_mean": 0.7}
        # α = 1 is the unmodified weighting, bit for bit; α → 1 joins it continuously
        plain = core.variance_weights(var, mode, **kw)
        assert torch.equal(core.variance_weights(var, mode, heterogeneity=1.0, **kw), plain)
        torch.testing.assert_close(core.variance_weights(var, mode, heterogeneity=1 + 1e-9, **kw), plain,
                                   rtol=1e-6, atol=0)
        # α = 0: every weight exactly 1 (vanilla), whatever σ², and the clamp still applies after
        assert core.variance_weights(var, mode, heterogeneity=0.0, **kw).tolist() == [1.0] * 9
        assert core.variance_weights(var, mode, heterogeneity=0.0, floor=1.5, **kw).tolist() == [1.5] * 9
    # α scales the spread of log w exactly, and batch_mean keeps mean(w) = 1 at every α
    pos = var[var > 0].to(F64)
    for alpha in (0.5, 2.0, 3.0):
        w = core.variance_weights(pos, "batch_mean", heterogeneity=alpha, eps=0.0)
        assert w.mean().item() == pytest.approx(1.0, rel=1e-12)
        assert w.log().std().item() == pytest.approx(alpha * pos.log().std().item(), rel=1e-10)
    # running_mean: the batch's level against the running mean, ρ, becomes ρ^α
    rho = pos.mean().item() / 0.4
    w = core.variance_weights(pos, "running_mean", running_mean=0.4, heterogeneity=2.0, eps=0.0)
    assert w.mean().item() == pytest.approx(rho**2, rel=1e-12)
    # every σ² = 0: weights 0 (as at α = 1), not 0/0
    assert core.variance_weights(torch.zeros(3), "batch_mean", heterogeneity=2.0).tolist() == [0.0] * 3


def test_variance_weights_heterogeneity_errors():
    var = torch.tensor([0.5, 1.0])
    with pytest.raises(ValueError, match="heterogeneity .*normalised"):
        core.variance_weights(var, "raw", heterogeneity=2.0)
    assert core.variance_weights(var, "raw", heterogeneity=1.0).tolist() == [0.5, 1.0]
    for bad in (-0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="heterogeneity must be a finite number ≥ 0"):
            core.variance_weights(var, "batch_mean", heterogeneity=bad)
    assert core.variance_weights(var, "none", heterogeneity=3.0).tolist() == [1.0, 1.0]
    # a NaN σ² stays visible (pow(NaN, 0) would have made it 1)
    assert math.isnan(core.variance_weights(torch.tensor([0.5, math.nan]), "running_mean", running_mean=1.0,
                                            heterogeneity=0.0)[1].item())


def test_heterogeneity_config_names_the_field():
    from varpo.config import ConfigError, load_config

    assert load_config(None, ["ppo.variance.heterogeneity=0"]).ppo.variance.heterogeneity == 0.0
    with pytest.raises(ConfigError, match=r"ppo\.variance: .*heterogeneity \(2\.0\) must be 1 with weighting=raw"):
        load_config(None, ["ppo.variance.weighting=raw", "ppo.variance.heterogeneity=2"])
    for bad in ("-1", ".nan", "abc"):
        with pytest.raises(ConfigError, match=r"ppo\.variance\.heterogeneity: "):
            load_config(None, [f"ppo.variance.heterogeneity={bad}"])


def test_running_mean_matches_loop_and_round_trips():
    g = torch.Generator().manual_seed(3)
    xs = (torch.rand(9, generator=g, dtype=F64) * 5).tolist()
    rm, ref = core.ExponentialMovingAverage(0.7), None
    for i, x in enumerate(xs):
        ref = x if ref is None else 0.7 * ref + 0.3 * x
        assert rm.update(torch.tensor(x, dtype=F64)) == pytest.approx(ref, rel=1e-14)
        if i == 4:  # resume half way: the restored copy continues identically
            copy = core.ExponentialMovingAverage(0.1)
            copy.load_state_dict(rm.state_dict())
    for x in xs[5:]:
        copy.update(x)
    assert copy.value == rm.value and copy.momentum == 0.7
    fresh = core.ExponentialMovingAverage()
    fresh.load_state_dict(core.ExponentialMovingAverage().state_dict())
    assert fresh.value is None and fresh.update(2.5) == 2.5  # first update initialises
    with pytest.raises(ValueError, match="momentum"):
        core.ExponentialMovingAverage(1.0)
    with pytest.raises(ValueError, match="non-finite"):
        rm.update(float("nan"))


# ---------------------------------------------------------------------------- reward shaping


@pytest.mark.parametrize("seed", SEEDS)
def test_shape_rewards_matches_loop(seed):
    g, B, T, L, mask, rnd = _batch(seed)
    score, kl = torch.randn(B, generator=g, dtype=F64), _pad_with_garbage(rnd(), mask)
    w = torch.rand(B, generator=g, dtype=F64) * 3
    beta = 0.37
    rewards, penalty = core.shape_rewards(score, kl, w, mask, beta)
    for b in range(B):
        for t in range(T):
            pen = -beta * w[b].item() * kl[b, t].item() if t < L[b] else 0.0
            assert penalty[b, t].item() == pytest.approx(pen, rel=1e-12, abs=1e-15)
            want = pen + (score[b].item() if t == L[b] - 1 else 0.0)
            assert rewards[b, t].item() == pytest.approx(want, rel=1e-12, abs=1e-15), (b, t, L[b])


def test_shape_rewards_hand_case():
    """Score on the last real token (not one late, not on the pad); penalty is −β·w·kl."""
    score = torch.tensor([5.0, -1.0, 2.0], dtype=F64)
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [1.0, 1.0, 1.0]], dtype=F64)
    w = torch.tensor([2.0, 1.0, 0.5], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    rewards, penalty = core.shape_rewards(score, kl, w, mask, beta=0.5)
    _close(rewards, [[-0.1, -0.2 + 5.0, 0.0], [-0.2, -0.25, -0.3 - 1.0], [-0.25 + 2.0, 0.0, 0.0]])
    _close(penalty, [[-0.1, -0.2, 0.0], [-0.2, -0.25, -0.3], [-0.25, 0.0, 0.0]])


def test_shape_rewards_dropped_rows_and_bad_masks():
    score = torch.tensor([float("nan"), 1.0], dtype=F64)
    w = torch.tensor([float("nan"), 1.0], dtype=F64)
    kl = torch.ones(2, 3, dtype=F64)
    mask = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
    rewards, penalty = core.shape_rewards(score, kl, w, mask, 0.1)
    assert rewards[0].tolist() == [0.0, 0.0, 0.0] and penalty[0].tolist() == [0.0, 0.0, 0.0]
    assert rewards[1].tolist() == pytest.approx([-0.1, -0.1, 0.9])
    with pytest.raises(ValueError, match="left-aligned"):
        core.shape_rewards(score, kl, w, torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64), 0.1)
    with pytest.raises(ValueError, match="0 and 1"):
        core.shape_rewards(score, kl, w, mask * 0.5, 0.1)
    with pytest.raises(ValueError, match="score"):
        core.shape_rewards(score[:1], kl, w, mask, 0.1)


@pytest.mark.parametrize("seed", SEEDS)
def test_variance_aware_equals_vanilla_when_sigma_sq_is_one(seed):
    """Raw σ² ≡ 1 gives w ≡ 1: rewards, advantages and returns are bit-identical to vanilla."""
    g, B, _T, _L, mask, rnd = _batch(seed)
    score, kl, values = torch.randn(B, generator=g, dtype=F64), rnd(), rnd()
    ones = torch.ones(B, dtype=F64)
    out = []
    for mode in ("none", "raw"):
        r, p = core.shape_rewards(score, kl, core.variance_weights(ones, mode), mask, 0.1)
        out.append((r, p, *core.gae(r, values, mask, 0.97, 0.9)))
    for a, b in zip(*out):
        assert torch.equal(a, b)
    # and a non-constant σ² does change the rewards wherever kl ≠ 0
    var = torch.rand(B, generator=g, dtype=F64) + 0.5
    r_va, _ = core.shape_rewards(score, kl, core.variance_weights(var, "raw"), mask, 0.1)
    assert not torch.equal(r_va, out[0][0])


@pytest.mark.parametrize("seed", SEEDS)
def test_missing_eos_penalty_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    B = int(torch.randint(1, 10, (1,), generator=g))
    s, has = torch.randn(B, generator=g, dtype=F64), torch.rand(B, generator=g) > 0.5
    got = core.apply_missing_eos_penalty(s, has, 0.75)
    for i in range(B):
        assert got[i].item() == pytest.approx(s[i].item() - (0.0 if has[i] else 0.75), rel=1e-15)
    assert torch.equal(core.apply_missing_eos_penalty(s, has, None), s)
    with pytest.raises(ValueError, match="has_eos"):
        core.apply_missing_eos_penalty(s, has[:0], 1.0)


# ---------------------------------------------------------------------------- GAE


def _gae_ref(r, v, L, gamma, lam):
    """Backward loop over one sequence of plain floats; the episode ends at L (V_L = 0)."""
    T = len(r)
    adv, last = [0.0] * T, 0.0
    for t in reversed(range(L)):
        next_v = v[t + 1] if t + 1 < L else 0.0
        delta = r[t] + gamma * next_v - v[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [adv[t] + v[t] if t < L else 0.0 for t in range(T)]


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_matches_backward_loop(seed):
    _, B, _T, L, mask, rnd = _batch(seed)
    rewards, values = rnd(), rnd()
    gamma, lam = 0.93, 0.71  # distinct: swapping them changes δ_t = r_t + γV_{t+1} − V_t
    adv, ret = core.gae(_pad_with_garbage(rewards, mask), _pad_with_garbage(values, mask), mask, gamma, lam)
    for b in range(B):
        a_ref, r_ref = _gae_ref(rewards[b].tolist(), values[b].tolist(), L[b], gamma, lam)
        assert adv[b].tolist() == pytest.approx(a_ref, rel=1e-10, abs=1e-12)
        assert ret[b].tolist() == pytest.approx(r_ref, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_with_unit_gamma_lambda_is_return_to_go(seed):
    """γ = λ = 1: A_t = Σ_{k≥t} r_k − V_t (a different identity from the recursion)."""
    _, B, _T, L, mask, rnd = _batch(seed)
    rewards, values = rnd(), rnd()
    adv, ret = core.gae(rewards, values, mask, 1.0, 1.0)
    for b in range(B):
        for t in range(L[b]):
            togo = sum(rewards[b, k].item() for k in range(t, L[b]))
            assert adv[b, t].item() == pytest.approx(togo - values[b, t].item(), rel=1e-10, abs=1e-12)
            assert ret[b, t].item() == pytest.approx(togo, rel=1e-10, abs=1e-12)


def test_gae_hand_cases():
    # no bootstrap from the pad: a huge value at the padded position must not leak in
    rewards = torch.tensor([[0.0, 1.0, 0.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.25, 100.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    adv, ret = core.gae(rewards, values, mask, 1.0, 1.0)
    assert adv[0].tolist() == pytest.approx([0.5, 0.75, 0.0])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 0.0])
    # γ = 0.5, λ = 0.8 by hand: δ1 = 2 − 1 = 1; δ0 = 0 + 0.5·1 − 3 = −2.5; A0 = −2.5 + 0.4·1 = −2.1
    # (swapped: δ0 = 0.8·1 − 3 = −2.2, A0 = −1.8)
    adv, _ = core.gae(torch.tensor([[0.0, 2.0]], dtype=F64), torch.tensor([[3.0, 1.0]], dtype=F64),
                      torch.ones(1, 2, dtype=F64), 0.5, 0.8)
    assert adv[0].tolist() == pytest.approx([-2.1, 1.0])


# ---------------------------------------------------------------------------- losses


@pytest.mark.parametrize("seed", SEEDS)
def test_policy_loss_and_gradient_match_token_loop(seed):
    _, B, T, L, mask, rnd = _batch(seed)
    old, adv = rnd() - 1, rnd()
    new = (old + 0.4 * rnd()).requires_grad_(True)
    eps = 0.2
    loss, stats = core.policy_loss(_pad_with_garbage(new, mask), old, adv, mask, eps)
    loss.backward()
    n = sum(L)
    terms, clipped, k2, k3, ratios = [], [], [], [], []
    grad = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(L[b]):
            lr = new[b, t].item() - old[b, t].item()
            ratio, a = math.exp(lr), adv[b, t].item()
            u, c = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
            terms.append(max(u, c))
            clipped.append(1.0 if c > u else 0.0)
            k2.append(0.5 * lr * lr)
            k3.append(ratio - 1 - lr)
            ratios.append(ratio)
            # d/dlogp of the active branch: the clipped branch is flat in logp
            grad[b][t] = (-a * ratio if u >= c else 0.0) / n
    assert loss.item() == pytest.approx(sum(terms) / n, rel=1e-10)
    assert stats["clipfrac"].item() == pytest.approx(sum(clipped) / n, rel=1e-12)
    assert stats["approx_kl"].item() == pytest.approx(sum(k2) / n, rel=1e-10)
    assert stats["approx_kl_k3"].item() == pytest.approx(sum(k3) / n, rel=1e-8, abs=1e-14)
    assert stats["ratio_mean"].item() == pytest.approx(sum(ratios) / n, rel=1e-12)
    assert new.grad.tolist() == [pytest.approx(row, rel=1e-10, abs=1e-14) for row in grad]
    assert not any(v.requires_grad for v in stats.values())


def test_policy_loss_clips_on_the_right_side():
    old = torch.zeros(1, 4, dtype=F64)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9]], dtype=F64))
    mask = torch.ones(1, 4, dtype=F64)
    # A > 0: a ratio above 1+ε is clipped (no more gain), one below 1−ε is not (full loss kept)
    lp, sp = core.policy_loss(new, old, torch.ones(1, 4, dtype=F64), mask, 0.2)
    assert lp.item() == pytest.approx((-1.2 - 0.5 - 1.1 - 0.9) / 4)
    assert sp["clipfrac"].item() == 0.25
    # A < 0: a ratio below 1−ε is clipped, one above 1+ε is not
    ln, sn = core.policy_loss(new, old, -torch.ones(1, 4, dtype=F64), mask, 0.2)
    assert ln.item() == pytest.approx((1.5 + 0.8 + 1.1 + 0.9) / 4)
    assert sn["clipfrac"].item() == 0.25


@pytest.mark.parametrize("seed", SEEDS)
def test_value_loss_matches_token_loop(seed):
    _, B, T, L, mask, rnd = _batch(seed)
    old, ret = rnd(), rnd()
    v = (old + 0.5 * rnd()).requires_grad_(True)
    eps = 0.2
    loss, stats = core.value_loss(_pad_with_garbage(v, mask), old, ret, mask, eps)
    loss.backward()
    n = sum(L)
    terms, clip, grad = [], [], [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(L[b]):
            vt, o, r = v[b, t].item(), old[b, t].item(), ret[b, t].item()
            vc = o + min(max(vt - o, -eps), eps)
            l1, l2 = (vt - r) ** 2, (vc - r) ** 2
            terms.append(0.5 * max(l1, l2))
            clip.append(1.0 if l2 > l1 else 0.0)
            inside = -eps < vt - o < eps
            grad[b][t] = ((vt - r) if l1 >= l2 else ((vc - r) if inside else 0.0)) / n
    assert loss.item() == pytest.approx(sum(terms) / n, rel=1e-10)
    assert stats["vf_clipfrac"].item() == pytest.approx(sum(clip) / n, rel=1e-12)
    assert v.grad.tolist() == [pytest.approx(row, rel=1e-9, abs=1e-14) for row in grad]


def test_value_loss_hand_case():
    # V moved from 0 to 1 with ε = 0.2 and R = 2: unclipped (1−2)² = 1, clipped (0.2−2)² = 3.24 → ½·3.24
    one = torch.ones(1, 1, dtype=F64)
    loss, stats = core.value_loss(one, 0 * one, 2 * one, one, 0.2)
    assert loss.item() == pytest.approx(1.62) and stats["vf_clipfrac"].item() == 1.0
    # R = 0: unclipped 1 > clipped 0.04 → ½·1, no clipping counted
    loss, stats = core.value_loss(one, 0 * one, 0 * one, one, 0.2)
    assert loss.item() == pytest.approx(0.5) and stats["vf_clipfrac"].item() == 0.0


def _entropy_ref(row):
    finite = [z for z in row if z != float("-inf")]
    mx = max(finite)
    es = [math.exp(z - mx) for z in finite]
    s = sum(es)
    return -sum(e / s * math.log(e / s) for e in es if e > 0)


def test_entropy_from_logits_matches_loop():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 7, generator=g, dtype=F64) * 4
    z[0, 0, 0] = 300.0  # large logits: a naive exp would overflow
    got = core.entropy_from_logits(z)
    assert got.shape == (3, 5)
    for b in range(3):
        for t in range(5):
            assert got[b, t].item() == pytest.approx(_entropy_ref(z[b, t].tolist()), rel=1e-10, abs=1e-12)
    mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=F64)
    vals = [_entropy_ref(z[b, t].tolist()) for b in range(3) for t in range(5) if mask[b, t]]
    assert core.masked_entropy_mean(z, mask).item() == pytest.approx(sum(vals) / len(vals), rel=1e-10)
    assert core.entropy_from_logits(torch.zeros(1, 1, 6, dtype=F64)).item() == pytest.approx(math.log(6))


def test_entropy_with_filtered_vocabulary_is_finite_with_finite_gradient():
    z = torch.tensor([[[0.3, float("-inf"), -1.2, float("-inf"), 2.0]]], dtype=F64, requires_grad=True)
    h = core.entropy_from_logits(z)
    assert h.item() == pytest.approx(_entropy_ref(z[0, 0].tolist()), rel=1e-12)
    h.sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad[0, 0, 1].item() == 0.0


def test_half_precision_inputs_give_float32():
    x = torch.randn(2, 3).to(torch.bfloat16)
    m = torch.ones(2, 3, dtype=torch.bool)
    assert core.kl_per_token(x, x, "k3").dtype == torch.float32
    assert core.masked_whiten(x, m).dtype == torch.float32
    assert core.gae(x, x, m, 1.0, 0.95)[0].dtype == torch.float32
    assert core.shape_rewards(x[:, 0], x, x[:, 0], m, 0.1)[0].dtype == torch.float32
    assert core.policy_loss(x, x, x, m, 0.2)[0].dtype == torch.float32
    assert core.value_loss(x, x, x, m, 0.2)[0].dtype == torch.float32
    assert core.entropy_from_logits(torch.randn(2, 3, 5).half()).dtype == torch.float32
    assert core.variance_weights(torch.rand(3).half(), "raw").dtype == torch.float32


# ---------------------------------------------------------------------------- KL controllers


def test_fixed_controller_never_moves():
    from varpo.config import KLConfig

    ctl = core.make_kl_controller(KLConfig(beta=0.3))
    assert isinstance(ctl, core.FixedKLController)
    for kl in (0.0, 100.0, -5.0):
        ctl.update(kl, 64)
    assert ctl.value == 0.3
    other = core.FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.3


def test_adaptive_controller_matches_hand_computation():
    from varpo.config import KLConfig

    ctl = core.make_kl_controller(KLConfig(beta=0.1, controller="adaptive", target=6.0, horizon=1000))
    assert isinstance(ctl, core.AdaptiveKLController)
    beta = 0.1
    # (kl, n): error 0.5 → +0.2 (clipped), −0.1, −0.5 → −0.2 (clipped), 0 → unchanged
    for kl, n, err in [(9.0, 50, 0.2), (5.4, 100, -0.1), (3.0, 16, -0.2), (6.0, 30, 0.0)]:
        ctl.update(kl, n)
        beta = beta * (1 + err * n / 1000)
        assert ctl.value == pytest.approx(beta, rel=1e-14)
    assert ctl.value != 0.1
    # KL above target raises β, below lowers it
    up, down = core.AdaptiveKLController(1.0, 2.0, 10), core.AdaptiveKLController(1.0, 2.0, 10)
    up.update(2.2, 1)
    down.update(1.8, 1)
    assert up.value == pytest.approx(1.01) and down.value == pytest.approx(0.99)


def test_adaptive_controller_state_round_trip_and_errors():
    a = core.AdaptiveKLController(0.2, 4.0, 500)
    for kl in (1.0, 7.0, 3.3):
        a.update(kl, 8)
    b = core.AdaptiveKLController(0.2, 4.0, 500)
    b.load_state_dict(a.state_dict())
    assert b.value == a.value and a.state_dict() == {"value": a.value, "target": 4.0, "horizon": 500}
    for kl in (5.0, 0.5):  # the restored one continues exactly as the original
        a.update(kl, 8)
        b.update(kl, 8)
    assert b.value == a.value
    with pytest.raises(ValueError, match="non-finite"):
        a.update(float("nan"), 8)
    with pytest.raises(ValueError, match="target"):
        core.AdaptiveKLController(0.1, 0.0, 10)
    with pytest.raises(ValueError, match="beta"):
        core.FixedKLController(-0.1)


def test_vllm_backend_validates_and_names_bad_fields():
    from varpo.config import ConfigError, load_config
    from varpo.defaults import EMBEDDED

    cfg = load_config(EMBEDDED, ["generation.backend=vllm", "generation.vllm.importance_correction=tis"])
    assert cfg.generation.backend == "vllm" and cfg.generation.vllm.importance_correction == "tis"
    with pytest.raises(ConfigError, match=r"generation\.vllm\.importance_correction"):
        load_config(EMBEDDED, ["generation.vllm.importance_correction=always"])
    with pytest.raises(ConfigError, match=r"generation\.vllm\.gpu_memory_utilization"):
        load_config(EMBEDDED, ["generation.vllm.gpu_memory_utilization=1.5"])
    with pytest.raises(ConfigError, match=r"generation\.backend"):
        load_config(EMBEDDED, ["generation.backend=sglang"])


def _ragged_case(g, B, T, dtype=torch.float32):
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 4
    rollout = logp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.5
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    logp[mask == 0] = float("nan")  # padding may hold anything
    rollout[mask == 0] = float("inf")
    return logp.to(dtype), rollout.to(dtype), mask


@pytest.mark.parametrize("B,T,cap", [(3, 7, 2.0), (5, 1, 1.0), (4, 13, 0.5)])
def test_truncated_importance_weights_match_float64_loop(B, T, cap):
    g = torch.Generator().manual_seed(B * 100 + T)
    logp, rollout, mask = _ragged_case(g, B, T)
    got = core.truncated_importance_weights(logp, rollout, mask, cap)
    assert got.dtype == torch.float32
    for b in range(B):
        for t in range(T):
            want = min(math.exp(float(logp[b, t].double()) - float(rollout[b, t].double())), cap) if mask[b, t] else 0.0
            assert abs(float(got[b, t]) - want) <= 1e-6 * max(1.0, want)
    with pytest.raises(ValueError, match="cap"):
        core.truncated_importance_weights(logp, rollout, mask, 0.0)


def test_logprob_mismatch_matches_float64_loop():
    g = torch.Generator().manual_seed(5)
    logp, rollout, mask = _ragged_case(g, 6, 9, torch.float64)
    total, count, largest = core.logprob_mismatch(logp, rollout, mask)
    diffs = [abs(float(logp[b, t]) - float(rollout[b, t])) for b in range(6) for t in range(9) if mask[b, t]]
    assert count.item() == len(diffs)
    assert total.item() == pytest.approx(sum(diffs), rel=1e-12)
    assert largest.item() == pytest.approx(max(diffs), rel=1e-12)
    empty = core.logprob_mismatch(logp, rollout, torch.zeros_like(mask))
    assert [x.item() for x in empty] == [0.0, 0.0, 0.0]


def test_policy_loss_with_token_weights_matches_float64_loop():
    """c_t multiplies each token's clipped-surrogate term; the weights carry no gradient."""
    g = torch.Generator().manual_seed(9)
    B, T, eps = 4, 6, 0.2
    logp, old, mask = _ragged_case(g, B, T, torch.float64)
    logp = torch.where(mask.bool(), old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3, logp)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    w = torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    w.requires_grad_(True)
    x = logp.clone().requires_grad_(True)
    loss, _ = core.policy_loss(x, old, adv, mask, eps, token_weights=w)
    terms = []
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                r = math.exp(float(logp[b, t]) - float(old[b, t]))
                a = float(adv[b, t])
                terms.append(float(w.detach()[b, t]) * max(-a * r, -a * min(max(r, 1 - eps), 1 + eps)))
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-10)
    loss.backward()
    assert w.grad is None and torch.isfinite(x.grad).all()
    unweighted, _ = core.policy_loss(logp, old, adv, mask, eps)
    ones, _ = core.policy_loss(logp, old, adv, mask, eps, token_weights=torch.ones(B, T, dtype=torch.float64))
    assert ones.item() == pytest.approx(unweighted.item(), rel=1e-12)


# ---------------------------------------------------------------------------- explained variance


@pytest.mark.parametrize("seed", SEEDS)
def test_explained_variance_matches_loop(seed):
    import statistics

    g, B, T, L, mask, rnd = _batch(seed)
    returns, values = rnd(), rnd()
    values = torch.where(torch.rand(B, T, generator=g, dtype=F64) < 0.5, returns + 0.1 * values, values)
    got = core.explained_variance(_pad_with_garbage(values, mask), _pad_with_garbage(returns, mask), mask)
    R, V = _real(returns, L), _real(values, L)
    want = 1 - statistics.variance([r - v for r, v in zip(R, V)]) / statistics.variance(R)
    _close(got, want, rtol=1e-12, atol=1e-12)
    # float32 inputs compute in float32; a perfect critic explains everything, a constant nothing
    assert core.explained_variance(returns.float(), returns.float(), mask).item() == pytest.approx(1.0, abs=1e-6)
    assert core.explained_variance(torch.full_like(returns, 3.0), returns, mask).item() == pytest.approx(0.0, abs=1e-9)
    # the caller's variance (e.g. over all ranks) is the one used
    half = core.explained_variance(values, returns, mask, var_fn=lambda x, m: core.masked_var(x, m) * (2 if x is returns else 1))
    _close(half, 1 - statistics.variance([r - v for r, v in zip(R, V)]) / (2 * statistics.variance(R)), rtol=1e-12, atol=1e-12)


def test_explained_variance_is_nan_for_constant_returns():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    r = torch.full((2, 3), 2.0)
    assert math.isnan(core.explained_variance(torch.randn(2, 3), r, mask).item())
