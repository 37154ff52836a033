"""Training curves of a population's runs: KL, proxy and gold reward per PPO step (mean over seeds),
where they plateau, and their plot. Read by `varpo kl-match` (the pilot) and `varpo kl-sweep`."""
from __future__ import annotations

import statistics as st
from pathlib import Path

from ..outputs import read_jsonl

CURVE_KEYS = ("kl_mean", "score_mean", "gold_mean")


def curves(population_dir: Path) -> dict[str, dict[str, list[float]]]:
    """{member method name: {key: mean over its seeds per step}} from OUT/runs/<name>/seed_*/metrics.jsonl."""
    out = {}
    for mdir in sorted((Path(population_dir) / "runs").glob("*")):
        runs = [read_jsonl(p) for p in sorted(mdir.glob("seed_*/metrics.jsonl"))]
        runs = [r for r in runs if r]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        out[mdir.name] = {k: [st.fmean(float(r[i].get(k) or 0.0) for r in runs) for i in range(n)] for k in CURVE_KEYS}
        out[mdir.name]["seeds"] = len(runs)
    return out


def plateau_step(values: list[float], window: int = 20, tol: float = 0.15) -> int | None:
    """The first step from which every `window`-step mean stays within `tol` (relative) of the last
    window's mean; None when the run is shorter than two windows."""
    if len(values) < 2 * window:
        return None
    final = st.fmean(values[-window:])
    means = [st.fmean(values[i : i + window]) for i in range(0, len(values) - window + 1)]
    start = len(means) - 1
    while start > 0 and abs(means[start - 1] - final) <= tol * max(abs(final), 1e-12):
        start -= 1
    return start


def plot_curves(cv: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for i, (name, c) in enumerate(cv.items()):
        for ax, k in zip(axes, CURVE_KEYS):
            ax.plot(c[k], color=f"C{i % 10}", lw=1, label=f"{name} ({c['seeds']})", ls="-" if "vanilla" in name else "--")
    for ax, label in zip(axes, ("KL per sequence (training batch)", "proxy reward", "gold reward")):
        ax.set(xlabel="PPO step", ylabel=label, title=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
