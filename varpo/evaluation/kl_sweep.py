"""Gold reward against KL over a sweep of β (Gao et al. 2022): does optimising the proxy
over-optimize it? For every method and β, `seeds` policies are trained and evaluated like a
population member (varpo.evaluation.population: gold reward and the proxy on the same evaluation
samples), and reduced to one point {method, beta, kl_mean, gold_mean, gold_se, proxy_mean}.
Best-of-n from the reference (KL = log n − (n − 1)/n) is an optional cheap screen of the same
question without any training."""
from __future__ import annotations

import math
import statistics as st
import time
from pathlib import Path

from ..outputs import console, write_json

# measured (experiments/overoptimization/README.md, "kl-sweep defaults"): a deep ensemble (five
# whole backbones from their own seeds) is the proxy PPO over-optimizes reliably on this task. At 80
# steps its vanilla policies at β = 0.01 leave the pairs' support (KL 30-60, gold near 0) while
# β = 0.1 sits at the gold's peak (KL ≈ 4) and β = 1 below it (KL < 1), so the peak is interior. The
# prior-heads ensemble these defaults used before stopped over-optimizing on later code (gold rising
# monotonically to β = 0.01), and the heads ensemble's fall is bimodal over seeds.
DEFAULT_BETAS = (0.01, 0.1, 1.0)
DEFAULT_STEPS = 80  # 0: the config's ppo.steps
# with the default config, the ensemble a sweep trains when reward.path is not set (`varpo kl-sweep`
# without --config; an override of the user's wins)
DEFAULT_OVERRIDES = ("reward_training.ensemble_kind=deep", "reward_training.lora.enabled=false",
                     "reward_training.num_heads=5", "reward_training.backbone_lr=3e-3")


def seed_overrides(seed: int) -> list[str]:
    """`--seed S`: the run's seed (bootstrap, data order, LoRA init) and the ensemble's member
    seeds (head_seed, 100·S + k) change, so each S trains its own reward ensemble; the policies are
    population members 1000·S + k (see `run_kl_sweep`). S = 0 is the sweep without --seed."""
    return [f"seed={seed}", f"reward_training.head_seed={100 * seed}"] if seed else []


def method_name(method: str, beta: float) -> str:
    return f"{method}@beta={beta:g}"


def _point(method: str, beta: float | None, rows: list[dict]) -> dict:
    """One point: means over seeds; gold_se combines the spread over seeds and each policy's
    evaluation noise (the larger of the two estimates of the mean's standard error)."""
    gold = [r["reward"] for r in rows]
    n = len(gold)
    se_seeds = st.stdev(gold) / math.sqrt(n) if n > 1 else 0.0
    eval_se = [r["reward_se"] for r in rows if r.get("reward_se") is not None]
    se_eval = math.sqrt(sum(s * s for s in eval_se)) / n if eval_se else 0.0
    proxy = [r["proxy_mean"] for r in rows if r.get("proxy_mean") is not None]
    rho = [r["calibration"]["spearman_sigma2_sqerr"] for r in rows
           if (r.get("calibration") or {}).get("spearman_sigma2_sqerr") is not None]
    growth = [r["sigma2_growth"] for r in rows if r.get("sigma2_growth") is not None]
    return {"method": method, "beta": beta, "n_seeds": n,
            # KL(π ‖ π_ref) per sequence on the evaluation samples (`kl`); rows made before it existed
            # carry only the last training step's batch estimate (`kl_mean`)
            "kl_mean": st.fmean(r["kl"] if r.get("kl") is not None else (r.get("kl_mean") or 0.0) for r in rows),
            "gold_mean": st.fmean(gold), "gold_se": max(se_seeds, se_eval),
            "proxy_mean": st.fmean(proxy) if proxy else None,
            "spearman_sigma2_sqerr": st.fmean(rho) if rho else None,
            "sigma2_growth": st.fmean(growth) if growth else None}


