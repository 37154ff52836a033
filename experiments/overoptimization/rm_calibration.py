"""Does each reward-ensemble kind's σ² track its error, on reference samples and on samples of trained
policies? (issue 12, Done-when: a learned kind with Spearman(σ², squared error) > 0, p < 0.01 on
policy samples.)

For every policy (the reference LM, or a PPO-trained policy folder), responses to the over-optimization
task's evaluation prompts are sampled once (seeded); every reward model scores the same responses;
`varpo.reward.report.sigma2_error_calibration` maps each model's score affinely onto the gold scale and
gives Spearman ρ(σ², squared error) with its p-value, the error by σ² quartile and σ²'s p90/p10.
Written to OUT/calibration.json with the command and the machine.

    python experiments/overoptimization/rm_calibration.py --rm heads=runs/rm_heads/reward_model --rm deep=runs/rm_deep/reward_model \
        --policy reference --policy vanilla_b0.01=runs/sweep/population/runs/vanilla@beta=0.01/seed_0/policy \
        --prompts 500 --samples 2 --out experiments/overoptimization/calibration
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _named(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep and name != "reference":
            raise SystemExit(f"--{what} {it!r}: expected NAME=PATH")
        out[name] = path or None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rm", action="append", required=True, help="KIND=reward-model folder (repeatable)")
    ap.add_argument("--policy", action="append", required=True,
                    help="NAME=policy folder, or 'reference' for the task's LM (repeatable)")
    ap.add_argument("--config", default=None, help="varpo config (default: varpo/defaults/overopt.yaml)")
    ap.add_argument("--prompts", type=int, default=500, help="evaluation prompts")
    ap.add_argument("--samples", type=int, default=2, help="responses per prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    from varpo.config import load_config
    from varpo.defaults import OVEROPT
    from varpo.evaluation.policy_eval import sample_responses
    from varpo.evaluation.population import true_reward_fn
    from varpo.evaluation.provenance import run_context
    from varpo.ppo import resolve_sources
    from varpo.reward.report import sigma2_error_calibration
    from varpo.reward.scorer import load_scorer
    from varpo.testbed import build_testbed

    torch.set_num_threads(1)
    cfg = load_config(args.config or OVEROPT, [f"evaluation.num_eval_prompts={args.prompts}"])
    rms, policies = _named(args.rm, "rm"), _named(args.policy, "policy")
    prompts = list(build_testbed(cfg.testbed, progress=False).eval_prompts)[: args.prompts]
    rep = [p for p in prompts for _ in range(args.samples)]
    gold_fn = true_reward_fn(cfg)
    scorers = {k: load_scorer(p) for k, p in rms.items()}
    result = {"command": " ".join(["python", *sys.argv]), "machine": run_context(), "prompts": len(prompts),
              "samples_per_prompt": args.samples, "reward_models": rms, "policies": policies, "results": {}}
    t0 = time.perf_counter()
    for name, path in policies.items():
        policy = path or resolve_sources(cfg)[0]
        ys = sample_responses(str(policy), rep, cfg.generation, seed=3_000_000 + args.seed, batch_size=256)
        gold = torch.tensor(gold_fn(rep, ys), dtype=torch.float64)
        row = {"gold_mean": float(gold.mean()), "n": len(ys)}
        for kind, sc in scorers.items():
            s = sc.score(rep, ys)
            cal = sigma2_error_calibration(s.variance, s.score, gold)
            cal["proxy_mean"] = float(s.score.double().mean())
            row[kind] = cal
            print(f"{name:>24} {kind:>6}: rho={cal['spearman_sigma2_sqerr']:+.3f} p={cal['spearman_pvalue']:.2g} "
                  f"p90/p10={cal['sigma2_p90_over_p10'] or float('nan'):.1f} "
                  f"err by σ² quartile={[round(x, 4) for x in cal['sqerr_by_sigma2_quartile']]}", flush=True)
        result["results"][name] = row
    result["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'calibration.json'}")


if __name__ == "__main__":
    main()
