"""The bandit illustration (paper Section 2, Figs. 3–4), built from `linear` and `softmax`.

`run_bandit` draws r̂ ~ N(r*, Σ) and reports
- Thm 2.4: closed-form risks of the linear policies vs their Monte Carlo estimate (binomial s.e.);
- Thm 2.7: the KL-regularised policies' true returns ⟨π, r*⟩ over draws and their underperformance
  probability P(⟨π, r*⟩ < ⟨π_ref, r*⟩), π_ref uniform;
- Fig. 4: the same comparison with per-arm variances drawn from a narrow and from a wide interval,
  repeated, to show that the gain grows with the spread of the variances.

β of the variance-aware policies. With σ²-weighted regularisation β no longer means the same thing
(the weighted penalty scales with σ²), so comparing at equal β compares policies that move by
different amounts. As the paper did for PPO, the default rule `kl` picks, for each variance-aware
policy, the β at which its mean KL(π‖π_ref) over the draws equals the vanilla policy's (solved by
Brent's method on log β). Rule `mean` uses β / mean(σ²), i.e. weights σ²/mean(σ²) (what varpo's
PPO does with `ppo.variance.weighting=batch_mean`), which makes both policies identical when σ² is
constant. An explicit `beta_va` overrides either rule.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from scipy.optimize import brentq

from ..evaluation.stats import wilson_interval
from .linear import closed_form_risks, monte_carlo_risks, sample_estimates
from .softmax import kl_divergence, sharpe_policy, vanilla_policy, weighted_kl_policy

BetaRule = Literal["kl", "mean"]
VA_POLICIES = ("variance_aware", "sharpe")


def check_inputs(true_rewards, variances) -> tuple[np.ndarray, np.ndarray]:
    """float64 vectors of equal length ≥ 2, finite, variances > 0 (ValueError naming the input)."""
    r = np.asarray(true_rewards, dtype=np.float64)
    s2 = np.asarray(variances, dtype=np.float64)
    if r.ndim != 1 or r.size < 2:
        raise ValueError(f"true_rewards: expected at least 2 arms, got {r.size}")
    if s2.shape != r.shape:
        raise ValueError(f"variances: expected {r.size} values (one per arm, like true_rewards), got {s2.size}")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"true_rewards: every value must be finite, got {r.tolist()}")
    if not np.all(np.isfinite(s2)) or np.any(s2 <= 0):
        raise ValueError(f"variances: every value must be finite and > 0, got {s2.tolist()}")
    if not np.any(r):
        raise ValueError("true_rewards: all zero — every policy step has zero true improvement")
    return r, s2


def _policy_fn(name: str, variances: np.ndarray, pi_ref: np.ndarray) -> Callable[[np.ndarray, float], np.ndarray]:
    if name == "vanilla":
        return lambda r_hat, beta: vanilla_policy(r_hat, pi_ref, beta)
    if name == "variance_aware":
        return lambda r_hat, beta: weighted_kl_policy(r_hat, variances, pi_ref, beta)
    if name == "sharpe":
        return lambda r_hat, beta: sharpe_policy(r_hat, variances, pi_ref, beta)
    raise ValueError(f"unknown policy {name!r}")


def match_beta(policy: Callable[[np.ndarray, float], np.ndarray], r_hat: np.ndarray, pi_ref: np.ndarray,
               target_kl: float, beta0: float, span: float = 25.0) -> tuple[float, bool]:
    """(β, matched): the β at which mean KL(policy(r̂, β)‖π_ref) over the rows of r_hat equals
    target_kl, searched in log β ∈ log β0 ± span. The σ²-weighted policy's KL does not fall to 0 as
    β grows (its penalty is not minimised at π_ref), so a target below its floor cannot be met:
    then the largest β (the policy closest to π_ref in KL) is returned with matched=False."""
    def gap(log_beta: float) -> float:
        return float(kl_divergence(policy(r_hat, np.exp(log_beta)), pi_ref).mean()) - target_kl

    lo, hi = np.log(beta0) - span, np.log(beta0) + span
    if gap(hi) > 0:
        return float(np.exp(hi)), False
    if gap(lo) < 0:
        return float(np.exp(lo)), False
    return float(np.exp(brentq(gap, lo, hi, xtol=1e-8))), True


def _return_summary(ret: np.ndarray, ref_return: float, kl: np.ndarray) -> dict:
    n = ret.size
    bad = int(np.sum(ret < ref_return))
    p = bad / n
    lo, hi = wilson_interval(bad, n)
    q = np.quantile(ret, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    return {
        "return_mean": float(ret.mean()), "return_std": float(ret.std(ddof=1)), "return_var": float(ret.var(ddof=1)),
        "return_quantiles": dict(zip(["q01", "q05", "q25", "q50", "q75", "q95", "q99"], map(float, q))),
        "mean_kl": float(kl.mean()),
        "underperformance": p, "underperformance_se": float(np.sqrt(p * (1 - p) / n)),
        "underperformance_ci95": [lo, hi], "n": n,
    }


def kl_regularised(r_star: np.ndarray, variances: np.ndarray, r_hat: np.ndarray, beta: float,
                   beta_va: float | None = None, rule: BetaRule = "kl", match_rows: int = 20_000,
                   keep_returns: bool = False) -> dict:
    """Thm 2.7 policies for each row of r_hat, their true returns and underperformance vs π_ref."""
    k = r_star.size
    pi_ref = np.full(k, 1.0 / k)
    ref_return = float(pi_ref @ r_star)
    out: dict = {"pi_ref": pi_ref.tolist(), "reference_return": ref_return, "beta": beta,
                 "beta_rule": "explicit" if beta_va is not None else rule, "policies": {}}
    returns = {}
    target = None
    for name in ("vanilla", *VA_POLICIES):
        fn = _policy_fn(name, variances, pi_ref)
        if name == "vanilla":
            b = beta
        elif beta_va is not None:
            b = beta_va
        elif rule == "mean":
            b = beta / float(variances.mean())
        else:
            b, matched = match_beta(fn, r_hat[:match_rows], pi_ref, target, beta / float(variances.mean()))
        pi = fn(r_hat, b)
        kl = kl_divergence(pi, pi_ref)
        if name == "vanilla":
            target = float(kl[:match_rows].mean())
        ret = pi @ r_star
        returns[name] = ret
        out["policies"][name] = {"beta": b, **_return_summary(ret, ref_return, kl)}
        if name != "vanilla" and beta_va is None and rule == "kl":
            out["policies"][name]["kl_matched"] = matched
    if keep_returns:
        out["_returns"] = returns
    return out


def heterogeneity(r_star: np.ndarray, intervals: dict[str, tuple[float, float]], repeats: int, draws: int,
                  beta: float, rule: BetaRule, rng: np.random.Generator) -> dict:
    """Fig. 4: for each named interval [lo, hi], `repeats` times draw σ²_k ~ U[lo, hi] per arm, then
    compare the policies (closed-form linear risks; KL-regularised returns over `draws` estimates).
    Returns per setting the averages over repeats (`*_kl_matched`: the fraction of repeats in which
    the KL match succeeded), `*_variance_ratio` = mean within-repeat return variance of the vanilla
    policy over the variance-aware one's (how much sharper it is), the gains vanilla −
    variance-aware, the ratio of the pooled variances, and the pooled returns (for the plot)."""
    out: dict = {"intervals": {k: list(v) for k, v in intervals.items()}, "repeats": repeats,
                 "draws_per_repeat": draws, "beta": beta, "beta_rule": rule, "settings": {}}
    pooled: dict = {}
    for name, (lo, hi) in intervals.items():
        rows = []
        pooled[name] = {p: [] for p in ("vanilla", *VA_POLICIES)}
        for _ in range(repeats):
            s2 = rng.uniform(lo, hi, size=r_star.size)
            cf = closed_form_risks(r_star, s2)
            kr = kl_regularised(r_star, s2, sample_estimates(r_star, s2, draws, rng), beta, rule=rule,
                                match_rows=min(draws, 1000), keep_returns=True)
            for p, ret in kr.pop("_returns").items():
                pooled[name][p].append(ret)
            rows.append({
                "linear_risk_vanilla": cf["vanilla"], "linear_risk_variance_aware": cf["variance_aware"],
                **{f"{p}_{m}": kr["policies"][p][m] for p in ("vanilla", *VA_POLICIES)
                   for m in ("return_mean", "return_var", "underperformance")},
                **{f"{p}_kl_matched": float(kr["policies"][p].get("kl_matched", True)) for p in VA_POLICIES},
                "sd_spread": float(np.std(np.sqrt(s2), ddof=1)),
            })
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        setting = {"mean_over_repeats": mean,
                   "linear_risk_gain": mean["linear_risk_vanilla"] - mean["linear_risk_variance_aware"]}
        for p in VA_POLICIES:
            v = np.concatenate(pooled[name]["vanilla"])
            a = np.concatenate(pooled[name][p])
            setting[f"{p}_underperformance_gain"] = mean["vanilla_underperformance"] - mean[f"{p}_underperformance"]
            setting[f"{p}_variance_ratio"] = mean["vanilla_return_var"] / mean[f"{p}_return_var"]
            setting[f"{p}_pooled_variance_ratio"] = float(v.var(ddof=1) / a.var(ddof=1))
        out["settings"][name] = setting
        pooled[name] = {p: np.concatenate(v) for p, v in pooled[name].items()}
    if {"narrow", "wide"} <= set(out["settings"]):
        n, w = out["settings"]["narrow"], out["settings"]["wide"]
        out["wide_vs_narrow"] = {
            "linear_risk_gain": [n["linear_risk_gain"], w["linear_risk_gain"]],
            **{f"{p}_variance_ratio": [n[f"{p}_variance_ratio"], w[f"{p}_variance_ratio"]] for p in VA_POLICIES},
            **{f"{p}_underperformance_gain": [n[f"{p}_underperformance_gain"], w[f"{p}_underperformance_gain"]]
               for p in VA_POLICIES},
        }
    out["_pooled"] = pooled
    return out


def run_bandit(true_rewards, variances, n_draws: int = 100_000, seed: int = 0, beta: float = 1.0,
               beta_va: float | None = None, beta_rule: BetaRule = "kl", eps: float = 1.0,
               narrow: tuple[float, float] = (0.5, 1.0), wide: tuple[float, float] = (0.05, 2.0),
               repeats: int = 50, draws_per_repeat: int = 2_000) -> dict:
    """Everything `varpo theory bandit` reports. Keys starting with '_' hold arrays for the plots."""
    r, s2 = check_inputs(true_rewards, variances)
    if n_draws < 1:
        raise ValueError(f"n_draws: must be ≥ 1, got {n_draws}")
    if beta <= 0 or not np.isfinite(beta):
        raise ValueError(f"beta: must be finite and > 0, got {beta}")
    if beta_va is not None and (beta_va <= 0 or not np.isfinite(beta_va)):
        raise ValueError(f"beta_va: must be finite and > 0, got {beta_va}")
    for name, (lo, hi) in (("narrow", narrow), ("wide", wide)):
        if not (0 < lo <= hi and np.isfinite(hi)):
            raise ValueError(f"{name}: expected an interval 0 < LO ≤ HI, got [{lo}, {hi}]")
    rng = np.random.default_rng(seed)
    cf = closed_form_risks(r, s2)
    mc = monte_carlo_risks(r, s2, n_draws, rng, eps=eps)
    # the agreement check uses the s.e. at the closed-form p (the Monte Carlo s.e. is 0 at 0 counts)
    se_cf = {k: float(np.sqrt(p * (1 - p) / n_draws)) for k, p in cf.items()}
    r_hat = sample_estimates(r, s2, n_draws, rng)
    kl = kl_regularised(r, s2, r_hat, beta, beta_va, beta_rule, keep_returns=True)
    het = heterogeneity(r, {"narrow": narrow, "wide": wide}, repeats, draws_per_repeat, beta, beta_rule, rng)
    return {
        "true_rewards": r.tolist(), "variances": s2.tolist(), "n_draws": n_draws, "seed": seed, "eps": eps,
        "eps_variance_aware": eps * float(np.sqrt(s2.min())),
        "risk_closed_form": cf,
        "risk_monte_carlo": {k: v["risk"] for k, v in mc.items()},
        "risk_monte_carlo_se": {k: v["se"] for k, v in mc.items()},
        "risk_monte_carlo_count": {k: v["count"] for k, v in mc.items()},
        "risk_agreement_z": {k: (mc[k]["risk"] - cf[k]) / se_cf[k] if se_cf[k] > 0 else 0.0 for k in cf},
        "illustration": illustration(r, s2, r_hat),
        "kl_regularised": kl,
        "heterogeneity": het,
    }


def illustration(r_star: np.ndarray, variances: np.ndarray, r_hat: np.ndarray) -> dict:
    """The Fig. 3 (left) picture: a draw in which the widest-interval arm looks best, its estimate
    more than one σ above its true value — the typical such draw (median estimate among them)."""
    wide = int(np.argmax(variances))
    sd = np.sqrt(variances)
    hit = (np.argmax(r_hat, axis=1) == wide) & (r_hat[:, wide] > r_star[wide] + sd[wide])
    if int(np.argmax(r_star)) == wide:
        note = "the widest-interval arm is also truly best: its high estimates are not spurious"
    else:
        note = "the widest-interval arm's estimate is spuriously the highest"
    if hit.any():
        idx = np.flatnonzero(hit)
        i = int(idx[np.argsort(r_hat[idx, wide])[idx.size // 2]])
    else:
        i = 0
    return {"draw": i, "r_hat": r_hat[i].tolist(), "sd": sd.tolist(), "widest_arm": wide,
            "spurious_fraction": float(hit.mean()), "note": note}
