"""KL matching per method (the paper's protocol: β tuned per method so that mean KL agrees) and
the pilot that sets the step count.

`run_kl_match` trains the target method at its β and every other method over a grid of β, `seeds`
policies each, as population members (resumable), and reads each policy's `kl`: KL(π ‖ π_ref) per
sequence of the final policy on its evaluation samples (varpo.evaluation.policy_eval). Per other
method, log(mean KL) is fitted linearly in log β over the grid and solved for the target's mean KL.
The pilot's training curves and their plateau come from varpo.evaluation.training_curves."""
from __future__ import annotations

import json
import math
import statistics as st
from pathlib import Path

from ..outputs import console, write_json
from .kl_sweep import method_name, with_defaults
from .training_curves import curves, plateau_step, plot_curves


def fit_beta(points: list[dict], target_kl: float) -> dict:
    """The β at which mean KL meets target_kl: log KL interpolated linearly in log β between the two
    grid points that bracket the target (KL falls as β rises, but not as one power law: the
    σ²-weighted penalty's KL levels off at large β), else extrapolated from the least-squares line
    through all points (`interpolated` False)."""
    import numpy as np

    pts = sorted((p for p in points if p["kl_mean"] and p["kl_mean"] > 0), key=lambda p: p["beta"])
    if len(pts) < 2:
        return {"beta": pts[0]["beta"] if pts else None, "fit": None, "interpolated": False}
    x, y = np.log([p["beta"] for p in pts]), np.log([p["kl_mean"] for p in pts])
    b, a = np.polyfit(x, y, 1)
    if b >= 0:  # KL does not fall with β here: no β can be read off
        return {"beta": None, "fit": {"a": float(a), "b": float(b)}, "interpolated": False}
    t = math.log(target_kl)
    for (x0, y0), (x1, y1) in zip(zip(x, y), zip(x[1:], y[1:])):
        if min(y0, y1) <= t <= max(y0, y1) and y0 != y1:
            return {"beta": float(math.exp(x0 + (t - y0) * (x1 - x0) / (y1 - y0))),
                    "fit": {"a": float(a), "b": float(b), "bracket": [float(math.exp(x0)), float(math.exp(x1))]},
                    "interpolated": True}
    return {"beta": float(math.exp((t - a) / b)), "fit": {"a": float(a), "b": float(b)}, "interpolated": False}


def run_kl_match(config_path, overrides: list[str], out: Path, target: str, target_beta: float, betas: list[float],
                 seeds: int, steps: int | None = None, workers: int | None = None,
                 methods: list[str] | None = None) -> dict:
    from ..config import ConfigError, load_config
    from .population import ensure_reward_model, run_population

    overrides = with_defaults(overrides, steps)
    cfg = load_config(config_path, overrides)
    names = list(methods or cfg.evaluation.methods)
    if target not in names:
        raise ConfigError(f"--target {target!r}: not among the methods {names}")
    out.mkdir(parents=True, exist_ok=True)
    overrides = [*overrides, *ensure_reward_model(cfg, out)]
    others = [m for m in names if m != target]
    grid = {method_name(target, target_beta): [*cfg.evaluation.methods[target], f"ppo.kl.beta={target_beta}"]}
    grid.update({method_name(m, b): [*cfg.evaluation.methods[m], f"ppo.kl.beta={b}"] for m in others for b in betas})
    rows = run_population(config_path, [*overrides, f"evaluation.methods={json.dumps(grid)}"], seeds,
                          out / "population", workers=workers, reference=False)

    def point(method: str, beta: float) -> dict:
        kl = [r["kl"] for r in rows if r["method"] == method_name(method, beta)]
        return {"method": method, "beta": beta, "n": len(kl), "kl_mean": st.fmean(kl),
                "kl_se": st.stdev(kl) / math.sqrt(len(kl)) if len(kl) > 1 else None, "kl_median": st.median(kl),
                "gold_mean": st.fmean(r["reward"] for r in rows if r["method"] == method_name(method, beta))}

    tgt = point(target, target_beta)
    points = [point(m, b) for m in others for b in betas]
    matched = {m: fit_beta([p for p in points if p["method"] == m], tgt["kl_mean"]) for m in others}
    cv = curves(out / "population")
    plot_curves(cv, out / "curves.png")
    beta = {target: target_beta, **{m: v["beta"] for m, v in matched.items()}}
    res = {"definition": "kl: KL(pi || pi_ref) per sequence of the final policy, mean over its evaluation samples",
           "steps": cfg.ppo.steps, "seeds": seeds, "target": tgt, "points": points, "fit": matched, "beta": beta,
           "evaluation_methods": {m: [*cfg.evaluation.methods[m], f"ppo.kl.beta={b:.6g}"] for m, b in beta.items()
                                  if b is not None},
           "plateau_step": {name: plateau_step(c["kl_mean"]) for name, c in cv.items()}}
    write_json(out / "kl_match.json", res)
    console.print(f"kl-match: wrote {out / 'kl_match.json'} and {out / 'curves.png'}")
    return res


def read_kl_match(path: Path, methods: dict[str, list[str]]) -> list[str]:
    """The override giving every method its matched β from a kl_match.json: evaluation.methods with
    ppo.kl.beta appended per method (a method the file does not cover is an error)."""
    from ..config import ConfigError

    try:
        res = json.loads(Path(path).read_text())
        beta = res["beta"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"--kl-match {path}: not a kl_match.json with a 'beta' table ({exc})") from None
    missing = [m for m in methods if beta.get(m) is None]
    if missing:
        raise ConfigError(f"--kl-match {path}: no β for method(s) {missing} (has {sorted(k for k, v in beta.items() if v)})")
    return [f"evaluation.methods={json.dumps({m: [*o, f'ppo.kl.beta={beta[m]:.6g}'] for m, o in methods.items()})}"]
