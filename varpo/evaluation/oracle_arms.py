"""How PPO policies on the oracle spend their KL, in the bandit theory's own terms.

    python -m varpo.evaluation.oracle_arms POPULATION_DIR --out DIR [--prompts 128] [--samples 2]

The bandit (experiments/overoptimization/oracle_bandit.py) has one arm per net positive count c, so its KL is a KL
between distributions over c. A PPO policy's KL is over whole responses, which includes every way
it differs from the reference that leaves c unchanged; by the data-processing inequality the KL of
its distribution over c is at most that. For every trained policy of a population
(`varpo population` output: runs/<method>/seed_<k>/policy) and for the reference, this samples
responses on the evaluation prompts and reports: the distribution over c, KL(p_c ‖ p_ref,c) (the
arm-level KL), the share of samples at c = 3 (the gold's peak, σ = 0.28) and at |c| ≥ 4 (σ = 0.6),
the share of sequence KL that the arms account for, and per method the variance over policies of
the gold explained by the arm mix alone (Σ_c p_c r*(c), r*(c) the reference's mean gold per arm).
Writes DIR/arms.json and DIR/arms.md.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics as st
from collections import Counter
from pathlib import Path


def c_hist(cs: list[int]) -> dict[int, float]:
    n = len(cs)
    return {c: k / n for c, k in sorted(Counter(cs).items())}


def arm_kl(p: dict[int, float], q: dict[int, float], floor: float = 1e-4) -> float:
    """KL(p ‖ q) over arms; an arm the reference sample never showed gets mass `floor` (as the
    bandit's π_ref does for unobserved arms)."""
    return sum(pc * math.log(pc / max(q.get(c, 0.0), floor)) for c, pc in p.items() if pc > 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("population", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--samples", type=int, default=2, help="responses per prompt")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from varpo.config import load_config
    from varpo.evaluation.policy_eval import sample_responses
    from varpo.evaluation.population import eval_prompts
    from varpo.ppo import resolve_sources
    from varpo.testbed import task_gold
    from varpo.testbed.overopt import net_positive

    runs = sorted(p for p in (a.population / "runs").glob("*/seed_*") if (p / "policy").is_dir())
    if not runs:
        ap.error(f"{a.population}/runs/<method>/seed_<k>/policy: no trained policy found")
    cfg = load_config(runs[0] / "config.yaml", [f"evaluation.num_eval_prompts={a.prompts}"])
    prompts = [p for p in eval_prompts(cfg) for _ in range(a.samples)]
    gold = task_gold(cfg.testbed)

    def measure(policy: str, seed: int) -> dict:
        resp = sample_responses(policy, prompts, cfg.generation, seed=seed)
        cs = [net_positive(r) for r in resp]
        return {"cs": cs, "gold": gold(prompts, resp)}

    ref = measure(str(resolve_sources(cfg)[0]), 7)
    ref_p = c_hist(ref["cs"])
    by_arm: dict[int, list[float]] = {}
    for c, g in zip(ref["cs"], ref["gold"]):
        by_arm.setdefault(c, []).append(g)
    r_star = {c: st.fmean(v) for c, v in by_arm.items()}
    rows = []
    for k, run in enumerate(runs):
        m = measure(str(run / "policy"), 1000 + k)
        p = c_hist(m["cs"])
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
        kl_seq = (summary.get("final") or {}).get("kl_mean")
        kl_arm = arm_kl(p, ref_p)
        seed = int(run.name.split("_")[1])
        # the population's own evaluation of this policy (other samples): averaging the two halves
        # the evaluation noise that the F-test's variances carry
        pop_row = a.population / "policies" / run.parent.name / f"seed_{seed}.json"
        pop_gold = json.loads(pop_row.read_text())["reward"] if pop_row.exists() else None
        rows.append({"method": run.parent.name, "seed": seed, "kl_sequence": kl_seq,
                     "gold_population_eval": pop_gold,
                     "gold_two_evals": None if pop_gold is None else (pop_gold + st.fmean(m["gold"])) / 2,
                     "kl_arms": kl_arm, "arm_share_of_kl": kl_arm / kl_seq if kl_seq else None,
                     "share_c3": p.get(3, 0.0), "share_c_ge4": sum(v for c, v in p.items() if abs(c) >= 4),
                     "gold": st.fmean(m["gold"]),
                     "gold_from_arm_mix": sum(v * r_star.get(c, 0.0) for c, v in p.items()), "p_c": p})
    per_method = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        agg = {k: st.fmean([r[k] for r in rs if r[k] is not None]) for k in
               ("kl_sequence", "kl_arms", "arm_share_of_kl", "share_c3", "share_c_ge4", "gold", "gold_from_arm_mix")}
        if len(rs) > 1:
            agg["var_gold"] = st.variance([r["gold"] for r in rs])
            if all(r["gold_population_eval"] is not None for r in rs):
                agg["var_gold_population_eval"] = st.variance([r["gold_population_eval"] for r in rs])
                agg["var_gold_two_evals"] = st.variance([r["gold_two_evals"] for r in rs])
            agg["var_gold_from_arm_mix"] = st.variance([r["gold_from_arm_mix"] for r in rs])
        per_method[method] = {"n": len(rs), **agg}
    res = {"command": "python -m varpo.evaluation.oracle_arms " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
           "reference": {"p_c": ref_p, "r_star": r_star, "share_c3": ref_p.get(3, 0.0),
                         "share_c_ge4": sum(v for c, v in ref_p.items() if abs(c) >= 4)},
           "per_method": per_method, "policies": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "arms.json").write_text(json.dumps(res, indent=1) + "\n")
    f = lambda x, s=".3g": "—" if x is None else format(x, s)  # noqa: E731
    md = ["# Oracle policies over the bandit's arms (c = net positive count)", "", f"Command: `{res['command']}`", "",
          f"Reference: share at c = 3 {f(res['reference']['share_c3'])}, at |c| ≥ 4 {f(res['reference']['share_c_ge4'])}.", "",
          "| method | n | sequence KL | arm KL | arm KL / sequence KL | share c = 3 | share abs(c) ≥ 4 | gold | gold from arm mix | "
          "var gold | var gold, population's eval | var gold, both evals averaged | var of arm-mix gold |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, s in per_method.items():
        md.append(f"| {m} | {s['n']} | {f(s['kl_sequence'])} | {f(s['kl_arms'])} | {f(s['arm_share_of_kl'])} | "
                  f"{f(s['share_c3'])} | {f(s['share_c_ge4'])} | {f(s['gold'], '.4f')} | {f(s['gold_from_arm_mix'], '.4f')} | "
                  f"{f(s.get('var_gold'))} | {f(s.get('var_gold_population_eval'))} | {f(s.get('var_gold_two_evals'))} | "
                  f"{f(s.get('var_gold_from_arm_mix'))} |")
    (a.out / "arms.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
