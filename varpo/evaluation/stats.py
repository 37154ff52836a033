"""Statistics of policy populations (paper Tables 1–4), with scipy.

Input: one number per policy — its mean true reward over the evaluation prompts — grouped by
method: {"reference": [...], "vanilla": [...], "variance_aware": [...], ...}. "reference" holds the
sampling runs of π_ref.

Conventions (all stated in the outputs too):
- var is the sample variance with ddof=1 (unbiased); every method needs n ≥ 2.
- F-test of variances, a vs b: F = s²_a / s²_b with (n_a − 1, n_b − 1) degrees of freedom;
  f_crit = F_0.95(n_a − 1, n_b − 1); f_pvalue is one-sided, H1: σ²_a > σ²_b (P(F' ≥ F)).
- Welch's t-test of means: t = (m_a − m_b) / sqrt(s²_a/n_a + s²_b/n_b), Welch–Satterthwaite df;
  welch_crit = t_0.975(df) and welch_pvalue are two-sided.
- risk (the paper's P(R(π) < R(π_ref))): the fraction of a method's policies whose reward is below
  R(π_ref), estimated by the mean reward of the reference runs; Wilson interval at 95%. The
  reference mean is treated as known (its own sampling error is not propagated). `risk_pairwise`
  is the alternative P(R_π < R_ref) over all (policy, reference run) pairs, ties counting ½.
- Two-proportion z-test of the risks, a vs b: pooled p̂ = (k_a + k_b)/(n_a + n_b),
  z = (p̂_a − p̂_b) / sqrt(p̂(1 − p̂)(1/n_a + 1/n_b)); risk_pvalue two-sided, risk_pvalue_greater
  one-sided with H1: risk_a > risk_b (z = 0, p = 1 when both proportions are 0 or both 1).

Tests that fit a population whose rewards are not normal (a policy either stays near the data or
runs off its support: a bimodal outcome), all one-sided in the paper's direction — a, the baseline
(vanilla), is the more variable and riskier method:
- Brown–Forsythe: Levene's test centred on the median (scipy.stats.levene(center="median")); for two
  groups its W is t² of Student's t-test on the absolute deviations from each group's median, whose
  one-sided p (H1: a's deviations are larger) is brown_forsythe_pvalue.
- variance_ratio_ci: bootstrap BCa interval (scipy.stats.bootstrap) of var(a)/var(b), resampling
  seed pairs jointly when the methods share seeds.
- run-away: a policy whose reward is below the reference mean by more than `runaway_margin`; the
  rates are compared by Fisher's exact test (H1: a's rate is larger), as are the risks (risk_fisher).
- paired (the methods share training seeds): the exact McNemar test on run-aways and on risk (a
  binomial test of the discordant pairs, H1: more pairs where only a is below), and Wilcoxon's
  signed-rank test of the per-seed rewards (H1: b's reward is higher).
- normality: Shapiro–Wilk per method; the F-test's p is exact only for normal rewards, so
  f_test_reliable is False when any method's Shapiro p is below 0.05.
- power: per test, the seeds per method at which it would reject at α = 0.05 with probability 0.8
  if the populations were as observed (resampled from the observed policies, pairs jointly).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import stats as st

CONFIDENCE = 0.95


class PopulationError(ValueError):
    """A population folder or row that cannot be read; the message names the file and field."""


def _num(x: float) -> float | None:
    """JSON-safe float: non-finite values (an F with a zero denominator) become None."""
    x = float(x)
    return x if math.isfinite(x) else None


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> list[float]:
    """Wilson score interval [lo, hi] for k successes in n trials."""
    ci = st.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


def f_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """One-sided F-test of H1: var(a) > var(b) (ddof=1)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    dfa, dfb = a.size - 1, b.size - 1
    va, vb = a.var(ddof=1), b.var(ddof=1)
    f = va / vb if vb > 0 else (math.inf if va > 0 else math.nan)
    return {"f_stat": _num(f), "f_crit": float(st.f.ppf(confidence, dfa, dfb)),
            "f_pvalue": _num(st.f.sf(f, dfa, dfb)) if math.isfinite(f) else (0.0 if f == math.inf else None),
            "f_df": [dfa, dfb], "variance_ratio": _num(f)}


def welch_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Welch's two-sided t-test of equal means."""
    res = st.ttest_ind(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), equal_var=False)
    df = float(res.df)
    return {"welch_t": _num(res.statistic), "welch_df": _num(df),
            "welch_crit": _num(st.t.ppf(1 - (1 - confidence) / 2, df)) if math.isfinite(df) else None,
            "welch_pvalue": _num(res.pvalue)}


def two_proportion_test(k_a: int, n_a: int, k_b: int, n_b: int) -> dict:
    """Pooled two-proportion z-test of p_a = p_b."""
    p_a, p_b = k_a / n_a, k_b / n_b
    p = (k_a + k_b) / (n_a + n_b)
    se = math.sqrt(p * (1 - p) * (1 / n_a + 1 / n_b))
    z = (p_a - p_b) / se if se > 0 else 0.0
    return {"risk_diff": p_a - p_b, "risk_z": z, "risk_pvalue": float(2 * st.norm.sf(abs(z))),
            "risk_pvalue_greater": float(st.norm.sf(z)) if se > 0 else 1.0}


