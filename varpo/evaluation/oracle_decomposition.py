"""Where the spread of an oracle population comes from, against the bandit theory's prediction.

    python -m varpo.evaluation.oracle_decomposition --out experiments/overoptimization/oracle_decomposition \
        NAME=FOLDER [NAME=FOLDER ...] [--bandit experiments/overoptimization/bandit/oracle_bandit.json]

Each FOLDER is a committed population (policies.jsonl and stats.json, as
experiments/overoptimization/overoptimization_report.py writes them) of the oracle reward source, made with
`varpo population --vary both|reward|training`. Per folder and method, from `varpo stats`: the
variance of the policies' gold rewards, its evaluation-noise part and the excess (what the
policies themselves differ by); from the rows: the mean KL and the mean oracle σ² of the policies'
evaluation samples (how far the policies went into the noisy cells). Per folder: the F-test vanilla / variance-aware from its
stats.json and the bandit's Var(vanilla)/Var(variance-aware) at the same KL (log-linear
interpolation over the bandit's points). Writes OUT/decomposition.json and OUT/decomposition.md.

With `--runs NAME=POPULATION_DIR` (the uncommitted output of `varpo population`, which keeps each
run's metrics.jsonl and samples.jsonl) it also reports, for every method that weights by σ², the
distribution of the per-sample KL weights w = σ²/(batch mean σ²) over the logged training samples:
the share of samples whose KL penalty is weaker than vanilla's (w < 1, w < 0.5) or stronger (w > 2).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics as st
from pathlib import Path

import yaml

METHODS = ("vanilla", "variance_aware")


def method_rows(rows: list[dict], method: str) -> list[dict]:
    return [r for r in rows if r["method"] == method]


def spread(stats_m: dict | None, rows: list[dict]) -> dict:
    """`varpo stats`' figures for one method (variance, its evaluation-noise part, the excess) and,
    from the rows, the mean KL and the mean oracle σ² of the evaluation samples."""
    stats_m = stats_m or {}
    kl = [r["kl_last5_mean"] if r.get("kl_last5_mean") is not None else r.get("kl_mean") for r in rows]
    kl = [k for k in kl if k is not None]
    s2 = [r["sigma2_mean"] for r in rows if r.get("sigma2_mean") is not None]
    return {**{k: stats_m.get(k) for k in ("n", "mean", "var", "eval_noise_var", "var_excess")},
            "kl_mean": st.fmean(kl) if kl else None, "eval_sigma2_mean": st.fmean(s2) if s2 else None}


def bandit_ratio_at(points: list[dict], kl: float) -> float | None:
    """The bandit's variance ratio at KL `kl`: interpolated linearly in log KL between its two
    nearest points (None outside their range)."""
    pts = sorted((p["kl_vanilla"], p["var_ratio"]) for p in points if p.get("kl_matched", True))
    for (k0, r0), (k1, r1) in zip(pts, pts[1:]):
        if k0 <= kl <= k1:
            t = (math.log(kl) - math.log(k0)) / (math.log(k1) - math.log(k0))
            return r0 + t * (r1 - r0)
    return None


def against_prediction(rows: list[dict], prediction: dict, compared: str = "variance_aware") -> dict | None:
    """PPO's oracle population against `varpo theory predict` on the same noise draws: member k of a
    `--vary reward` population faced noise seed k, the prediction's draw k. Per method, at the
    prediction's point whose vanilla KL is nearest PPO's mean `kl` (among points matched in ≥ 90% of
    draws): the variance of PPO's gold over the members, the optimum's return variance over the same
    draws, and Spearman's ρ between member k's gold and the optimum's draw-k return (does PPO follow
    the draw the way the optimum does?). None when the rows carry no noise seeds within the draws."""
    import numpy as np
    from scipy.stats import spearmanr

    def kl_of(r: dict) -> float | None:  # rows made before `kl` existed: the last 5 training steps' KL
        return next((r[k] for k in ("kl", "kl_last5_mean", "kl_mean") if r.get(k) is not None), None)

    pts = [p for p in prediction["points"] if p["kl_matched_share"] >= 0.9]
    van = [r for r in rows if r["method"] == "vanilla" and kl_of(r) is not None]
    if not pts or not van:
        return None
    kl = st.fmean(kl_of(r) for r in van)
    p = min(pts, key=lambda q: abs(math.log(q["vanilla"]["kl"]) - math.log(max(kl, 1e-9))))
    out: dict = {"ppo_kl_vanilla": kl, "prediction_beta": p["beta"], "prediction_kl": p["vanilla"]["kl"],
                 "prediction_var_ratio": p["var_ratio"], "prediction_var_ratio_ci": p.get("var_ratio_ci")}
    for m, key in (("vanilla", "vanilla"), (compared, "variance_aware")):
        rs = [r for r in rows if r["method"] == m and r.get("noise_seed") is not None
              and 0 <= r["noise_seed"] < prediction["draws"]]
        if len(rs) < 3:
            return None
        gold = np.array([r["reward"] for r in rs])
        opt = np.asarray(p[key]["returns"])[[r["noise_seed"] for r in rs]]
        rho = spearmanr(gold, opt)
        out[key] = {"n": len(rs), "ppo_kl": st.fmean(kl_of(r) for r in rs),
                    "ppo_gold_var": float(gold.var(ddof=1)), "optimum_return_var": float(opt.var(ddof=1)),
                    "spearman_gold_vs_optimum": float(rho.statistic), "spearman_pvalue": float(rho.pvalue),
                    "ppo_sigma2_mean": st.fmean(r["sigma2_mean"] for r in rs if r.get("sigma2_mean") is not None)
                    if any(r.get("sigma2_mean") is not None for r in rs) else None}
    out["ppo_var_ratio"] = out["vanilla"]["ppo_gold_var"] / out["variance_aware"]["ppo_gold_var"]
    out["optimum_var_ratio_same_draws"] = (out["vanilla"]["optimum_return_var"]
                                           / out["variance_aware"]["optimum_return_var"])
    return out


def decompose(folders: dict[str, Path], bandit: dict | None, prediction: dict | None = None) -> dict:
    out = {}
    for name, folder in folders.items():
        rows = [json.loads(x) for x in (folder / "policies.jsonl").read_text().splitlines() if x.strip()]
        stats = json.loads((folder / "stats.json").read_text())
        # the compared method: variance_aware, or the one other method a variant population holds
        # (e.g. variance_aware_floor1), reported under the name variance_aware with its own name kept
        others = sorted({r["method"] for r in rows} - {"reference", "vanilla"})
        va = "variance_aware" if "variance_aware" in others else (others[0] if len(others) == 1 else None)
        if va is None:
            raise SystemExit(f"{folder}: expected vanilla and one σ²-weighted method, found {others}")
        vary = {r.get("vary", "both") for r in rows if r["method"] in ("vanilla", va)}
        entry = {"folder": str(folder), "vary": sorted(vary), "compared_method": va,
                 "reference": spread(stats.get("reference"), method_rows(rows, "reference")),
                 "vanilla": spread(stats.get("vanilla"), method_rows(rows, "vanilla")),
                 "variance_aware": spread(stats.get(va), method_rows(rows, va)),
                 "f_stat": stats.get("f_stat"), "f_crit": stats.get("f_crit"), "f_pvalue": stats.get("f_pvalue"),
                 "welch_pvalue": stats.get("welch_pvalue")}
        ex = [entry[m]["var_excess"] for m in METHODS]
        entry["excess_ratio"] = ex[0] / ex[1] if None not in ex and ex[1] > 0 else None
        kl = entry["vanilla"]["kl_mean"]
        entry["bandit_var_ratio_at_kl"] = bandit_ratio_at(bandit["points"], kl) if bandit and kl else None
        if prediction is not None:
            entry["prediction"] = against_prediction(rows, prediction, va)
        out[name] = entry
    return out


def weight_summary(population: Path) -> dict:
    """Per method: the KL weights σ²/mean σ² of the logged training samples (batch means from
    metrics.jsonl's variance_mean), clamped to the config's [floor, ceiling] as training does, for
    methods whose config weights by σ² (batch_mean)."""
    out = {}
    for method_dir in sorted((population / "runs").glob("*")):
        ws = []
        for run in sorted(method_dir.glob("seed_*")):
            cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
            var_cfg = (cfg.get("ppo") or {}).get("variance") or {}
            if var_cfg.get("weighting") != "batch_mean" or not (run / "samples.jsonl").exists():
                continue
            lo, hi = var_cfg.get("floor"), var_cfg.get("ceiling")  # the clamp training applied
            means = {}
            for line in (run / "metrics.jsonl").read_text().splitlines():
                m = json.loads(line) if line.strip() else {}
                if m.get("variance_mean"):
                    means[m["step"]] = m["variance_mean"]
            for line in (run / "samples.jsonl").read_text().splitlines():
                x = json.loads(line) if line.strip() else {}
                if x.get("valid") and means.get(x.get("step")):
                    w = x["variance"] / means[x["step"]]
                    w = w if lo is None else max(w, lo)
                    ws.append(w if hi is None else min(w, hi))
        if ws:
            out[method_dir.name] = {"n_samples": len(ws), "median": st.median(ws),
                                    **{f"share_{k}": sum(map(f, ws)) / len(ws) for k, f in (
                                        ("below_1", lambda w: w < 1), ("below_0.5", lambda w: w < 0.5),
                                        ("above_2", lambda w: w > 2))}}
    return out


def markdown(res: dict, command: str) -> str:
    f = lambda x, s=".3g": "—" if x is None else format(x, s)  # noqa: E731
    lines = ["# Oracle populations: where the spread comes from", "", f"Command: `{command}`", "",
             "| population | vary | method | n | mean gold | var | eval-noise var | excess var | KL | eval σ² |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in res.items():
        for m in ("reference", *METHODS):
            s = e[m]
            label = e.get("compared_method", m) if m == "variance_aware" else m
            lines.append(f"| {name} | {','.join(e['vary'])} | {label} | {s['n']} | {f(s['mean'], '.4f')} | {f(s['var'])} | "
                         f"{f(s['eval_noise_var'])} | {f(s['var_excess'])} | {f(s['kl_mean'])} | {f(s['eval_sigma2_mean'])} |")
    lines += ["", "| population | F = var(vanilla)/var(variance-aware) | F_crit | p | excess-variance ratio | "
              "Welch p | bandit's ratio at vanilla's KL |", "|---|---|---|---|---|---|---|"]
    for name, e in res.items():
        lines.append(f"| {name} | {f(e['f_stat'])} | {f(e['f_crit'])} | {f(e['f_pvalue'])} | {f(e['excess_ratio'])} | "
                     f"{f(e['welch_pvalue'])} | {f(e['bandit_var_ratio_at_kl'])} |")
    pred = [(name, e["prediction"]) for name, e in res.items() if e.get("prediction")]
    if pred:
        lines += ["", "Against the prediction on the same noise draws (the optimum at the prediction's point nearest "
                  "PPO's KL; ρ: Spearman of member k's gold against the optimum's draw-k return):", "",
                  "| population | PPO KL | prediction β / KL | PPO var ratio | optimum var ratio (same draws) | "
                  "ρ vanilla (p) | ρ variance-aware (p) | var PPO / optimum, vanilla |", "|---|---|---|---|---|---|---|---|"]
        for name, d in pred:
            v, w = d["vanilla"], d["variance_aware"]
            lines.append(f"| {name} | {f(d['ppo_kl_vanilla'])} | {f(d['prediction_beta'])} / {f(d['prediction_kl'])} | "
                         f"{f(d['ppo_var_ratio'])} | {f(d['optimum_var_ratio_same_draws'])} | "
                         f"{f(v['spearman_gold_vs_optimum'], '.2f')} ({f(v['spearman_pvalue'], '.2g')}) | "
                         f"{f(w['spearman_gold_vs_optimum'], '.2f')} ({f(w['spearman_pvalue'], '.2g')}) | "
                         f"{f(v['ppo_gold_var'] / v['optimum_return_var'])} |")
    weights = [(name, m, w) for name, e in res.items() for m, w in (e.get("weights") or {}).items()]
    if weights:
        lines += ["", "Per-sample KL weights w = σ²/mean σ² of the logged training samples:", "",
                  "| population | method | samples | median w | w < 1 | w < 0.5 | w > 2 |", "|---|---|---|---|---|---|---|"]
        for name, m, w in weights:
            lines.append(f"| {name} | {m} | {w['n_samples']} | {f(w['median'])} | {f(w['share_below_1'], '.0%')} | "
                         f"{f(w['share_below_0.5'], '.0%')} | {f(w['share_above_2'], '.0%')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", help="NAME=FOLDER, a committed oracle population")
    ap.add_argument("--bandit", type=Path, default=None, help="experiments/overoptimization/oracle_bandit.py's JSON")
    ap.add_argument("--prediction", type=Path, default=None,
                    help="`varpo theory predict`'s prediction.json: each population against the optimum on the same draws")
    ap.add_argument("--runs", action="append", default=[],
                    help="NAME=POPULATION_DIR: the population's own output, for the KL weights of its training samples")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    folders = {}
    for item in a.folders:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / "policies.jsonl").exists():
            ap.error(f"{item!r}: expected NAME=FOLDER with FOLDER/policies.jsonl and FOLDER/stats.json")
        folders[name] = Path(path)
    bandit = json.loads(a.bandit.read_text()) if a.bandit else None
    res = decompose(folders, bandit, json.loads(a.prediction.read_text()) if a.prediction else None)
    for item in a.runs:
        name, sep, path = item.partition("=")
        if not sep or name not in res or not (Path(path) / "runs").is_dir():
            ap.error(f"--runs {item!r}: expected NAME=DIR with NAME one of {list(res)} and DIR/runs/ a population's runs")
        res[name]["weights"] = weight_summary(Path(path))
    command = "python -m varpo.evaluation.oracle_decomposition " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "decomposition.json").write_text(json.dumps({"command": command, "populations": res}, indent=1) + "\n")
    (a.out / "decomposition.md").write_text(markdown(res, command))
    print(markdown(res, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
