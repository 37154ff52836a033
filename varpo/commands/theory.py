"""`varpo theory bandit`: the paper's Section 2 model (Theorems 2.4 and 2.7, Figs. 3–4).

Writes OUT/theory.json (inputs echoed, closed-form and Monte Carlo risks with standard errors, the
KL-regularised policies' return distributions and underperformance, the heterogeneity comparison)
and OUT/fig3_returns.png, OUT/fig4_heterogeneity.png, OUT/thm24_risks.png.
"""
from __future__ import annotations

import math
from pathlib import Path

import typer

from .common import ConfigOpt, OutOpt, SetOpt

theory_app = typer.Typer(help="The paper's theory, simulated (Section 2).", no_args_is_help=True)


def parse_vector(text: str, option: str, n: int | None = None) -> list[float]:
    """Comma-separated floats (ConfigError naming the option on anything else)."""
    from ..config import ConfigError

    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated numbers, e.g. 0.6,0.8,1.0") from None
    if not all(math.isfinite(v) for v in vals):
        raise ConfigError(f"{option} {text!r}: every value must be finite")
    if n is not None and len(vals) != n:
        raise ConfigError(f"{option} {text!r}: expected {n} values, got {len(vals)}")
    return vals


@theory_app.command("bandit")
def bandit(
    out: Path = OutOpt,
    true_rewards: str = typer.Option("0.6,0.8,1.0", "--true-rewards", help="r*, one value per arm"),
    variances: str = typer.Option("2,0.1,0.1", "--variances", help="σ² per arm (> 0); Σ = diag(σ²)"),
    n_draws: int = typer.Option(100_000, "--n-draws", min=1, help="Monte Carlo draws r̂ ~ N(r*, Σ)"),
    seed: int = typer.Option(0, "--seed"),
    beta: float = typer.Option(1.0, "--beta", help="KL coefficient of the vanilla softmax policy (Thm 2.7)"),
    beta_va: float = typer.Option(None, "--beta-va", help="variance-aware β (default: by --beta-rule)"),
    beta_rule: str = typer.Option("kl", "--beta-rule",
                                  help="kl: match the vanilla policy's mean KL(π‖π_ref); mean: β/mean(σ²)"),
    eps: float = typer.Option(1.0, "--eps", help="step size ε of the linear policies (risks do not depend on it)"),
    narrow: str = typer.Option("0.5,1.0", "--narrow", help="Fig. 4: narrow interval LO,HI for the per-arm σ²"),
    wide: str = typer.Option("0.05,2.0", "--wide", help="Fig. 4: wide interval LO,HI for the per-arm σ²"),
    repeats: int = typer.Option(50, "--repeats", min=1, help="Fig. 4: variance draws per interval"),
    draws_per_repeat: int = typer.Option(2_000, "--draws-per-repeat", min=10, help="Fig. 4: r̂ draws per repeat"),
) -> None:
    """Theorem 2.4 risks (closed form vs Monte Carlo), Theorem 2.7 policies (Fig. 3) and the
    heterogeneity comparison (Fig. 4) for a Gaussian bandit. The defaults are the paper's 3-arm
    illustration: arm 1 is truly the worst but has the widest interval, so its estimate is often
    spuriously the highest."""
    from ..config import ConfigError
    from ..outputs import console, print_table, write_json
    from ..theory.bandit import run_bandit
    from ..theory.plots import fig3, fig4, risks_plot

    r = parse_vector(true_rewards, "--true-rewards")
    s2 = parse_vector(variances, "--variances")
    if len(s2) != len(r):
        raise ConfigError(f"--variances {variances!r}: expected {len(r)} values (one per arm, "
                          f"like --true-rewards), got {len(s2)}")
    if any(v <= 0 for v in s2):
        raise ConfigError(f"--variances {variances!r}: every variance must be > 0")
    if beta_rule not in ("kl", "mean"):
        raise ConfigError(f"--beta-rule {beta_rule!r}: expected kl or mean")
    for opt, v in (("--beta", beta), ("--beta-va", beta_va), ("--eps", eps)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{opt} {v}: must be finite and > 0")
    intervals = {}
    for opt, text in (("--narrow", narrow), ("--wide", wide)):
        lo, hi = parse_vector(text, opt, 2)
        if not 0 < lo <= hi:
            raise ConfigError(f"{opt} {text!r}: expected 0 < LO ≤ HI")
        intervals[opt] = (lo, hi)
    try:
        res = run_bandit(r, s2, n_draws=n_draws, seed=seed, beta=beta, beta_va=beta_va, beta_rule=beta_rule, eps=eps,
                         narrow=intervals["--narrow"], wide=intervals["--wide"], repeats=repeats,
                         draws_per_repeat=draws_per_repeat)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    returns = res["kl_regularised"].pop("_returns")
    het = res["heterogeneity"]
    files = [fig3(res, returns, out / "fig3_returns.png"), risks_plot(res, out / "thm24_risks.png"),
             fig4(het, res["kl_regularised"]["reference_return"], out / "fig4_heterogeneity.png")]
    het.pop("_pooled")
    res["files"] = [p.name for p in files]
    write_json(out / "theory.json", res)

    print_table("Theorem 2.4: P(⟨d, r*⟩ < 0)", [
        {"policy": k, "closed_form": res["risk_closed_form"][k], "monte_carlo": res["risk_monte_carlo"][k],
         "mc_se": res["risk_monte_carlo_se"][k], "z": res["risk_agreement_z"][k]} for k in res["risk_closed_form"]])
    print_table(f"Theorem 2.7: KL-regularised policies (π_ref uniform, ⟨π_ref, r*⟩ = "
                f"{res['kl_regularised']['reference_return']:.4g})", [
        {"policy": k, "beta": p["beta"], "mean_kl": p["mean_kl"], "return_mean": p["return_mean"],
         "return_std": p["return_std"], "P(under)": p["underperformance"], "se": p["underperformance_se"]}
        for k, p in res["kl_regularised"]["policies"].items()])
    print_table("Fig. 4: per-arm σ² from a narrow and a wide interval (means over repeats)", [
        {"setting": k, "interval": str(het["intervals"][k]), "linear_risk_v": s["mean_over_repeats"]["linear_risk_vanilla"],
         "linear_risk_va": s["mean_over_repeats"]["linear_risk_variance_aware"],
         "var_ratio_va": s["variance_aware_variance_ratio"],
         "P(under)_v": s["mean_over_repeats"]["vanilla_underperformance"],
         "P(under)_va": s["mean_over_repeats"]["variance_aware_underperformance"]}
        for k, s in het["settings"].items()])
    console.print(f"theory: wrote {out / 'theory.json'} and {', '.join(res['files'])}")


@theory_app.command("predict")
def predict(
    out: Path = OutOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    betas: str = typer.Option("0.02,0.03,0.05,0.07,0.1,0.15,0.2,0.3,0.5", "--betas", help="vanilla KL coefficients"),
    prompts: int = typer.Option(16, "--prompts", min=1, help="evaluation prompts"),
    samples: int = typer.Option(1024, "--samples", min=2, help="reference samples per prompt (M: KL ≤ log M)"),
    draws: int = typer.Option(200, "--draws", min=3, help="oracle noise draws (noise seeds 0..D−1)"),
    seed: int = typer.Option(0, "--seed", help="seed of the reference sampling"),
) -> None:
    """The theory's prediction on the task's real responses: M reference samples per prompt,
    reweighted by importance to vanilla's KL-regularised optimum (∝ π_ref exp(r̂/β)) and to the fixed
    point of variance-aware's σ²-weighted penalty, KL matched per noise draw of the oracle; the
    variance ratio of the true return over draws, risk and effective sample size against sequence
    KL. Default: the over-optimization task with reward.type=oracle. Writes OUT/prediction.json and
    OUT/prediction.png; several minutes on 2 cores."""
    from ..config import ConfigError, load_config
    from ..defaults import OVEROPT
    from ..outputs import console, print_table
    from ..theory.response_prediction import run_prediction

    bs = parse_vector(betas, "--betas")
    if any(b <= 0 for b in bs):
        raise ConfigError(f"--betas {betas!r}: every β must be > 0")
    cfg = load_config(config or OVEROPT, ["reward.type=oracle", *(set_ or [])])
    if cfg.reward.type != "oracle":
        raise ConfigError(f"--set reward.type={cfg.reward.type}: the prediction is for the oracle (its σ² and noise "
                          "draws are known); leave reward.type=oracle")
    res = run_prediction(cfg, out, bs, prompts, samples, draws, seed)
    print_table(f"prediction on {prompts} prompts × {samples} reference samples, {draws} oracle noise draws "
                f"(reference gold {res['reference_return']:.4f}; KL ≤ log M = {res['max_sample_kl']:.2f})", [
        {"β": p["beta"], "KL": p["vanilla"]["kl"], "var ratio": p["var_ratio"],
         "95% CI": "–" if not p["var_ratio_ci"] else f"[{p['var_ratio_ci'][0]:.2f}, {p['var_ratio_ci'][1]:.2f}]",
         "risk v/va": f"{p['vanilla']['risk']:.2f}/{p['variance_aware']['risk']:.2f}",
         "gold v/va": f"{p['vanilla']['return_mean']:.3f}/{p['variance_aware']['return_mean']:.3f}",
         "ESS 5%": min(p["vanilla"]["ess_p5"], p["variance_aware"]["ess_p5"]), "matched": p["kl_matched_share"]}
        for p in res["points"]])
    b = res["best"]
    console.print("largest predicted effect the samples can carry: " + (
        "none (no point with enough effective samples and matched KL)" if b is None else
        f"β = {b['beta']:g} (variance-aware β ≈ {b['beta_va_median']:.3g}), KL {b['kl']:.2f}, variance ratio "
        f"{b['var_ratio']:.2f}, risk {b['risk_vanilla']:.3f} vs {b['risk_variance_aware']:.3f}"))
    console.print(f"theory: wrote {out / 'prediction.json'} and {out / 'prediction.png'}")


def register(app: typer.Typer) -> None:
    app.add_typer(theory_app, name="theory")