def overoptimization(points: list[dict], method: str) -> dict | None:
    """Where a method's gold peaks along KL and how far it falls by the largest KL, in standard
    errors: the over-optimization criterion (peak at an interior β, fall > 3 SE)."""
    pts = sorted((p for p in points if p["method"] == method), key=lambda p: p["kl_mean"])
    if len(pts) < 2:
        return None
    peak = max(pts, key=lambda p: p["gold_mean"])
    last = pts[-1]
    drop = peak["gold_mean"] - last["gold_mean"]
    se = math.hypot(peak["gold_se"], last["gold_se"])
    interior = peak is not pts[-1] and peak is not pts[0]
    proxy_rises = all((b["proxy_mean"] or 0) >= (a["proxy_mean"] or 0) - 1e-9 for a, b in zip(pts, pts[1:]))
    return {"peak_beta": peak["beta"], "peak_kl": peak["kl_mean"], "peak_gold": peak["gold_mean"],
            "last_kl": last["kl_mean"], "last_gold": last["gold_mean"], "drop": drop,
            "drop_in_se": drop / se if se > 0 else None, "peak_is_interior": interior,
            "proxy_rises_monotonically": proxy_rises,
            "overoptimized": bool(interior and se > 0 and drop / se > 3)}


def best_of_n(cfg, n_max: int, num_prompts: int, seed: int = 0) -> list[dict]:
    """Best-of-n points for n = 1, 2, 4, …, n_max: n reference samples per prompt, the one the
    proxy scores highest kept, its gold and proxy averaged over prompts."""
    import torch

    from ..evaluation.policy_eval import sample_responses
    from ..evaluation.population import eval_prompts, true_reward_fn
    from ..ppo import resolve_sources
    from ..scoring import build_scorer

    prompts = eval_prompts(cfg)[:num_prompts]
    policy_path = resolve_sources(cfg)[0]
    rep = [p for p in prompts for _ in range(n_max)]
    ys = sample_responses(policy_path, rep, cfg.generation, seed=2_000_000 + seed, batch_size=256)
    proxy = build_scorer(cfg).score(rep, ys).score.double().view(len(prompts), n_max)
    gold = torch.tensor(true_reward_fn(cfg)(rep, ys), dtype=torch.float64).view(len(prompts), n_max)
    out, n = [], 1
    while n <= n_max:
        best = proxy[:, :n].argmax(1)
        g = gold[torch.arange(len(prompts)), best]
        out.append({"method": "best_of_n", "beta": None, "n": n, "n_seeds": 1,
                    "kl_mean": math.log(n) - (n - 1) / n, "gold_mean": float(g.mean()),
                    "gold_se": float(g.std() / math.sqrt(len(g))),
                    "proxy_mean": float(proxy[torch.arange(len(prompts)), best].mean())})
        n *= 2
    return out


def plot_sweep(points: list[dict], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_g, ax_p) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, m in enumerate(dict.fromkeys(p["method"] for p in points)):
        pts = sorted((p for p in points if p["method"] == m), key=lambda p: p["kl_mean"])
        kl = [p["kl_mean"] for p in pts]
        ax_g.errorbar(kl, [p["gold_mean"] for p in pts], yerr=[p["gold_se"] for p in pts], marker="o",
                      capsize=3, color=f"C{i}", label=m)
        if all(p["proxy_mean"] is not None for p in pts):
            ax_p.plot(kl, [p["proxy_mean"] for p in pts], marker="o", color=f"C{i}", label=m)
        for p in pts:
            if p.get("beta") is not None:
                ax_g.annotate(f"β={p['beta']:g}", (p["kl_mean"], p["gold_mean"]), fontsize=7,
                              textcoords="offset points", xytext=(3, 3))
    ax_g.set(xlabel="KL(π ‖ π_ref) per sequence (nats)", ylabel="gold reward (± SE)", title="gold vs KL")
    ax_p.set(xlabel="KL(π ‖ π_ref) per sequence (nats)", ylabel="proxy reward", title="proxy vs KL")
    for ax in (ax_g, ax_p):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def with_defaults(overrides: list[str], steps: int | None, defaults: tuple[str, ...] = ()) -> list[str]:
    """The sweep's defaults, then ppo.steps, then the caller's overrides: later ones win."""
    return [*defaults, *([f"ppo.steps={steps}"] if steps else []), *overrides]


