"""`varpo kl-sweep`: gold and proxy reward against KL over a sweep of β (over-optimization check)."""
from __future__ import annotations

from pathlib import Path

import typer

from ..evaluation.kl_sweep import DEFAULT_BETAS, DEFAULT_OVERRIDES, DEFAULT_STEPS
from .common import ConfigOpt, OutOpt, SetOpt


def register(app: typer.Typer) -> None:
    @app.command("kl-sweep")
    def kl_sweep(
        out: Path = OutOpt,
        betas: str = typer.Option(",".join(f"{b:g}" for b in DEFAULT_BETAS), "--betas",
                                  help="comma-separated KL coefficients β"),
        steps: int = typer.Option(DEFAULT_STEPS, "--steps", min=0, help="PPO steps per policy (0: the config's "
                                  "ppo.steps; --set ppo.steps=N wins)"),
        seeds: int = typer.Option(2, "--seeds", "-n", min=1, help="policies per (method, β)"),
        config: Path | None = ConfigOpt,
        set_: list[str] | None = SetOpt,
        methods: list[str] | None = typer.Option(None, "--method", help="only these methods (default: vanilla and variance_aware)"),
        workers: int | None = typer.Option(None, "--workers", min=1, help="worker processes (default: cores)"),
        best_of: int = typer.Option(0, "--best-of-n", min=0, help="also best-of-n from the reference up to this n (0: off)"),
        seed: int = typer.Option(0, "--seed", min=0, help="another independent sweep: its own reward ensemble "
                                 "(seed S, member seeds 100·S + k) and policies (population members 1000·S + k)"),
    ) -> None:
        """Train vanilla and variance-aware policies at each β on the over-optimization task (default
        config: varpo/defaults/overopt.yaml, with which, lacking reward.path, it first trains a deep
        ensemble of five whole backbones, reward_training.ensemble_kind=deep, unless --set says
        otherwise; 80 PPO steps) and write OUT/kl_sweep.json (points: method, beta, kl_mean, gold_mean,
        gold_se, proxy_mean; kl_mean is each policy's KL(π ‖ π_ref) per sequence on its evaluation
        samples, averaged) and OUT/kl_sweep.png (gold and proxy vs KL)."""
        from ..config import ConfigError
        from ..defaults import OVEROPT, config_or_default, is_empty_config
        from ..evaluation.kl_sweep import run_kl_sweep
        from ..outputs import print_table

        try:
            beta_list = [float(b) for b in betas.split(",") if b.strip()]
        except ValueError:
            raise ConfigError(f"--betas {betas!r}: expected comma-separated numbers, e.g. 0.03,0.1,0.3") from None
        if not beta_list or any(b < 0 for b in beta_list):
            raise ConfigError(f"--betas {betas!r}: expected at least one β ≥ 0")
        from ..config import load_config
        from ..preflight import check_population

        packaged = config is None or is_empty_config(config)  # an empty file means what no --config means
        check_population(load_config(config_or_default(config, OVEROPT),
                                     [*(DEFAULT_OVERRIDES if packaged else ()), *(set_ or [])]))
        res = run_kl_sweep(config_or_default(config, OVEROPT), set_ or [], out, beta_list, seeds, methods=methods,
                           workers=workers, best_of=best_of, steps=steps or None,
                           defaults=DEFAULT_OVERRIDES if packaged else (), seed=seed)
        print_table("kl-sweep: gold and proxy vs KL", [
            {k: p.get(k) for k in ("method", "beta", "kl_mean", "gold_mean", "gold_se", "proxy_mean")} for p in res["points"]])
        for m, o in res["overoptimization"].items():
            if o:
                typer.echo(f"{m}: gold peaks at KL {o['peak_kl']:.2f} (β={o['peak_beta']}), falls by "
                           f"{o['drop']:.4f} ({o['drop_in_se'] or 0:.1f} SE) by KL {o['last_kl']:.2f}: "
                           f"{'over-optimized' if o['overoptimized'] else 'no over-optimization shown'}")
