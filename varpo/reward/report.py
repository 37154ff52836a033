"""Disagreement report (paper Appendix B, Fig. 8) from per-head rewards of held-out pairs:
per-head and ensemble-mean accuracy, and the distributions across responses of σ² (variance over
heads of one response's reward) and across pairs of the variance over heads of the reward
difference r_k(chosen) − r_k(rejected). Quantiles p10/p50/p90 in JSON, histograms as PNG.
Accuracy counts a tie as half right. `uncertainty_calibration`: whether that variance predicts
which pairs the ensemble gets wrong (what variance-aware PPO relies on)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .aggregate import head_mean, head_variance


def quantiles(x: torch.Tensor) -> dict:
    """p10, p50, p90 (numpy's linear interpolation) and the mean, in float64."""
    a = x.detach().double().cpu().numpy()
    p10, p50, p90 = np.quantile(a, [0.1, 0.5, 0.9])
    return {"p10": float(p10), "p50": float(p50), "p90": float(p90), "mean": float(a.mean())}


def pair_correct(diff: torch.Tensor) -> torch.Tensor:
    """diff = r(chosen) − r(rejected) → 1 where the order is right, ½ for a tie, 0 otherwise."""
    return (diff > 0).double() + 0.5 * (diff == 0).double()


def pair_accuracy(diff: torch.Tensor) -> torch.Tensor:
    """diff [N, ...] = r(chosen) − r(rejected) → accuracy [...] (ties count ½)."""
    return pair_correct(diff).mean(0)


def uncertainty_calibration(var_diff: torch.Tensor, correct: torch.Tensor, groups: int = 4) -> dict:
    """Is the ensemble's uncertainty informative? Pairs sorted by the variance over heads of their
    reward difference, split into `groups` equal parts (lowest variance first): the ensemble-mean
    accuracy in each, and Spearman's ρ between that variance and correctness (1, ½ for a tie, 0).
    Variance-aware PPO assumes σ² tracks the reward model's error (Assumption 2.1): then accuracy
    falls from the first group to the last and ρ < 0. A flat profile or ρ ≥ 0 means the σ² weights
    hold the policy back on samples no less reliable than the rest."""
    from scipy import stats as st

    order = torch.argsort(var_diff.double(), stable=True)
    parts = torch.tensor_split(order, groups)
    c = correct.double()
    rho = st.spearmanr(var_diff.double().numpy(), c.numpy())
    finite = bool(np.isfinite(rho.statistic))
    return {"accuracy_by_diff_variance_group": [float(c[i].mean()) for i in parts if len(i)],
            "diff_variance_group_upper_bounds": [float(var_diff[i].max()) for i in parts if len(i)],
            "spearman_diff_variance_vs_correct": float(rho.statistic) if finite else None,
            "spearman_pvalue": float(rho.pvalue) if finite else None}


def disagreement_stats(r_chosen: torch.Tensor, r_rejected: torch.Tensor, ddof: int = 1,
                       gold_diff: torch.Tensor | None = None, gold_responses: torch.Tensor | None = None) -> dict:
    """r_chosen, r_rejected: per-head rewards [N, K] of held-out pairs; gold_diff [N] optional
    gold(chosen) − gold(rejected) (testbed pairs), for accuracy against the noise-free order;
    gold_responses [2N] optional gold of every chosen then every rejected response, for
    `uncertainty_calibration.spearman_sigma2_sqerr` (σ² against the squared error vs gold on these
    reference samples; `sigma2_error_calibration`)."""
    diff = r_chosen - r_rejected
    head_acc = pair_accuracy(diff).tolist()
    ens_diff = head_mean(r_chosen) - head_mean(r_rejected)
    var_resp = torch.cat([head_variance(r_chosen, ddof), head_variance(r_rejected, ddof)])
    var_diff = head_variance(diff, ddof)
    out = {
        "num_heads": int(r_chosen.shape[1]), "ddof": ddof, "eval_pairs": int(r_chosen.shape[0]),
        "head_accuracy": head_acc, "ensemble_accuracy": float(pair_accuracy(ens_diff)),
        "head_accuracy_spread": max(head_acc) - min(head_acc),
        "variance_quantiles": quantiles(var_resp), "diff_variance_quantiles": quantiles(var_diff),
        "uncertainty_calibration": uncertainty_calibration(var_diff, pair_correct(ens_diff)),
    }
    if gold_responses is not None:
        mean_resp = torch.cat([head_mean(r_chosen), head_mean(r_rejected)])
        cal = sigma2_error_calibration(var_resp, mean_resp, gold_responses)
        out["sigma2_error_calibration"] = cal
        out["uncertainty_calibration"]["spearman_sigma2_sqerr"] = cal["spearman_sigma2_sqerr"]
        out["uncertainty_calibration"]["spearman_sigma2_sqerr_pvalue"] = cal["spearman_pvalue"]
    if gold_diff is not None:
        keep = gold_diff != 0  # pairs of equal gold reward have no gold order
        if bool(keep.any()):
            sign = gold_diff[keep].sign()
            out["gold_pairs"] = int(keep.sum())
            gold_ordered = ens_diff[keep] * sign
            out["ensemble_gold_accuracy"] = float(pair_accuracy(gold_ordered))
            out["head_gold_accuracy"] = pair_accuracy(diff[keep] * sign[:, None]).tolist()
            out["uncertainty_calibration_gold"] = uncertainty_calibration(var_diff[keep], pair_correct(gold_ordered))
    return out, var_resp, var_diff


def plot_disagreement(var_resp: torch.Tensor, var_diff: torch.Tensor, head_acc: list[float], ens_acc: float,
                      path: str | Path) -> Path:
    """Three panels: σ² of responses, σ² of reward differences, accuracy per head vs the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, x, title in ((axes[0], var_resp, "σ² of a response's reward across heads"),
                         (axes[1], var_diff, "σ² of r(chosen) − r(rejected) across heads")):
        ax.hist(x.double().numpy(), bins=40, color="#4C72B0")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("variance")
        ax.set_ylabel("count")
    axes[2].bar(range(len(head_acc)), head_acc, color="#55A868", label="head")
    axes[2].axhline(ens_acc, color="#C44E52", label=f"ensemble mean ({ens_acc:.3f})")
    axes[2].set_ylim(min(0.5, min(head_acc)) - 0.02, max(max(head_acc), ens_acc) + 0.02)
    axes[2].set_title("held-out accuracy", fontsize=10)
    axes[2].set_xlabel("head")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def disagreement_report(r_chosen: torch.Tensor, r_rejected: torch.Tensor, out_dir: str | Path, ddof: int = 1,
                        gold_diff: torch.Tensor | None = None, gold_responses: torch.Tensor | None = None) -> dict:
    """The stats above, plus OUT/disagreement.png; returns the JSON-ready dict."""
    stats, var_resp, var_diff = disagreement_stats(r_chosen, r_rejected, ddof, gold_diff, gold_responses)
    png = plot_disagreement(var_resp, var_diff, stats["head_accuracy"], stats["ensemble_accuracy"],
                            Path(out_dir) / "disagreement.png")
    return {**stats, "plot": str(png)}


def sigma2_error_calibration(sigma2, proxy, gold, groups: int = 4) -> dict:
    """Does σ² track the reward's error? (Assumption 2.1: σ² is the variance of r̂ − r*.)

    The proxy is first mapped affinely onto the gold scale (least squares, float64: a reward model's
    scale and offset are arbitrary), then per response: squared error e = (a·proxy + b − gold)².
    Returns Spearman ρ(σ², e) and its p-value (informative uncertainty: ρ > 0), the mean e in each
    quartile of σ² (lowest σ² first), the spread of σ² (p90/p10) and the affine map."""
    from scipy import stats as st

    s2, x, g = (np.asarray(torch.as_tensor(v).double().cpu().numpy() if torch.is_tensor(v) else v, dtype=np.float64)
                for v in (sigma2, proxy, gold))
    ok = np.isfinite(s2) & np.isfinite(x) & np.isfinite(g)
    s2, x, g = s2[ok], x[ok], g[ok]
    if len(s2) < 3:
        return {"n": int(len(s2)), "spearman_sigma2_sqerr": None, "spearman_pvalue": None}
    design = np.stack([x, np.ones_like(x)], 1)
    (a, b), *_ = np.linalg.lstsq(design, g, rcond=None)
    err = (a * x + b - g) ** 2
    rho = st.spearmanr(s2, err)
    finite = bool(np.isfinite(rho.statistic))
    parts = np.array_split(np.argsort(s2, kind="stable"), groups)
    p10, p90 = np.quantile(s2, [0.1, 0.9])
    return {"n": int(len(s2)), "spearman_sigma2_sqerr": float(rho.statistic) if finite else None,
            "spearman_pvalue": float(rho.pvalue) if finite else None,
            "sqerr_by_sigma2_quartile": [float(err[i].mean()) for i in parts if len(i)],
            "sigma2_quartile_upper_bounds": [float(s2[i].max()) for i in parts if len(i)],
            "sigma2_p10": float(p10), "sigma2_p90": float(p90),
            "sigma2_p90_over_p10": float(p90 / p10) if p10 > 0 else None,
            "affine_to_gold": [float(a), float(b)], "mse_after_affine": float(err.mean())}