def run_kl_sweep(config_path, overrides: list[str], out: Path, betas: list[float], seeds: int,
                 methods: list[str] | None = None, workers: int | None = None, best_of: int = 0,
                 best_of_prompts: int = 64, steps: int | None = None, defaults: tuple[str, ...] = (),
                 seed: int = 0) -> dict:
    """Train/evaluate every (method, β, seed) as a population member under OUT/population (resumable),
    then write OUT/kl_sweep.json and OUT/kl_sweep.png. `steps`: PPO steps per policy (None: the
    config's ppo.steps); `defaults`: overrides applied before the caller's (DEFAULT_OVERRIDES for the
    default config); an override in `overrides` wins over both."""
    from ..config import ConfigError, load_config
    from .population import REFERENCE, ensure_reward_model, run_population
    from .provenance import run_context

    overrides = with_defaults([*seed_overrides(seed), *overrides], steps, defaults)
    cfg = load_config(config_path, overrides)
    names = list(methods or cfg.evaluation.methods)
    unknown = set(names) - set(cfg.evaluation.methods)
    if unknown:
        raise ConfigError(f"--method: {sorted(unknown)} not in evaluation.methods ({sorted(cfg.evaluation.methods)})")
    out.mkdir(parents=True, exist_ok=True)
    overrides = [*overrides, *ensure_reward_model(cfg, out)]
    swept = {method_name(m, b): [*cfg.evaluation.methods[m], f"ppo.kl.beta={b}"] for m in names for b in betas}
    import json

    sweep_overrides = [*overrides, f"evaluation.methods={json.dumps(swept)}"]
    t0 = time.perf_counter()
    rows = run_population(config_path, sweep_overrides, seeds, out / "population", workers=workers,
                          first_seed=1000 * seed)
    points = [_point(m, b, [r for r in rows if r["method"] == method_name(m, b)]) for m in names for b in betas]
    ref_rows = [r for r in rows if r["method"] == REFERENCE]
    if ref_rows:
        points.append({**_point(REFERENCE, None, ref_rows), "kl_mean": 0.0})
    if best_of > 1:
        points += best_of_n(load_config(config_path, overrides), best_of, best_of_prompts)
    digests = [r.get("policy_sha256") for r in rows if r.get("policy_sha256") and r["method"] != REFERENCE]
    if len(set(digests)) < len(digests):  # two (method, β, seed) members with one policy: a bug, not a result
        raise RuntimeError(f"{out}/population: two members share one policy's weights (policy_sha256)")
    result = {"task": cfg.testbed.task, "reward": cfg.reward.type, "betas": list(betas), "seeds": seeds,
              "seed": seed, "member_seeds": [1000 * seed, 1000 * seed + seeds - 1],
              "ensemble_kind": cfg.reward_training.ensemble_kind if cfg.reward.type == "ensemble" else None,
              "steps": cfg.ppo.steps, "seconds": time.perf_counter() - t0, "context": run_context(),
              "points": points, "overoptimization": {m: overoptimization(points, m) for m in [*names, "best_of_n"]
                                                     if any(p["method"] == m for p in points)}}
    from .training_curves import curves, plateau_step, plot_curves

    cv = curves(out / "population")  # the pilot view: KL, proxy and gold per training step
    if cv:
        plot_curves(cv, out / "curves.png")
        result["plateau_step"] = {name: plateau_step(c["kl_mean"]) for name, c in cv.items()}
    write_json(out / "kl_sweep.json", result)
    plot_sweep(points, out / "kl_sweep.png", title=f"task={cfg.testbed.task}, reward={cfg.reward.type}, "
               f"{seeds} seed(s) per point")
    console.print(f"kl-sweep: wrote {out / 'kl_sweep.json'} and {out / 'kl_sweep.png'}")
    return result
