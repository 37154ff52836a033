"""`varpo kl-match`: β per method so that mean KL agrees (the paper's protocol), and the pilot curves."""
from __future__ import annotations

from pathlib import Path

import typer

from .common import ConfigOpt, OutOpt, SetOpt


def register(app: typer.Typer) -> None:
    @app.command("kl-match")
    def kl_match(
        out: Path = OutOpt,
        target: str = typer.Option("vanilla", "--target", help="the method whose β is fixed"),
        target_beta: float = typer.Option(..., "--target-beta", help="its β"),
        betas: str = typer.Option(..., "--betas", help="comma-separated β grid for every other method"),
        seeds: int = typer.Option(4, "--seeds", "-n", min=1, help="policies per (method, β)"),
        steps: int = typer.Option(0, "--steps", min=0, help="PPO steps per policy (0: the config's ppo.steps)"),
        config: Path | None = ConfigOpt,
        set_: list[str] | None = SetOpt,
        workers: int | None = typer.Option(None, "--workers", min=1, help="worker processes (default: cores)"),
    ) -> None:
        """Train the target method at --target-beta and every other method at each β of --betas
        (`seeds` each, resumable under OUT/population), measure each policy's KL(π ‖ π_ref) per
        sequence on its evaluation samples, fit log KL against log β per method and solve for the
        target's mean KL. Writes OUT/kl_match.json (beta per method, read by `varpo population
        --kl-match`; plateau_step per run: the pilot's step count) and OUT/curves.png (KL, proxy and
        gold per step, mean over seeds). Default config: the over-optimization task."""
        from ..config import ConfigError
        from ..defaults import OVEROPT
        from ..evaluation.kl_match import run_kl_match
        from ..outputs import print_table

        try:
            grid = [float(b) for b in betas.split(",") if b.strip()]
        except ValueError:
            raise ConfigError(f"--betas {betas!r}: expected comma-separated numbers, e.g. 0.02,0.03,0.05") from None
        if not grid or any(b <= 0 for b in [*grid, target_beta]):
            raise ConfigError(f"--betas {betas!r} / --target-beta {target_beta}: expected β > 0")
        res = run_kl_match(config or OVEROPT, set_ or [], out, target, target_beta, grid, seeds, steps or None, workers)
        print_table(f"KL per sequence on evaluation samples ({seeds} seeds; target {target} β = {target_beta:g}: "
                    f"{res['target']['kl_mean']:.3f})", [
            {k: p[k] for k in ("method", "beta", "n", "kl_mean", "kl_se", "kl_median", "gold_mean")}
            for p in [res["target"], *res["points"]]])
        for m, f in res["fit"].items():
            typer.echo(f"{m}: β = {f['beta']}" + ("" if f["interpolated"] else " (outside the grid: extrapolated)"))
