"""`varpo theory predict`: the theory's prediction for the oracle reward on the task's own responses
(varpo.theory.reweighting), with the oracle's per-cell noise draws: many reference samples per
prompt, gold and σ² for each, the oracle's z per cell for each of D noise seeds (the seeds a
`varpo population --vary reward` gives its members 0..D−1), and per vanilla β the KL-matched
optima's variance ratio, risk and effective sample size against sequence KL."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def reference_samples(cfg, prompts: int, samples: int, seed: int = 0, batch_size: int = 512) -> dict:
    """[P, M] gold, σ², and the evaluative cells (P, N) of M reference samples for each of the first
    `prompts` evaluation prompts."""
    from ..evaluation.policy_eval import sample_responses
    from ..evaluation.population import eval_prompts, true_reward_fn
    from ..ppo import resolve_sources
    from ..reward.oracle import oracle_sigma
    from ..testbed.gold import evaluative_counts, words_of

    ps = eval_prompts(cfg)[:prompts]
    if len(ps) < prompts:
        from ..config import ConfigError

        raise ConfigError(f"--prompts {prompts}: the task has only {len(ps)} evaluation prompts "
                          f"(evaluation.num_eval_prompts={cfg.evaluation.num_eval_prompts})")
    rep = [p for p in ps for _ in range(samples)]
    ys = sample_responses(resolve_sources(cfg)[0], rep, cfg.generation, seed=3_000_000 + seed, batch_size=batch_size)
    gold = np.asarray(true_reward_fn(cfg)(rep, ys), dtype=np.float64).reshape(prompts, samples)
    cells = [evaluative_counts(words_of(y)) for y in ys]
    o = cfg.reward.oracle
    sig = np.array([oracle_sigma(p - n, o.sigma_min, o.sigma_max, cfg.testbed.overopt_threshold) for p, n in cells])
    return {"gold": gold, "sigma2": (sig**2).reshape(prompts, samples), "cells": cells, "prompts": ps,
            "mean_chars": float(np.mean([len(y) for y in ys]))}


def noisy_rewards(gold: np.ndarray, sigma2: np.ndarray, cells: list[tuple[int, int]], draws: int) -> np.ndarray:
    """[D, P, M] r̂_d = gold + σ·z_d(cell): the oracle's reward under noise seed d = 0..D−1."""
    from ..reward.oracle import cell_noise

    uniq = sorted(set(cells))
    index = np.array([uniq.index(c) for c in cells]).reshape(gold.shape)
    z = np.array([[cell_noise(d, p, n) for p, n in uniq] for d in range(draws)])  # [D, cells]
    return gold[None] + np.sqrt(sigma2)[None] * z[:, index]


def best_point(points: list[dict], min_ess: float = 20.0) -> dict | None:
    """The vanilla β whose KL-matched variance ratio is largest among the points the samples can
    carry (5% quantile of the ESS ≥ min_ess for both methods, KL matched in ≥ 90% of the draws)."""
    ok = [p for p in points if p["var_ratio"] is not None and p["kl_matched_share"] >= 0.9
          and min(p["vanilla"]["ess_p5"], p["variance_aware"]["ess_p5"]) >= min_ess]
    return max(ok, key=lambda p: p["var_ratio"]) if ok else None


