"""Collect a population folder (as `varpo population` / `varpo kl-sweep` write it) into a committed
results folder: policies.jsonl (one row per policy, local paths dropped), the population's
config.yaml (its declared primary test), kl_match.json, vary.txt and runs_context.jsonl, then `varpo stats` on it,
and gold_vs_kl.png (each policy's gold reward against its KL, per method) plus a calibration
summary (σ² vs squared error of the proxy on each method's evaluation samples).

    python experiments/overoptimization/overoptimization_report.py runs/pop_oracle experiments/overoptimization/oracle
"""
from __future__ import annotations

import json
import shutil
import statistics as st
import subprocess
import sys
from pathlib import Path


def collect(src: Path, dst: Path) -> list[dict]:
    rows = []
    for path in sorted((src / "policies").glob("*/seed_*.json")):
        row = json.loads(path.read_text())
        row.pop("policy_path", None)
        metrics = src / "runs" / row["method"] / f"seed_{row['seed']}" / "metrics.jsonl"
        if metrics.exists():  # the last step's KL is one noisy batch: also the mean of the last 5 steps
            kl = [json.loads(x).get("kl_mean") for x in metrics.read_text().splitlines() if x.strip()]
            kl = [v for v in kl if isinstance(v, (int, float))][-5:]
            row["kl_last5_mean"] = st.fmean(kl) if kl else None
        rows.append(row)
    # a population collected while it runs (interim) has seeds that only some methods finished: keep the
    # seeds every method has, so that the methods stay paired by seed; a finished population loses nothing
    methods = {r["method"] for r in rows}
    complete = set.intersection(*({r["seed"] for r in rows if r["method"] == m} for m in methods)) if rows else set()
    dropped = [f"{r['method']}/seed_{r['seed']}" for r in rows if r["seed"] not in complete]
    if dropped:
        print(f"left out (seeds not yet finished by every method): {', '.join(dropped)}")
    rows = [r for r in rows if r["seed"] in complete]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "policies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("config.yaml", "kl_match.json", "vary.txt"):
        if (src / name).exists() and not (dst / name).exists():  # a declaration committed earlier stays as it was
            shutil.copy(src / name, dst / name)
    if (src / "runs_context.jsonl").exists():  # how the rows were made (command, commit, load): always the latest
        shutil.copy(src / "runs_context.jsonl", dst / "runs_context.jsonl")
    return rows


def calibration_summary(rows: list[dict]) -> dict:
    out = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        cal = [r["calibration"] for r in rows if r["method"] == m and r.get("calibration")]
        if not cal:
            continue
        rho = [c["spearman_sigma2_sqerr"] for c in cal if c["spearman_sigma2_sqerr"] is not None]
        sig = [c for c in cal if c.get("spearman_pvalue") is not None and c["spearman_pvalue"] < 0.01 and c["spearman_sigma2_sqerr"] > 0]
        growth = [r["sigma2_growth"] for r in rows if r["method"] == m and r.get("sigma2_growth") is not None]
        q = [c["sqerr_by_sigma2_quartile"] for c in cal]
        out[m] = {"n_policies": len(cal), "spearman_sigma2_sqerr_mean": st.fmean(rho) if rho else None,
                  "spearman_sigma2_sqerr_min": min(rho) if rho else None,
                  "policies_with_rho_gt0_p_lt_0.01": len(sig),
                  "sqerr_by_sigma2_quartile_mean": [st.fmean(x[i] for x in q) for i in range(len(q[0]))],
                  "sigma2_p90_over_p10_mean": st.fmean(c["sigma2_p90_over_p10"] for c in cal if c.get("sigma2_p90_over_p10")),
                  "sigma2_growth_mean": st.fmean(growth) if growth else None,
                  "kl_mean": st.fmean(r.get("kl_mean") or 0.0 for r in rows if r["method"] == m),
                  "kl_last5_mean": st.fmean(r.get("kl_last5_mean") or 0.0 for r in rows if r["method"] == m),
                  "proxy_mean": st.fmean(r["proxy_mean"] for r in rows if r["method"] == m and r.get("proxy_mean") is not None)}
    return out


def plot_gold_vs_kl(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, m in enumerate(dict.fromkeys(r["method"] for r in rows)):
        pts = [r for r in rows if r["method"] == m]
        kl = [r["kl"] if r.get("kl") is not None else (r.get("kl_last5_mean") or r.get("kl_mean") or 0.0) for r in pts]
        ax.scatter(kl, [r["reward"] for r in pts], s=18, alpha=0.7, color=f"C{i}", label=m)
    ax.set(xlabel="KL(π ‖ π_ref) per sequence (nats): evaluation samples (kl), else the last 5 training steps",
           ylabel="gold reward of the policy", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(src: str, dst: str, *stats_args: str) -> None:
    src_p, dst_p = Path(src), Path(dst)
    rows = collect(src_p, dst_p)
    subprocess.run([sys.executable, "-m", "varpo.cli", "stats", str(dst_p), *stats_args], check=True)
    (dst_p / "calibration.json").write_text(json.dumps(calibration_summary(rows), indent=2))
    plot_gold_vs_kl(rows, dst_p / "gold_vs_kl.png", dst_p.name)
    print(f"wrote {dst_p}/policies.jsonl, stats.json, calibration.json, gold_vs_kl.png ({len(rows)} policies)")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="the population folder (varpo population / kl-sweep --out)")
    ap.add_argument("dst", help="the results folder to write")
    ap.add_argument("stats_args", nargs=argparse.REMAINDER, help="passed on to `varpo stats`")
    a = ap.parse_args()
    main(a.src, a.dst, *a.stats_args)
