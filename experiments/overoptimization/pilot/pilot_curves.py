"""Pilot curves of the interrupted pilot sweeps (seed 0 of each (method, β), 200 steps); run from the
repository root after the two pilot sweeps of experiments/overoptimization/README.md ("Pilot")."""
import json
from pathlib import Path

from varpo.evaluation.kl_match import curves, plateau_step, plot_curves

for name, src in (("deep", "runs/pilot_deep"), ("oracle", "runs/pilot_oracle")):
    cv = curves(Path(src) / "population")
    cv = {k: v for k, v in cv.items() if len(v["kl_mean"]) >= 200}
    out = Path("experiments/overoptimization/pilot")
    plot_curves(cv, out / f"{name}_curves.png")
    rows = {}
    for k, v in cv.items():
        pol = Path(src) / "population" / "policies" / k / "seed_0.json"
        ev = json.loads(pol.read_text()) if pol.exists() else {}
        w = lambda key, a, b: sum(v[key][a:b]) / (b - a)
        rows[k] = {"plateau_step_kl": plateau_step(v["kl_mean"]),
                   "kl_by_20_steps": [round(w("kl_mean", i, i + 20), 3) for i in range(0, 200, 20)],
                   "proxy_by_20_steps": [round(w("score_mean", i, i + 20), 3) for i in range(0, 200, 20)],
                   "gold_by_20_steps": [round(w("gold_mean", i, i + 20), 3) for i in range(0, 200, 20)],
                   "eval_gold": ev.get("reward"), "eval_kl": ev.get("kl")}
    (out / f"{name}_pilot.json").write_text(json.dumps({"source": src, "seeds": 1, "steps": 200, "runs": rows}, indent=1) + "\n")
    for k, r in rows.items(): print(name, k, r["plateau_step_kl"], r["eval_gold"], r["eval_kl"])