def plot_prediction(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(res["points"], key=lambda p: p["vanilla"]["kl"])
    kl = [p["vanilla"]["kl"] for p in pts]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    # a ratio is a comparison at equal KL only where the β search matched it (most draws)
    ok = [p for p in pts if p["kl_matched_share"] >= 0.9 and p["var_ratio"] is not None]
    axes[0].plot([p["vanilla"]["kl"] for p in ok], [p["var_ratio"] for p in ok], "o-", color="C2",
                 label="KL matched in ≥ 90% of draws")
    if ok and all(p.get("var_ratio_ci") for p in ok):
        axes[0].fill_between([p["vanilla"]["kl"] for p in ok], [p["var_ratio_ci"][0] for p in ok],
                             [p["var_ratio_ci"][1] for p in ok], color="C2", alpha=0.2, label="BCa 95% over draws")
    axes[0].legend(fontsize=8)
    axes[0].axhline(1, color="grey", lw=0.8)
    axes[0].set(ylabel="Var(vanilla) / Var(variance-aware)", title="variance ratio at matched KL")
    for i, m in enumerate(("vanilla", "variance_aware")):
        axes[1].plot(kl, [p[m]["risk"] for p in pts], "o-", color=f"C{i}", label=m)
        axes[2].plot(kl, [p[m]["return_mean"] for p in pts], "o-", color=f"C{i}", label=m)
        axes[3].plot(kl, [p[m]["ess_median"] for p in pts], "o-", color=f"C{i}", label=f"{m} (median)")
        axes[3].plot(kl, [p[m]["ess_p5"] for p in pts], "--", color=f"C{i}", label=f"{m} (5%)")
    axes[2].axhline(res["reference_return"], color="grey", lw=0.8, label="reference")
    axes[1].set(ylabel="risk: P(gold below the reference's)", title="risk over noise draws")
    axes[2].set(ylabel="gold of the optimum", title="mean gold over draws")
    axes[3].set(ylabel="effective samples per prompt", title=f"ESS (of {res['samples_per_prompt']})", yscale="log")
    for ax in axes:
        ax.set_xlabel("KL(π ‖ π_ref) per sequence (nats)")
        ax.grid(alpha=0.3)
    for ax in axes[1:]:
        ax.legend(fontsize=7)
    fig.suptitle(f"oracle on the task's responses: {res['prompts']} prompts × {res['samples_per_prompt']} reference "
                 f"samples, {res['draws']} noise draws (KL ≤ log M = {res['max_sample_kl']:.1f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def context_load() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]


def run_prediction(cfg, out: Path, betas: list[float], prompts: int, samples: int, draws: int, seed: int = 0) -> dict:
    from ..evaluation.provenance import run_context
    from ..evaluation.stats import variance_ratio_ci
    from .reweighting import predict

    t0, context = time.perf_counter(), run_context()  # the commit and load when it started
    ref = reference_samples(cfg, prompts, samples, seed)
    t_sample = time.perf_counter() - t0
    r_hat = noisy_rewards(ref["gold"], ref["sigma2"], ref["cells"], draws)
    res = predict(ref["gold"], r_hat, ref["sigma2"], betas)
    for p in res["points"]:
        p["var_ratio_ci"] = variance_ratio_ci(p["vanilla"]["returns"], p["variance_aware"]["returns"], paired=True,
                                              n_resamples=2999)
    best = best_point(res["points"])
    res.update({"best": None if best is None else {"beta": best["beta"], "beta_va_median": best["beta_va_median"],
                                                    "kl": best["vanilla"]["kl"], "var_ratio": best["var_ratio"],
                                                    "var_ratio_ci": best["var_ratio_ci"],
                                                    "risk_vanilla": best["vanilla"]["risk"],
                                                    "risk_variance_aware": best["variance_aware"]["risk"]},
                "oracle": cfg.reward.oracle.model_dump(), "noise_seeds": [0, draws - 1],
                "reference_sigma2_p90_over_p10": float(np.quantile(ref["sigma2"], 0.9) / np.quantile(ref["sigma2"], 0.1)),
                "seconds_sampling": t_sample, "seconds": time.perf_counter() - t0, "context": context,
                "loadavg_end": context_load(),
                "conventions": {
                    "kl": "KL of the reweighted sample distribution against the uniform one, per prompt, mean over "
                          "prompts and draws: the sequence KL of the optimum as the samples represent it (≤ log M)",
                    "variance_aware": "the maximiser of E r - beta E[w log pi/pi_ref], w = sigma^2 / mean sigma^2 over the "
                                      "reference samples, beta matched per draw so that its KL equals vanilla's",
                    "risk": "fraction of noise draws whose optimum's gold (mean over prompts) is below the reference's",
                    "var_ratio_ci": "bootstrap BCa 95% over draws (paired: each draw gives both methods)",
                    "best": "largest var_ratio among points with ESS 5% quantile >= 20 and KL matched in >= 90% of draws"}})
    out.mkdir(parents=True, exist_ok=True)
    from ..outputs import write_json

    write_json(out / "prediction.json", res)
    plot_prediction(res, out / "prediction.png")
    return res


__all__ = ["best_point", "noisy_rewards", "reference_samples", "run_prediction", "plot_prediction"]
