"""Pilot curves of the interrupted pilot sweeps (seed 0 of each (method, β), 200 steps); run from the
repository root after the two pilot sweeps of experiments/overoptimization/README.md ("Pilot")."""
import json
from pathlib import Path

from varpo.evaluation.training_curves import curves, plateau_step, plot_curves


def window_means(values: list[float], width: int = 20) -> list[float]:
    return [round(sum(values[i : i + width]) / width, 3) for i in range(0, len(values) - width + 1, width)]


def main() -> None:
    out = Path("experiments/overoptimization/pilot")
    for name, src in (("deep", "runs/pilot_deep"), ("oracle", "runs/pilot_oracle")):
        cv = {k: v for k, v in curves(Path(src) / "population").items() if len(v["kl_mean"]) >= 200}
        plot_curves(cv, out / f"{name}_curves.png")
        rows = {}
        for k, v in cv.items():
            pol = Path(src) / "population" / "policies" / k / "seed_0.json"
            ev = json.loads(pol.read_text()) if pol.exists() else {}
            rows[k] = {"plateau_step_kl": plateau_step(v["kl_mean"]), "kl_by_20_steps": window_means(v["kl_mean"]),
                       "proxy_by_20_steps": window_means(v["score_mean"]), "gold_by_20_steps": window_means(v["gold_mean"]),
                       "eval_gold": ev.get("reward"), "eval_kl": ev.get("kl")}
            print(name, k, rows[k]["plateau_step_kl"], ev.get("reward"), ev.get("kl"))
        (out / f"{name}_pilot.json").write_text(json.dumps({"source": src, "seeds": 1, "steps": 200, "runs": rows},
                                                           indent=1) + "\n")


if __name__ == "__main__":
    main()