def brown_forsythe(a: Sequence[float], b: Sequence[float]) -> dict:
    """Brown–Forsythe test of H1: var(a) > var(b) (the two-sided W and p from scipy's levene)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    za, zb = np.abs(a - np.median(a)), np.abs(b - np.median(b))
    two = st.levene(a, b, center="median")
    one = st.ttest_ind(za, zb, equal_var=True, alternative="greater")
    return {"brown_forsythe_w": _num(two.statistic), "brown_forsythe_t": _num(one.statistic),
            "brown_forsythe_pvalue": _num(one.pvalue), "brown_forsythe_pvalue_two_sided": _num(two.pvalue)}


def _var_ratio(x, y, axis=-1):
    return np.var(x, axis=axis, ddof=1) / np.var(y, axis=axis, ddof=1)


def variance_ratio_ci(a: Sequence[float], b: Sequence[float], paired: bool = False, confidence: float = CONFIDENCE,
                      n_resamples: int = 9999, seed: int = 0) -> list[float] | None:
    """Bootstrap BCa interval of var(a)/var(b); paired resamples (a_i, b_i) jointly. None when a
    resample can have zero variance in b (too few distinct values) or the interval is not finite."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.unique(b).size < 3 or np.unique(a).size < 2:
        return None
    import warnings

    with warnings.catch_warnings():  # a degenerate jackknife warns and gives NaN, caught below
        warnings.simplefilter("ignore")
        res = st.bootstrap((a, b), _var_ratio, paired=paired, vectorized=True, method="BCa",
                           confidence_level=confidence, n_resamples=n_resamples, rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return [lo, hi] if math.isfinite(lo) and math.isfinite(hi) else None


def fisher_greater(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Fisher's exact test of H1: the rate k_a/n_a exceeds k_b/n_b (one-sided p)."""
    return float(st.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]], alternative="greater").pvalue)


def mcnemar_exact(x_a: Sequence[bool], x_b: Sequence[bool]) -> dict:
    """Exact McNemar test on paired binary outcomes, H1: pairs where only a has the outcome
    outnumber those where only b has it (a binomial test of the discordant pairs at ½)."""
    x_a, x_b = np.asarray(x_a, dtype=bool), np.asarray(x_b, dtype=bool)
    only_a, only_b = int(np.sum(x_a & ~x_b)), int(np.sum(~x_a & x_b))
    p = float(st.binomtest(only_a, only_a + only_b, 0.5, alternative="greater").pvalue) if only_a + only_b else 1.0
    return {"only_a": only_a, "only_b": only_b, "both": int(np.sum(x_a & x_b)), "pvalue": p}


