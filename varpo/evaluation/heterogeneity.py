"""Table 4: the vanilla vs variance-aware comparison while the heterogeneity α of the σ² weights
(`ppo.variance.heterogeneity`, see varpo.ppo.core.variance_weights) is scaled.

Only the variance-aware policies depend on α, so a sweep under OUT is laid out as
  OUT/reward/                   the reward ensemble, trained once and shared (unless reward.path is set)
  OUT/base/                     the reference runs and the vanilla population
  OUT/scale_<α>/                the variance-aware population at α
each a `run_population` folder, written per policy as results arrive: a killed sweep resumes.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..config import ConfigError, load_config
from .population import REFERENCE, ensure_reward_model, run_population, summarize

SPREAD = ("std over the batch of the σ² weights w (metric weight_std), averaged over each policy's PPO steps, "
          "then over the variance-aware policies at that scale")


def parse_scales(text: str, option: str = "--scales") -> list[float]:
    """'0,0.5,1,2' -> [0.0, 0.5, 1.0, 2.0]; anything else is a ConfigError naming `option`."""
    items = [x.strip() for x in str(text).split(",")]
    if not any(items):
        raise ConfigError(f"{option}: empty; give comma-separated heterogeneity scales ≥ 0, e.g. 0,0.5,1,2")
    scales = []
    for item in items:
        if not item:
            raise ConfigError(f"{option}: empty entry in {text!r}; give comma-separated numbers, e.g. 0,0.5,1,2")
        try:
            a = float(item)
        except ValueError:
            raise ConfigError(f"{option}: {item!r} is not a number (in {text!r})") from None
        if not math.isfinite(a) or a < 0:
            raise ConfigError(f"{option}: {item!r} is not a finite number ≥ 0 (α scales log w; 0 is vanilla)")
        if a in scales:
            raise ConfigError(f"{option}: {item!r} is given twice (in {text!r})")
        scales.append(a)
    return scales


def scale_name(a: float) -> str:
    """Shortest exact spelling: 0, 0.5, 1, 2, 1e-05 (distinct floats give distinct names)."""
    return repr(float(a)).removesuffix(".0")


def scale_dir(out: Path, a: float) -> Path:
    return out / f"scale_{scale_name(a)}"


def _alpha_override(a: float) -> str:
    return f"ppo.variance.heterogeneity={scale_name(a)}"


def _check_methods(config_path, overrides: list[str], scales: list[float], baseline: str, method: str) -> None:
    """Fail before any training if the two methods cannot carry the sweep."""
    methods = load_config(config_path, overrides).evaluation.methods
    missing = [m for m in (baseline, method) if m not in methods]
    if missing:
        raise ConfigError(f"evaluation.methods: the heterogeneity sweep needs {missing} (have {sorted(methods)})")
    for a in scales:
        # the same order as a population job applies them: the method's overrides come last
        v = load_config(config_path, [*overrides, _alpha_override(a), *methods[method]]).ppo.variance
        if v.heterogeneity != a:
            raise ConfigError(f"evaluation.methods.{method} sets ppo.variance.heterogeneity ({v.heterogeneity}); "
                              f"the sweep sets it per scale, remove it from the method")
        if v.weighting == "none":
            raise ConfigError(f"evaluation.methods.{method} uses ppo.variance.weighting=none: α would change nothing")


def _mean_of(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.fmean(vals) if vals else None


def run_heterogeneity(config_path, overrides: list[str], scales: list[float], seeds: int, out: Path,
                      workers: int | None = None, baseline: str = "vanilla", method: str = "variance_aware") -> dict:
    """Run (or resume) the sweep under `out` and return the report written to heterogeneity.json."""
    from .stats import variance_ratio_table

    if not scales:
        raise ConfigError("--scales: no heterogeneity scales given")
    if seeds < 2:
        raise ConfigError(f"--seeds: a variance needs at least 2 policies per method, got {seeds}")
    _check_methods(config_path, overrides, scales, baseline, method)
    cfg = load_config(config_path, overrides)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [*overrides, *ensure_reward_model(cfg, out)]

    base = run_population(config_path, overrides, seeds, out / "base", workers=workers, methods=[baseline])
    per_scale = {a: run_population(config_path, [*overrides, _alpha_override(a)], seeds, scale_dir(out, a),
                                   workers=workers, methods=[method], reference=False) for a in scales}

    def rewards(rows, name):
        # sorted by seed: the row order of a resumed population depends on what was already done
        return [r["reward"] for r in sorted(rows, key=lambda r: r["seed"]) if r["method"] == name]

    sweep = {a: {baseline: rewards(base, baseline), method: rewards(rows, method)} for a, rows in per_scale.items()}
    spread = {a: s for a, rows in per_scale.items() if (s := _mean_of(rows, "weight_std_over_steps")) is not None}
    table = variance_ratio_table(sweep, a=baseline, b=method, spread=spread)
    base_summary = summarize(base)
    rows = []
    for row in table:
        a, pop = row["scale"], per_scale[row["scale"]]
        s = summarize(pop)[method]
        rows.append({**row, "spread": spread.get(a), "weight_mean": _mean_of(pop, "weight_mean_over_steps"),
                     f"mean_{baseline}": base_summary[baseline]["gold_reward_mean"], f"mean_{method}": s["gold_reward_mean"],
                     f"kl_{baseline}": base_summary[baseline]["kl_mean"], f"kl_{method}": s["kl_mean"],
                     "folder": str(scale_dir(out, a))})
    ref = base_summary[REFERENCE]
    return {
        "a": baseline, "b": method, "seeds": seeds, "scales": scales, "spread": SPREAD,
        "true_reward": cfg.evaluation.true_reward,
        "reference": {"reward_mean": ref["gold_reward_mean"], "reward_var": ref["gold_reward_var"],
                      "n_policies": ref["n_policies"], "folder": str(out / "base")},
        "rows": rows,
    }


def heterogeneity_markdown(report: dict, command: str) -> str:
    from .stats import variance_ratio_markdown

    a, b = report["a"], report["b"]

    def f(x, digits=4):
        return "–" if x is None else f"{x:.{digits}g}"

    lines = [
        "# Heterogeneity sweep (Table 4)", "", "```", command, "```", "",
        (f"Scale = α (`ppo.variance.heterogeneity`): the spread of log w is α times that of log σ²; "
         f"the same {report['seeds']} {a} policies and reference runs serve every row. "
         f"Spread of w: {report['spread']}. "
         f"Ratio = Var({a}) / Var({b}) of the per-policy true rewards ({report['true_reward']}), one-sided F-test."),
        "",
        variance_ratio_markdown(report["rows"], a, b, spread_label="Spread of w"),
        f"| Scale | Mean weight | Mean reward {a} | Mean reward {b} | KL {a} | KL {b} |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['scale']} | {f(r['weight_mean'])} | {f(r[f'mean_{a}'])} | {f(r[f'mean_{b}'])} | "
                     f"{f(r[f'kl_{a}'])} | {f(r[f'kl_{b}'])} |")
    ref = report["reference"]
    lines += ["", (f"Reference (π_ref) runs: mean reward {f(ref['reward_mean'])}, variance {f(ref['reward_var'])}, "
                   f"n = {ref['n_policies']}."), ""]
    return "\n".join(lines)
