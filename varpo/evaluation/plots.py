"""Histograms of per-policy true rewards by method (paper Figs. 5–6). matplotlib, Agg backend."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

COLORS = {"reference": "tab:purple", "vanilla": "tab:cyan", "variance_aware": "tab:red"}


def reward_histograms(rewards_by_method: Mapping[str, Sequence[float]], path: str | Path,
                      reference: str = "reference", title: str = "", bins: int = 20) -> Path:
    """One figure, one step histogram per method on shared bins (density), the reference mean as
    a vertical line and each method's mean as a dashed one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    allv = np.concatenate([np.asarray(v, dtype=np.float64) for v in rewards_by_method.values()])
    lo, hi = float(allv.min()), float(allv.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (m, v) in enumerate(rewards_by_method.items()):
        v = np.asarray(v, dtype=np.float64)
        c = COLORS.get(m, f"C{i}")
        ax.hist(v, bins=edges, density=True, histtype="stepfilled", alpha=0.3, color=c)
        ax.hist(v, bins=edges, density=True, histtype="step", lw=1.5, color=c,
                label=f"{m} (n={v.size}, mean={v.mean():.3g}, var={v.var(ddof=1):.3g})")
        if m != reference:
            ax.axvline(v.mean(), color=c, ls="--", lw=1)
    if reference in rewards_by_method:
        ax.axvline(float(np.mean(rewards_by_method[reference])), color=COLORS["reference"], lw=2,
                   label="reference mean")
    ax.set_xlabel("true reward of a policy (mean over evaluation prompts)")
    ax.set_ylabel("density")
    ax.set_title(title or "per-policy true reward")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
