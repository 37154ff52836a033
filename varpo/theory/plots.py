"""Figures of the bandit illustration (paper Figs. 3–4). matplotlib, Agg backend."""
from __future__ import annotations

from pathlib import Path

import numpy as np

COLORS = {"vanilla": "tab:cyan", "variance_aware": "tab:red", "sharpe": "tab:orange", "reference": "tab:purple"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _hist(ax, returns: dict[str, np.ndarray], ref_return: float, labels: dict[str, str]) -> None:
    allv = np.concatenate(list(returns.values()))
    edges = np.linspace(np.quantile(allv, 0.001), np.quantile(allv, 0.999), 80)
    for name, ret in returns.items():
        ax.hist(ret, bins=edges, density=True, histtype="stepfilled", alpha=0.3, color=COLORS[name])
        ax.hist(ret, bins=edges, density=True, histtype="step", color=COLORS[name], label=labels[name])
    ax.axvline(ref_return, color=COLORS["reference"], lw=2, label="π_ref (uniform)")
    ax.set_xlabel("true return ⟨π, r*⟩")
    ax.set_ylabel("density")


def fig3(result: dict, returns: dict[str, np.ndarray], path: Path) -> Path:
    """Left: true rewards, one illustrative draw of estimates with ±2σ brackets. Right: the
    distribution of true returns of the KL-regularised policies over all draws."""
    plt = _plt()
    r = np.asarray(result["true_rewards"])
    ill = result["illustration"]
    kl = result["kl_regularised"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2]})
    x = np.arange(1, r.size + 1)
    a.errorbar(x + 0.08, ill["r_hat"], yerr=2 * np.asarray(ill["sd"]), fmt="o", color="tab:blue", ecolor="tab:red",
               capsize=6, label="estimate r̂ ± 2σ")
    a.plot(x - 0.08, r, "o", color="tab:green", ms=9, label="true r*")
    a.set_xticks(x, [f"arm {i}" for i in x])
    a.set_title(f"draw {ill['draw']}: {ill['note']}", fontsize=8)
    a.legend(fontsize=8)
    labels = {n: f"{n} (β={p['beta']:.3g}, P(under)={p['underperformance']:.3f})" for n, p in kl["policies"].items()}
    _hist(b, returns, kl["reference_return"], labels)
    b.set_title(f"KL-regularised policies over {result['n_draws']} draws r̂ ~ N(r*, Σ) (β rule: {kl['beta_rule']})",
                fontsize=9)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fig4(het: dict, ref_return: float, path: Path) -> Path:
    """True-return distributions (pooled over repeats) for the narrow and the wide interval."""
    plt = _plt()
    names = list(het["settings"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), sharey=False)
    for ax, name in zip(np.atleast_1d(axes), names):
        pooled = het["_pooled"][name]
        s = het["settings"][name]
        lo, hi = het["intervals"][name]
        labels = {p: f"{p} (P(under)={s['mean_over_repeats'][f'{p}_underperformance']:.3f})" for p in pooled}
        _hist(ax, pooled, ref_return, labels)
        ax.set_title(f"{name}: σ² ~ U[{lo}, {hi}] per arm, {het['repeats']} repeats; "
                     f"var ratio {s['variance_aware_pooled_variance_ratio']:.2f}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def risks_plot(result: dict, path: Path) -> Path:
    """Thm 2.4: closed-form risks with the Monte Carlo estimates ± 2 s.e."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    names = ["vanilla", "variance_aware"]
    x = np.arange(2)
    ax.bar(x - 0.18, [result["risk_closed_form"][n] for n in names], 0.36, label="closed form", color="tab:gray")
    ax.bar(x + 0.18, [result["risk_monte_carlo"][n] for n in names], 0.36,
           yerr=[2 * result["risk_monte_carlo_se"][n] for n in names], capsize=5, label="Monte Carlo ± 2 s.e.",
           color=[COLORS[n] for n in names])
    ax.set_xticks(x, names)
    ax.set_ylabel("P(⟨d, r*⟩ < 0)")
    ax.set_title(f"Theorem 2.4 risks ({result['n_draws']} draws)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