def wilcoxon_greater(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Wilcoxon's signed-rank test on the pairs, H1: b − a is shifted above 0; None if every pair ties."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if not np.any(d != 0):
        return None
    return _num(st.wilcoxon(d, alternative="greater").pvalue)


def shapiro_pvalue(x: Sequence[float]) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    return _num(st.shapiro(x).pvalue) if x.size >= 3 and np.ptp(x) > 0 else None


# ---------------------------------------------------------------------------------------------
# the tests a population can declare primary (evaluation.primary_test), as p-value functions of
# (a, b, context), one-sided in the paper's direction unless named otherwise


def _runaway(x: np.ndarray, ctx: dict) -> np.ndarray:
    return x < ctx["reference_mean"] - ctx["runaway_margin"]


def _below(x: np.ndarray, ctx: dict) -> np.ndarray:
    return x < ctx["reference_mean"]


# Each test as a p-value function of rows of populations: a [S, n_a], b [S, n_b] → p [S] (S
# populations at once, so a power estimate over hundreds of resampled populations is one call).
# Every one is scipy's own test; tests/stats checks each against the scalar scipy call.


def _p_brown_forsythe(a, b, ctx):
    za, zb = np.abs(a - np.median(a, 1, keepdims=True)), np.abs(b - np.median(b, 1, keepdims=True))
    return st.ttest_ind(za, zb, axis=1, equal_var=True, alternative="greater").pvalue


def _p_f(a, b, ctx):
    return st.f.sf(np.var(a, 1, ddof=1) / np.var(b, 1, ddof=1), a.shape[1] - 1, b.shape[1] - 1)


def _p_welch(a, b, ctx):
    return st.ttest_ind(a, b, axis=1, equal_var=False).pvalue


def _fisher_rows(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Fisher's exact test, H1: rate(a) > rate(b), per row: P(X ≥ k_a) for X hypergeometric (the
    one-sided p scipy.stats.fisher_exact(alternative='greater') computes)."""
    ka, kb = xa.sum(1), xb.sum(1)
    return st.hypergeom.sf(ka - 1, xa.shape[1] + xb.shape[1], ka + kb, xa.shape[1])


def _mcnemar_rows(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Exact McNemar per row: binomial test of the discordant pairs at ½, H1: only-a pairs outnumber only-b."""
    only_a, only_b = (xa & ~xb).sum(1), (~xa & xb).sum(1)
    return st.binom.sf(only_a - 1, only_a + only_b, 0.5)


def _p_wilcoxon(a, b, ctx):
    d = b - a
    out = np.ones(d.shape[0])
    ok = np.any(d != 0, axis=1)  # every pair tied: no evidence either way
    if ok.any():
        out[ok] = st.wilcoxon(d[ok], axis=1, alternative="greater", method=ctx.get("wilcoxon_method", "auto")).pvalue
    return out


TESTS = {  # name: (needs seed-paired populations, p-value function)
    "brown_forsythe": (False, _p_brown_forsythe),
    "f_test": (False, _p_f),
    "welch": (False, _p_welch),
    "runaway_fisher": (False, lambda a, b, ctx: _fisher_rows(_runaway(a, ctx), _runaway(b, ctx))),
    "risk_fisher": (False, lambda a, b, ctx: _fisher_rows(_below(a, ctx), _below(b, ctx))),
    "mcnemar_runaway": (True, lambda a, b, ctx: _mcnemar_rows(_runaway(a, ctx), _runaway(b, ctx))),
    "mcnemar_risk": (True, lambda a, b, ctx: _mcnemar_rows(_below(a, ctx), _below(b, ctx))),
    "wilcoxon": (True, _p_wilcoxon),
}


def pvalue_of(name: str, a: Sequence[float], b: Sequence[float], ctx: dict | None = None) -> float | None:
    """One population's p-value of a TESTS entry."""
    a2, b2 = np.asarray(a, dtype=np.float64)[None], np.asarray(b, dtype=np.float64)[None]
    return _num(TESTS[name][1](a2, b2, ctx or {})[0])


ALTERNATIVE = {
    "brown_forsythe": "one-sided, H1: var(a) > var(b)", "f_test": "one-sided, H1: var(a) > var(b) (normal theory)",
    "welch": "two-sided, H1: mean(a) != mean(b)", "runaway_fisher": "one-sided, H1: run-away rate(a) > rate(b)",
    "risk_fisher": "one-sided, H1: risk(a) > risk(b)",
    "mcnemar_runaway": "one-sided, H1: more seeds where only a runs away than where only b does",
    "mcnemar_risk": "one-sided, H1: more seeds where only a is below the reference than where only b is",
    "wilcoxon": "one-sided, H1: reward(b) - reward(a) per seed is shifted above 0",
}


def power_analysis(a: np.ndarray, b: np.ndarray, ctx: dict, paired: bool, tests: Sequence[str] | None = None,
                   alpha: float = 0.05, target: float = 0.8, sims: int = 400, n_max: int = 2000,
                   seed: int = 0) -> dict:
    """Per test: its power at the observed n and the seeds per method it needs for `target` power,
    if the methods' rewards were distributed as observed (each draw resamples n policies per
    method from the observed ones, pairs jointly when `paired`; the same draws for every n).
    n_for_target None: not reached by n_max (or the observed effect is not in H1's direction)."""
    rng = np.random.default_rng(seed)
    u_a, u_b = rng.random((sims, n_max)), rng.random((sims, n_max))
    # resampled pairs tie often; scipy's exact Wilcoxon then runs a permutation test per population,
    # far too slow for hundreds of them: the normal approximation is enough for a power estimate
    ctx = {**ctx, "wilcoxon_method": "asymptotic"}

    def power(name: str, n: int) -> float:
        ia = (u_a[:, :n] * a.size).astype(int)
        ib = ia if paired else (u_b[:, :n] * b.size).astype(int)
        with np.errstate(all="ignore"):
            p = TESTS[name][1](a[ia], b[ib], ctx)
        return float(np.mean(np.nan_to_num(p, nan=1.0) < alpha))

    out = {}
    for name in tests or [t for t, (needs_pairs, _) in TESTS.items() if paired or not needs_pairs]:
        if TESTS[name][0] and not paired:
            continue
        n_obs = min(a.size, b.size)
        at_n = power(name, n_obs)
        lo, hi = 2, None
        probe = max(n_obs, 4)
        while probe <= n_max:  # double until reached, then bisect
            if power(name, probe) >= target:
                hi = probe
                break
            lo, probe = probe, probe * 2
        if hi is None and power(name, n_max) >= target:
            hi = n_max
        while hi is not None and hi - lo > max(1, hi // 50):  # within 2%
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if power(name, mid) >= target else (mid, hi)
        out[name] = {"power_at_n": at_n, "n": n_obs, f"n_for_power_{target:g}": hi}
    return out


def power_against_ratio(a: np.ndarray, b: np.ndarray, ratio: float = 2.5, alpha: float = 0.05, sims: int = 400,
                        seed: int = 0) -> dict:
    """Power at the observed n of the variance tests against a true ratio var(a)/var(b) = `ratio`:
    the F-test in closed form (normal theory), Brown–Forsythe by simulation from the observed shape
    (both methods' median-centred rewards pooled, a's draws scaled by √ratio)."""
    n_a, n_b = a.size, b.size
    f_power = float(st.f.sf(st.f.ppf(1 - alpha, n_a - 1, n_b - 1) / ratio, n_a - 1, n_b - 1))
    pool = np.concatenate([a - np.median(a), b - np.median(b)])
    rng = np.random.default_rng(seed)
    x, y = rng.choice(pool, (sims, n_a)) * math.sqrt(ratio), rng.choice(pool, (sims, n_b))
    return {"ratio": ratio, "f_test": f_power, "brown_forsythe": float(np.mean(_p_brown_forsythe(x, y, {}) < alpha))}


def _check(rewards_by_method: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    out = {}
    for m, r in rewards_by_method.items():
        a = np.asarray(list(r), dtype=np.float64)
        if a.ndim != 1 or a.size < 2:
            raise ValueError(f"method {m!r}: need at least 2 policies for a variance (ddof=1), got {a.size}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"method {m!r}: rewards must be finite, got {a[~np.isfinite(a)].tolist()}")
        out[m] = a
    return out


def compare(a_name: str, a: np.ndarray, b_name: str, b: np.ndarray, per_method: dict,
            confidence: float = CONFIDENCE, ctx: dict | None = None, paired: bool = False,
            bootstrap_seed: int = 0) -> dict:
    """a vs b: F-test, Welch's t-test, Brown–Forsythe, the BCa interval of the variance ratio; with
    a reference (ctx: reference_mean, runaway_margin) the two-proportion z-test of the risks and
    Fisher's exact tests of risk and run-away rate; when `paired` (a[i], b[i] share a seed) the
    McNemar tests on risk and run-aways and Wilcoxon's signed-rank test on the rewards."""
    row = {"a": a_name, "b": b_name, "n_a": int(a.size), "n_b": int(b.size), **f_test(a, b, confidence),
           **welch_test(a, b, confidence), **brown_forsythe(a, b),
           "variance_ratio_ci": variance_ratio_ci(a, b, paired=paired, confidence=confidence, seed=bootstrap_seed),
           "paired": paired}
    ra, rb = per_method[a_name], per_method[b_name]
    if ra.get("risk") is not None and ctx is not None:
        row.update({"risk_a": ra["risk"], "risk_b": rb["risk"],
                    **two_proportion_test(ra["risk_count"], ra["n"], rb["risk_count"], rb["n"]),
                    "risk_fisher_pvalue": pvalue_of("risk_fisher", a, b, ctx),
                    "runaway_a": ra["runaway_rate"], "runaway_b": rb["runaway_rate"],
                    "runaway_fisher_pvalue": pvalue_of("runaway_fisher", a, b, ctx)})
        if paired:
            run, risk = mcnemar_exact(_runaway(a, ctx), _runaway(b, ctx)), mcnemar_exact(_below(a, ctx), _below(b, ctx))
            row.update({"mcnemar_runaway_pvalue": run["pvalue"], "mcnemar_runaway_discordant": [run["only_a"], run["only_b"]],
                        "mcnemar_risk_pvalue": risk["pvalue"], "mcnemar_risk_discordant": [risk["only_a"], risk["only_b"]]})
    if paired:
        row.update({"wilcoxon_pvalue": wilcoxon_greater(a, b),
                    "seed_correlation": _num(np.corrcoef(a, b)[0, 1]) if np.ptp(a) > 0 and np.ptp(b) > 0 else None})
    return row


def _test_result(name: str, c: dict) -> dict:
    """One declared test's line in stats.json's primary_test block."""
    key = {"brown_forsythe": "brown_forsythe_pvalue", "f_test": "f_pvalue", "welch": "welch_pvalue",
           "runaway_fisher": "runaway_fisher_pvalue", "risk_fisher": "risk_fisher_pvalue",
           "mcnemar_runaway": "mcnemar_runaway_pvalue", "mcnemar_risk": "mcnemar_risk_pvalue",
           "wilcoxon": "wilcoxon_pvalue"}[name]
    available = key in c
    out = {"test": name, "alternative": ALTERNATIVE[name], "a": c["a"], "b": c["b"], "n": [c["n_a"], c["n_b"]],
           "pvalue": c.get(key)}
    if not available:
        out["unavailable"] = ("needs policies that share seeds" if TESTS[name][0] and not c["paired"]
                              else "needs a reference population")
    return out


def _holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (several declared primary tests); None stays None."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m, out, running = len(idx), [None] * len(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def compute_stats(rewards_by_method: dict[str, list[float]], reference: str = "reference",
                  baseline: str = "vanilla", confidence: float = CONFIDENCE,
                  eval_noise: Mapping[str, float] | None = None, seeds: Mapping[str, Sequence[int]] | None = None,
                  shared_seeds: bool = True, primary_test: Sequence[str] = ("brown_forsythe",),
                  runaway_margin: float = 0.15, power_sims: int = 400, power_ratio: float = 2.5,
                  bootstrap_seed: int = 0) -> dict:
    """The paper's Tables 1–3 for a population: per method mean, var (ddof=1), n, risk (+ Wilson
    CI, pairwise risk), run-away rate, Shapiro p; `comparisons` for the baseline against every other
    policy method and for every other pair; top-level f_stat, f_crit, f_pvalue, welch_t, welch_pvalue
    (+ df, crit) for the primary pair (baseline vs variance_aware, else baseline vs the first other
    method), and for it `primary_test` (the declared tests first, Holm-adjusted when several),
    brown_forsythe_pvalue, variance_ratio_ci, runaway, paired, normality and power.
    Without a `reference` method, risks and run-aways are None. `eval_noise` ({method: mean
    reward_se²}, see `evaluation_noise`) adds eval_noise_var and var_excess = var − eval_noise_var
    per method: the spread that training, not re-sampling the evaluation, put between the policies.
    `seeds` ({method: seeds in the order of its rewards}) pairs two methods whose seed lists are
    equal, when `shared_seeds` (the rows say each seed trained and was rewarded alike in both)."""
    data = _check(rewards_by_method)
    if baseline not in data:
        raise ValueError(f"baseline method {baseline!r} not in the population (methods: {sorted(data)})")
    unknown = [t for t in primary_test if t not in TESTS]
    if unknown or not primary_test:
        raise ValueError(f"primary_test: {list(primary_test)}; expected one or more of {list(TESTS)}")
    ref = data.get(reference)
    ref_mean = float(ref.mean()) if ref is not None else None
    ctx = {"reference_mean": ref_mean, "runaway_margin": runaway_margin} if ref is not None else None
    per_method: dict = {}
    for m, a in data.items():
        row = {"mean": float(a.mean()), "var": float(a.var(ddof=1)), "std": float(a.std(ddof=1)), "n": int(a.size),
               "min": float(a.min()), "max": float(a.max()), "shapiro_pvalue": shapiro_pvalue(a)}
        noise = (eval_noise or {}).get(m)
        row.update({"eval_noise_var": noise, "var_excess": None if noise is None else row["var"] - noise})
        if ref is not None:
            k = int(np.sum(a < ref_mean))
            pair = float(np.mean((a[:, None] < ref[None, :]) + 0.5 * (a[:, None] == ref[None, :])))
            ran = int(np.sum(_runaway(a, ctx)))
            row.update({"risk": k / a.size, "risk_count": k, "risk_ci95": wilson_interval(k, a.size, confidence),
                        "risk_pairwise": pair, "runaway_count": ran, "runaway_rate": ran / a.size,
                        "runaway_ci95": wilson_interval(ran, a.size, confidence)})
        else:
            row.update({"risk": None, "risk_count": None, "risk_ci95": None, "risk_pairwise": None,
                        "runaway_count": None, "runaway_rate": None, "runaway_ci95": None})
        per_method[m] = row

    def is_paired(x: str, y: str) -> bool:
        return bool(shared_seeds and seeds and x in seeds and y in seeds and list(seeds[x]) == list(seeds[y]))

    others = [m for m in data if m not in (reference, baseline)]
    pairs = [(baseline, m) for m in others] + list(combinations(others, 2))
    comparisons = [compare(a, data[a], b, data[b], per_method, confidence, ctx, is_paired(a, b), bootstrap_seed)
                   for a, b in pairs]
    primary = next((c for c in comparisons if c["a"] == baseline and c["b"] == "variance_aware"),
                   comparisons[0] if comparisons else None)
    declared = None
    if primary is not None:
        results = [_test_result(t, primary) for t in primary_test]
        if len(results) > 1:
            for r, adj in zip(results, _holm([r["pvalue"] for r in results])):
                r["holm_pvalue"] = adj
        declared = {"declared": list(primary_test), "comparison": [primary["a"], primary["b"]], "results": results}
    top_keys = ("f_stat", "f_crit", "f_pvalue", "f_df", "welch_t", "welch_df", "welch_crit", "welch_pvalue",
                "risk_z", "risk_pvalue", "risk_pvalue_greater", "brown_forsythe_w", "brown_forsythe_pvalue",
                "brown_forsythe_pvalue_two_sided", "variance_ratio_ci")
    extra: dict = {}
    if primary is not None:
        a_name, b_name = primary["a"], primary["b"]
        a_arr, b_arr = data[a_name], data[b_name]
        normal = {m: per_method[m]["shapiro_pvalue"] for m in (a_name, b_name)}
        extra["normality"] = {"shapiro_pvalue": normal,
                              "f_test_reliable": all(p is not None and p >= 0.05 for p in normal.values())}
        if ctx is not None:
            extra["runaway"] = {"margin": runaway_margin, "threshold": ref_mean - runaway_margin,
                                "per_method": {m: {"rate": per_method[m]["runaway_rate"], "count": per_method[m]["runaway_count"],
                                                   "n": per_method[m]["n"], "ci95": per_method[m]["runaway_ci95"]}
                                               for m in data if m != reference},
                                "fisher_pvalue": primary["runaway_fisher_pvalue"],
                                "risk_fisher_pvalue": primary["risk_fisher_pvalue"]}
        if primary["paired"]:
            extra["paired"] = {"n_pairs": int(a_arr.size), "seed_correlation": primary["seed_correlation"],
                               "wilcoxon_pvalue": primary["wilcoxon_pvalue"]}
            if ctx is not None:
                extra["paired"].update({"mcnemar_pvalue": primary["mcnemar_runaway_pvalue"],
                                        "mcnemar_runaway_pvalue": primary["mcnemar_runaway_pvalue"],
                                        "mcnemar_runaway_discordant": primary["mcnemar_runaway_discordant"],
                                        "mcnemar_risk_pvalue": primary["mcnemar_risk_pvalue"],
                                        "mcnemar_risk_discordant": primary["mcnemar_risk_discordant"]})
        if power_sims > 0:
            tests = [t for t in TESTS if (ctx is not None or t not in ("runaway_fisher", "risk_fisher", "mcnemar_runaway",
                                                                         "mcnemar_risk"))]
            extra["power"] = {"alpha": 0.05, "sims": power_sims,
                              "per_test": power_analysis(a_arr, b_arr, ctx or {}, primary["paired"], tests, sims=power_sims,
                                                         seed=bootstrap_seed),
                              "against_ratio": power_against_ratio(a_arr, b_arr, power_ratio, sims=power_sims,
                                                                   seed=bootstrap_seed)}
    top = {
        "primary_test": declared,
        "methods": per_method,
        "primary_comparison": [primary["a"], primary["b"]] if primary else None,
        **{k: (primary.get(k) if primary else None) for k in top_keys},
        **extra,
        "comparisons": comparisons,
        "reference_method": reference, "baseline_method": baseline, "reference_mean": ref_mean,
        "confidence": confidence,
        "conventions": {
            "var": "sample variance, ddof=1",
            "f_test": "F = var_a / var_b, df (n_a-1, n_b-1), f_crit = F_0.95, f_pvalue one-sided (H1: var_a > var_b); "
                      "exact only for normal rewards (normality.f_test_reliable)",
            "welch": "Welch's t-test, Welch-Satterthwaite df, welch_crit = t_0.975(df), welch_pvalue two-sided",
            "brown_forsythe": "Levene's test centred on the median; brown_forsythe_pvalue one-sided (H1: var_a > var_b), "
                              "brown_forsythe_w and _pvalue_two_sided are scipy.stats.levene(center='median')'s",
            "variance_ratio_ci": "bootstrap BCa interval of var_a/var_b (9999 resamples; seed pairs resampled jointly "
                                 "when paired)",
            "risk": "fraction of the method's policies with reward < mean reward of the reference runs; "
                    "Wilson 95% interval (reference mean treated as known)",
            "risk_pairwise": "P(R_pi < R_ref) over all (policy, reference run) pairs, ties count 1/2",
            "risk_test": "pooled two-proportion z-test; risk_pvalue two-sided, risk_pvalue_greater H1: risk_a > risk_b; "
                         "risk_fisher_pvalue Fisher's exact test, H1: risk_a > risk_b",
            "runaway": f"reward < reference mean - runaway_margin ({runaway_margin:g}); Fisher's exact test, H1: rate_a > rate_b",
            "paired": "a[i] and b[i] share training seed i: exact McNemar (binomial test of the discordant pairs, H1: "
                      "more pairs where only a is below), Wilcoxon signed-rank H1: reward_b - reward_a > 0",
            "power": "per test, power at the observed n and the seeds per method for power 0.8 at alpha 0.05, "
                     "resampling the observed policies (pairs jointly when paired); against_ratio: power at the "
                     "observed n against a true variance ratio (F-test by normal theory, Brown-Forsythe by "
                     "simulation from the pooled median-centred rewards)",
            "primary_test": "the tests evaluation.primary_test declared before the population ran, on the primary "
                            "comparison; holm_pvalue when several are declared",
            "eval_noise_var": "mean over the method's policies of reward_se^2 (response-sampling noise of the "
                              "evaluation, samples_per_prompt >= 2); var_excess = var - eval_noise_var",
        },
    }
    # each method's block also at the top level (stats["vanilla"]["var"]), unless its name is a key above
    return {**top, **{m: v for m, v in per_method.items() if m not in top}}


def variance_ratio_table(sweep: Mapping[float | str, Mapping[str, Sequence[float]]], a: str = "vanilla",
                         b: str = "variance_aware", spread: Mapping[float | str, float] | None = None,
                         confidence: float = CONFIDENCE) -> list[dict]:
    """Table 4: one row per heterogeneity scale (how much the reward variances differ across
    samples) with var_a, var_b (ddof=1), their ratio = F, f_crit, one-sided f_pvalue; `spread`
    (e.g. the variance of the per-sample std devs at that scale) is carried into the row."""
    rows = []
    for scale, pop in sweep.items():
        data = _check({m: pop[m] for m in (a, b) if m in pop})
        missing = [m for m in (a, b) if m not in data]
        if missing:
            raise ValueError(f"scale {scale!r}: methods {missing} missing (have {sorted(pop)})")
        row = {"scale": scale, **({"spread": float(spread[scale])} if spread and scale in spread else {}),
               f"var_{a}": float(data[a].var(ddof=1)), f"var_{b}": float(data[b].var(ddof=1)),
               "n_a": int(data[a].size), "n_b": int(data[b].size)}
        f = f_test(data[a], data[b], confidence)
        rows.append({**row, "ratio": f["variance_ratio"], "f_stat": f["f_stat"], "f_crit": f["f_crit"],
                     "f_pvalue": f["f_pvalue"]})
    return rows


# ---------------------------------------------------------------------------------------------
# reading a population folder


def _row(obj, where: str, expect_method: str | None = None, expect_seed: int | None = None) -> dict:
    if not isinstance(obj, dict):
        raise PopulationError(f"{where}: expected a JSON object with method, seed, reward; got {type(obj).__name__}")
    m, s, r = obj.get("method"), obj.get("seed"), obj.get("reward")
    if not isinstance(m, str) or not m:
        raise PopulationError(f"{where}: field 'method' must be a non-empty string, got {m!r}")
    if isinstance(s, bool) or not isinstance(s, int):
        raise PopulationError(f"{where}: field 'seed' must be an integer, got {s!r}")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
        raise PopulationError(f"{where}: field 'reward' must be a finite number, got {r!r}")
    if expect_method is not None and m != expect_method:
        raise PopulationError(f"{where}: field 'method' is {m!r} but the file lies under policies/{expect_method}/")
    if expect_seed is not None and s != expect_seed:
        raise PopulationError(f"{where}: field 'seed' is {s} but the file is named seed_{expect_seed}.json")
    se = obj.get("reward_se")
    if se is not None and (isinstance(se, bool) or not isinstance(se, (int, float)) or not math.isfinite(se) or se < 0):
        raise PopulationError(f"{where}: field 'reward_se' must be a finite number ≥ 0 or null, got {se!r}")
    out = {"method": m, "seed": s, "reward": float(r), "reward_se": None if se is None else float(se), "source": where}
    for key in ("training_seed", "noise_seed", "kl", "beta"):  # optional: pairing by seed, KL matching
        if obj.get(key) is not None:
            out[key] = obj[key]
    return out


def read_population(folder: str | Path) -> list[dict]:
    """Rows {method, seed, reward, source} from FOLDER/policies/<method>/seed_<k>.json and/or
    FOLDER/policies.jsonl; a (method, seed) present twice is an error naming both sources."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PopulationError(f"{folder}: population folder not found")
    rows: list[dict] = []
    pol = folder / "policies"
    if pol.is_dir():
        for path in sorted(pol.glob("*/seed_*.json")):
            try:
                seed = int(path.stem.removeprefix("seed_"))
            except ValueError:
                raise PopulationError(f"{path}: expected a file name seed_<integer>.json") from None
            try:
                obj = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise PopulationError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
            rows.append(_row(obj, str(path), path.parent.name, seed))
    jl = folder / "policies.jsonl"
    if jl.is_file():
        for n, line in enumerate(jl.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PopulationError(f"{jl}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            rows.append(_row(obj, f"{jl}:{n}"))
    if not rows:
        raise PopulationError(f"{folder}: no policy results (expected {folder}/policies/<method>/seed_<k>.json "
                              f"or {folder}/policies.jsonl with rows {{\"method\", \"seed\", \"reward\"}})")
    seen: dict = {}
    for r in rows:
        key = (r["method"], r["seed"])
        if key in seen:
            raise PopulationError(f"{r['source']}: method {key[0]!r} seed {key[1]} also in {seen[key]}")
        seen[key] = r["source"]
    return rows


def evaluation_noise(rows: list[dict]) -> dict[str, float]:
    """{method: mean over its policies of reward_se²}: the part of the method's across-policy
    variance that re-evaluating the same policy would reproduce (response sampling), for the
    methods whose every policy carries a reward_se (evaluation.samples_per_prompt ≥ 2)."""
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r.get("reward_se"))
    return {m: float(np.mean(np.square(v))) for m, v in out.items() if all(x is not None for x in v)}


def group_seeds(rows: list[dict]) -> dict[str, list[int]]:
    """{method: its seeds in increasing order}: the order of group_rewards' lists."""
    out: dict[str, list[int]] = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r["seed"])
    return {m: sorted(v) for m, v in out.items()}


def shares_seeds(rows: list[dict], reference: str = "reference") -> bool:
    """Whether member k of every policy method trained from the same seed and faced the same reward
    draw (training_seed, noise_seed as the rows record them; rows without them are taken as the
    population's convention, seed k for every method): then methods can be compared seed by seed."""
    seen: dict[int, tuple] = {}
    for r in rows:
        if r["method"] == reference:
            continue
        key = (r.get("training_seed", r["seed"]), r.get("noise_seed"))
        if seen.setdefault(r["seed"], key) != key:
            return False
    return True


def group_rewards(rows: list[dict]) -> dict[str, list[float]]:
    """{method: rewards ordered by seed}, methods in order of first appearance."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        out.setdefault(r["method"], []).append((r["seed"], r["reward"]))
    return {m: [x for _, x in sorted(v)] for m, v in out.items()}


# ---------------------------------------------------------------------------------------------
# markdown tables in the layout of the paper's Tables 1–4


def _f(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def stats_markdown(result: dict, model: str = "–", reward_model: str = "–") -> str:
    """Per-method summary, then Tables 1 (variances, F), 2 (means, Welch t) and 3 (risks, z-test),
    one row per comparison, with the paper's Model | Reward Model columns first."""
    m = result["methods"]
    lines = [f"# Population statistics ({model}, {reward_model})", "",
             (f"Per-policy true reward; var with ddof=1; risk = fraction of policies below the reference mean "
              f"({_f(result['reference_mean'])}), Wilson {int(result['confidence'] * 100)}% interval; "
              f"risk_pairwise = P(R_π < R_ref) over all pairs."), "",
             "| Method | n | Mean | Variance | Std | Risk | Risk CI | Risk (pairwise) | Run-away | Shapiro p | Eval-noise var | Var − noise |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in m.items():
        ci = "–" if r["risk_ci95"] is None else f"[{r['risk_ci95'][0]:.3f}, {r['risk_ci95'][1]:.3f}]"
        lines.append(f"| {name} | {r['n']} | {_f(r['mean'])} | {_f(r['var'])} | {_f(r['std'])} | "
                     f"{_f(r['risk'], 3)} | {ci} | {_f(r['risk_pairwise'], 3)} | {_f(r.get('runaway_rate'), 3)} | "
                     f"{_f(r.get('shapiro_pvalue'), 3)} | {_f(r.get('eval_noise_var'))} | "
                     f"{_f(r.get('var_excess'))} |")
    if any(r.get("eval_noise_var") is not None for r in m.values()):
        lines += ["", "Eval-noise var: mean over the method's policies of their squared evaluation standard error "
                  "(within-prompt sampling noise); it is in every method's variance alike and lowers the F-score."]
    pt = result.get("primary_test")
    if pt:
        head = ["## Primary test" + ("s" if len(pt["results"]) > 1 else "") + f" (declared in {pt.get('declared_in', 'the config')})",
                "", "| test | a | b | n | p | alternative |", "|---|---|---|---|---|---|"]
        for r in pt["results"]:
            p_txt = _f(r["pvalue"], 3) + (f" (Holm {_f(r['holm_pvalue'], 3)})" if "holm_pvalue" in r else "")
            head.append(f"| {r['test']} | {r['a']} | {r['b']} | {r['n'][0]}/{r['n'][1]} | {p_txt} | {r['alternative']} |")
        lines[2:2] = [*head, ""]
    cmp = result["comparisons"]
    lines += ["", "## Tests that fit a non-normal outcome (one-sided, H1: a is the more variable / riskier)", "",
              "| a | b | paired | Brown–Forsythe p | var ratio BCa 95% | run-away a/b | Fisher p (run-away) | "
              "Fisher p (risk) | McNemar p (run-away) | McNemar p (risk) | Wilcoxon p |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cmp:
        ci = "–" if c["variance_ratio_ci"] is None else f"[{c['variance_ratio_ci'][0]:.3g}, {c['variance_ratio_ci'][1]:.3g}]"
        lines.append(f"| {c['a']} | {c['b']} | {'yes' if c['paired'] else 'no'} | {_f(c['brown_forsythe_pvalue'], 3)} | {ci} | "
                     f"{_f(c.get('runaway_a'), 3)}/{_f(c.get('runaway_b'), 3)} | {_f(c.get('runaway_fisher_pvalue'), 3)} | "
                     f"{_f(c.get('risk_fisher_pvalue'), 3)} | {_f(c.get('mcnemar_runaway_pvalue'), 3)} | "
                     f"{_f(c.get('mcnemar_risk_pvalue'), 3)} | {_f(c.get('wilcoxon_pvalue'), 3)} |")
    if result.get("normality") is not None and not result["normality"]["f_test_reliable"]:
        lines += ["", "**The F-test below is unreliable here**: a method's rewards fail Shapiro–Wilk (p < 0.05), and the "
                  "F-test's p is exact only for normal rewards. Brown–Forsythe above is the variance test to read."]
    if result.get("power"):
        pw = result["power"]
        lines += ["", f"## Power (α {pw['alpha']}, {pw['sims']} resampled populations per point)", "",
                  "| test | power at n | n | seeds per method for power 0.8 |", "|---|---|---|---|"]
        for t, v in pw["per_test"].items():
            lines.append(f"| {t} | {_f(v['power_at_n'], 3)} | {v['n']} | {v['n_for_power_0.8'] or '> 2000'} |")
        ar = pw["against_ratio"]
        lines += ["", f"Against a true variance ratio of {ar['ratio']:g} at the observed n: F-test power "
                  f"{_f(ar['f_test'], 3)} (normal theory), Brown–Forsythe {_f(ar['brown_forsythe'], 3)} (simulated)."]
    lines += ["", "## Table 1: variances (F-test, one-sided H1: var(a) > var(b))", "",
              "| Model | Reward Model | a | b | Var(a) | Var(b) | F-score | F crit (0.95; df) | p-value |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in cmp:
        lines.append(f"| {model} | {reward_model} | {c['a']} | {c['b']} | {_f(m[c['a']]['var'])} | {_f(m[c['b']]['var'])} | "
                     f"{_f(c['f_stat'], 3)} | {_f(c['f_crit'], 3)} ({c['f_df'][0]}, {c['f_df'][1]}) | {_f(c['f_pvalue'], 3)} |")
    lines += ["", "## Table 2: means (Welch's t-test, two-sided)", "",
              "| Model | Reward Model | a | b | Mean(a) | Mean(b) | t-score | t crit (0.975; df) | p-value |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in cmp:
        lines.append(f"| {model} | {reward_model} | {c['a']} | {c['b']} | {_f(m[c['a']]['mean'])} | {_f(m[c['b']]['mean'])} | "
                     f"{_f(c['welch_t'], 3)} | {_f(c['welch_crit'], 3)} ({_f(c['welch_df'], 4)}) | {_f(c['welch_pvalue'], 3)} |")
    if result["reference_mean"] is not None:
        lines += ["", "## Table 3: risk P(R(π) < R(π_ref)) (two-proportion z-test)", "",
                  "| Model | Reward Model | a | b | Risk(b) | Risk(a) | z | p (two-sided) | p (H1: risk(a) > risk(b)) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in cmp:
            lines.append(f"| {model} | {reward_model} | {c['a']} | {c['b']} | {_f(c['risk_b'], 3)} | {_f(c['risk_a'], 3)} | "
                         f"{_f(c['risk_z'], 3)} | {_f(c['risk_pvalue'], 3)} | {_f(c['risk_pvalue_greater'], 3)} |")
    return "\n".join(lines) + "\n"


def variance_ratio_markdown(rows: list[dict], a: str = "vanilla", b: str = "variance_aware",
                            spread_label: str = "Spread of σ") -> str:
    """Table 4: heterogeneity scale | spread | Var(a) | Var(b) | ratio | F crit | p."""
    lines = [f"| Scale | {spread_label} | Var({a}) | Var({b}) | Ratio | F crit (0.95) | p-value |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scale']} | {_f(r.get('spread'))} | {_f(r[f'var_{a}'])} | {_f(r[f'var_{b}'])} | "
                     f"{_f(r['ratio'], 3)} | {_f(r['f_crit'], 3)} | {_f(r['f_pvalue'], 3)} |")
    return "\n".join(lines) + "\n"
