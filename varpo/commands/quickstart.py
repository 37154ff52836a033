"""`varpo quickstart`: the embedded default end to end — testbed, reward ensemble, vanilla and
variance-aware PPO for a few seeds each, gold-reward evaluation, a results table."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .common import ConfigOpt, OutOpt, SetOpt, load

METHODS = {
    # vanilla PPO: every sample's KL penalty has weight 1
    "vanilla": ["ppo.variance.weighting=none"],
    # variance-aware PPO: weight σ²/mean(σ²) over the batch, so β keeps its meaning on average
    "variance_aware": ["ppo.variance.weighting=batch_mean"],
}


def register(app: typer.Typer) -> None:
    @app.command("quickstart")
    def quickstart(
        out: Path = OutOpt,
        seeds: int = typer.Option(3, "--seeds", min=1, help="policies per method"),
        config: Optional[Path] = ConfigOpt,
        set_: Optional[list[str]] = SetOpt,
    ) -> None:
        """Run the whole pipeline on the embedded default and write OUT/report.json."""
        run(out, seeds, config, set_ or [])


def run(out: Path, seeds: int, config, overrides: list[str]) -> dict:
    from ..config import load_config, save_resolved
    from ..evaluation.policy_eval import evaluate_policy
    from ..outputs import console, print_table, write_json
    from ..ppo import train_ppo
    from ..reward.train import train_reward_model
    from ..testbed import build_testbed, gold_reward

    t_start = time.perf_counter()
    base = load(config, overrides)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(base, out)
    console.rule("1/4 testbed")
    tb = build_testbed(base.testbed)
    console.rule("2/4 reward ensemble")
    rm_report = train_reward_model(base, out / "reward")
    rm_path = rm_report["model_path"]
    eval_prompts = list(tb.eval_prompts)[: base.evaluation.num_eval_prompts]

    def record(method: str, seed: int, result: dict) -> None:
        write_json(out / "policies" / method / f"seed_{seed}.json", {"method": method, "seed": seed, **result})

    console.rule("3/4 PPO")
    kls: dict[str, list[float]] = {m: [] for m in METHODS}
    for method, extra in METHODS.items():
        for seed in range(seeds):
            cfg = load_config(config, [*overrides, *extra, f"seed={seed}", "reward.type=ensemble", f"reward.path={rm_path}"])
            run_dir = out / "runs" / method / f"seed_{seed}"
            summary = train_ppo(cfg, run_dir)
            kls[method].append(summary["final"].get("kl_mean", float("nan")))
            ev = evaluate_policy(summary["policy_path"], eval_prompts, gold_reward, base.generation, seed=10_000 + seed)
            record(method, seed, {**ev, "kl_mean": kls[method][-1], "policy_path": summary["policy_path"]})
    console.rule("4/4 reference")
    for seed in range(seeds):
        ev = evaluate_policy(str(tb.model_path), eval_prompts, gold_reward, base.generation, seed=10_000 + seed)
        record("reference", seed, {**ev, "kl_mean": 0.0})

    import json

    def rewards(method):
        return [json.loads(p.read_text())["reward"] for p in sorted((out / "policies" / method).glob("seed_*.json"))]

    import statistics as st

    ref = rewards("reference")
    report = {"reference": {"gold_reward_mean": st.fmean(ref), "gold_reward_var": st.variance(ref) if len(ref) > 1 else 0.0,
                            "n_policies": len(ref)}}
    for method in METHODS:
        r = rewards(method)
        report[method] = {"gold_reward_mean": st.fmean(r), "gold_reward_var": st.variance(r) if len(r) > 1 else 0.0,
                          "n_policies": len(r), "kl_mean": st.fmean(kls[method])}
    report["reward_model"] = {k: rm_report[k] for k in ("num_heads", "ensemble_accuracy") if k in rm_report}
    report["seconds"] = time.perf_counter() - t_start
    write_json(out / "report.json", report)
    print_table("quickstart: gold reward of the policies (one number per policy, mean over eval prompts)",
                [{"method": m, "n_policies": report[m]["n_policies"], "gold_reward_mean": report[m]["gold_reward_mean"],
                  "gold_reward_var": report[m]["gold_reward_var"], "kl_mean": report[m].get("kl_mean", 0.0)}
                 for m in ["reference", *METHODS]])
    console.print(f"report: {out / 'report.json'}  ({report['seconds']:.0f} s)")
    return report
