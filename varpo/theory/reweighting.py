"""The bandit theory (Thm 2.7) on the task's real response distribution, by importance reweighting.

For each of P prompts, M responses y_1..y_M are sampled from π_ref; the empirical distribution
(mass 1/M each) stands in for π_ref(·|x). For each noise draw d (one draw of the reward, as one
reward model or one oracle noise seed), the KL-regularised optima are reweightings of those samples:
- vanilla          π(y_i) ∝ exp(r̂_d(y_i)/β)                      (max E_π r̂ − β KL(π‖π_ref))
- variance-aware   π(y_i) = (1/M) exp((r̂_d(y_i) − λ)/(β w_i) − 1)  (max E_π r̂ − β E_π[w log π/π_ref],
                   the σ²-weighted penalty varpo's PPO optimises, w = σ²; λ normalises)
Per draw, β of the variance-aware optimum is matched so that its mean KL over prompts equals the
vanilla optimum's. A draw's true return is the mean over prompts of Σ_i π(y_i) gold(y_i); over draws
come the variance of the true return per method, their ratio, the risk (return below the
reference's, the unweighted mean gold) and the effective sample size 1/Σ π(y_i)² (how many samples
the estimate rests on; the sample KL cannot exceed log M).

All arrays are float64: r_hat [D, P, M], w [P, M] (or broadcastable), gold [P, M].
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, softmax


def vanilla_reweighting(r_hat: np.ndarray, beta) -> np.ndarray:
    """[D, P, M] masses ∝ exp(r̂/β) over each prompt's samples; β a scalar or [D, 1, 1]."""
    return softmax(np.asarray(r_hat, dtype=np.float64) / beta, axis=-1)


def weighted_reweighting(r_hat: np.ndarray, w: np.ndarray, beta, lam0: np.ndarray | None = None,
                         tol: float = 1e-10, max_iters: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """([D, P, M] masses, λ [D, P, 1]) of the σ²-weighted KL optimum over each prompt's samples
    (uniform π_ref): π_i = (1/M) exp((r̂_i − λ)/(β w_i) − 1), λ by Newton's method on
    g(λ) = log Σ_i π_i (convex, decreasing), as varpo.theory.softmax.weighted_kl_policy solves it,
    here with one β per draw and a warm start `lam0` (a nearby β's λ) so that a β search costs a
    few Newton steps per β."""
    r = np.asarray(r_hat, dtype=np.float64)
    c = np.asarray(beta, dtype=np.float64) * np.asarray(w, dtype=np.float64)
    lp = -np.log(r.shape[-1])
    lam = np.max(r - c * (1.0 - lp), axis=-1, keepdims=True) if lam0 is None else lam0
    for _ in range(max_iters):
        logits = lp + (r - lam) / c - 1.0
        g = logsumexp(logits, axis=-1, keepdims=True)
        p = np.exp(logits - g)
        if np.all(np.abs(g) < tol):
            break
        lam = lam + g / np.sum(p / c, axis=-1, keepdims=True)
    return p, lam


def sample_kl(pi: np.ndarray) -> np.ndarray:
    """KL(π ‖ uniform) over the last axis: Σ π log(M π), 0·log 0 = 0."""
    m = pi.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pi > 0, pi * np.log(m * pi), 0.0).sum(-1)


def ess(pi: np.ndarray) -> np.ndarray:
    """Kish's effective sample size 1/Σ π² over the last axis."""
    return 1.0 / np.square(pi).sum(-1)


def match_weighted_beta(r_hat: np.ndarray, w: np.ndarray, target_kl: np.ndarray, beta0: float,
                        span: float = 6.0, iters: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per draw d, the β at which the weighted optimum's KL (mean over prompts) equals target_kl[d]:
    bisection in log β over log β0 ± span, all draws at once; returns (β, matched, masses at β).
    The weighted penalty is not a divergence (its KL does not fall to 0 as β grows), so a target
    below the floor cannot be met: then matched[d] is False and β is the bracket's end nearest to it."""
    d = r_hat.shape[0]
    lo, hi = np.full(d, np.log(beta0) - span), np.full(d, np.log(beta0) + span)
    state = {"lam": None}

    def kl_at(log_beta):
        pi, state["lam"] = weighted_reweighting(r_hat, w, np.exp(log_beta)[:, None, None], state["lam"])
        return sample_kl(pi).mean(-1), pi

    kl_hi, _ = kl_at(hi)  # KL falls as β rises
    kl_lo, _ = kl_at(lo)
    matched = (kl_lo >= target_kl) & (kl_hi <= target_kl)
    for _ in range(iters):
        mid = (lo + hi) / 2
        above = kl_at(mid)[0] > target_kl
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    log_beta = np.where(matched, (lo + hi) / 2, np.where(kl_hi > target_kl, hi, lo))
    return np.exp(log_beta), matched, kl_at(log_beta)[1]


def predict(gold: np.ndarray, r_hat: np.ndarray, w: np.ndarray, betas, sigma2: np.ndarray | None = None) -> dict:
    """For every vanilla β: the vanilla optimum per draw, the weighted optimum at matched KL per
    draw, and over draws their true returns' mean, variance, ratio (vanilla / weighted), risk, KL,
    ESS (median over draws and prompts, and the 5% quantile), and the share of the policy's mass
    on the reference's top-σ² decile (`sigma2` [P, M] gives it; default w)."""
    gold = np.asarray(gold, dtype=np.float64)
    s2 = np.asarray(w if sigma2 is None else sigma2, dtype=np.float64)
    # w's scale only rescales β; normalised to mean 1 on the reference samples (as batch_mean does
    # on a batch) the matched β stays near vanilla's and the search bracket can be narrow
    w = np.asarray(w, dtype=np.float64) / float(np.mean(w))
    top = s2 >= np.quantile(s2, 0.9)
    ref_return = float(gold.mean())
    points = []
    for beta in betas:
        pv = vanilla_reweighting(r_hat, beta)
        kl_v = sample_kl(pv).mean(-1)
        b_va, matched, pw = match_weighted_beta(r_hat, w, kl_v, beta)
        kl_w = sample_kl(pw).mean(-1)
        point = {"beta": float(beta), "beta_va_median": float(np.median(b_va)), "kl_matched_share": float(matched.mean())}
        for name, pi, kl in (("vanilla", pv, kl_v), ("variance_aware", pw, kl_w)):
            ret = (pi * gold).sum(-1).mean(-1)  # [D]
            e = ess(pi)
            point[name] = {"kl": float(kl.mean()), "return_mean": float(ret.mean()), "return_var": float(ret.var(ddof=1)),
                           "risk": float(np.mean(ret < ref_return)), "ess_median": float(np.median(e)),
                           "ess_p5": float(np.quantile(e, 0.05)), "top_sigma2_mass": float((pi * top).sum(-1).mean()),
                           "returns": ret.tolist()}
        vv, vw = point["vanilla"]["return_var"], point["variance_aware"]["return_var"]
        point["var_ratio"] = vv / vw if vw > 0 else None
        points.append(point)
    return {"reference_return": ref_return, "draws": int(r_hat.shape[0]), "prompts": int(gold.shape[0]),
            "samples_per_prompt": int(gold.shape[1]), "max_sample_kl": float(np.log(gold.shape[1])), "points": points}
