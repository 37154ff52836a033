"""Does a reward ensemble's σ² track its actual error? (the paper's Assumption 2.1, on the testbed)

On the testbed the gold reward r* is known, so the error of the ensemble mean r̂ can be measured
directly: fit the ensemble's scale r̂ ≈ a + b·r* by least squares, take e² = (r̂ − a − b·r*)² per
response, and compare it with σ² (the variance over heads). Variance-aware PPO helps when σ²
predicts e² (Spearman ρ > 0, larger errors in the high-σ² quartile). The label-only version of this
check, for models without a gold reward, is `uncertainty_calibration` in `varpo train-rm`'s report.

    python experiments/population/reward_error_calibration.py --reward-model runs/rm/reward_model [--out calib.json]

Responses: the chosen and rejected responses of the testbed's held-out preference pairs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward-model", required=True, type=Path, help="ensemble folder (varpo train-rm's reward_model/)")
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    a = ap.parse_args(argv)

    from varpo.config import TestbedConfig
    from varpo.reward.scorer import load_scorer
    from varpo.testbed import build_testbed, gold_reward

    tb = build_testbed(TestbedConfig(), progress=False)
    pairs = tb.pairs("eval")
    prompts = [p["prompt"] for p in pairs for _ in (0, 1)]
    responses = [x for p in pairs for x in (p["chosen"], p["rejected"])]
    sc = load_scorer(str(a.reward_model)).score(prompts, responses)
    r_hat, var = sc.score.double().numpy(), sc.variance.double().numpy()
    gold = np.asarray(gold_reward(prompts, responses), dtype=np.float64)
    slope, intercept = np.polyfit(gold, r_hat, 1)
    err2 = (r_hat - (intercept + slope * gold)) ** 2
    rho = stats.spearmanr(var, err2)
    q1, q3 = np.quantile(var, [0.25, 0.75])
    res = {
        "reward_model": str(a.reward_model), "n_responses": len(responses),
        "corr_r_hat_gold": float(np.corrcoef(r_hat, gold)[0, 1]), "scale_fit": {"a": float(intercept), "b": float(slope)},
        "mean_variance": float(var.mean()), "mean_squared_error": float(err2.mean()),
        "spearman_variance_vs_squared_error": float(rho.statistic), "spearman_pvalue": float(rho.pvalue),
        "mean_squared_error_lowest_quarter_of_variance": float(err2[var <= q1].mean()),
        "mean_squared_error_highest_quarter_of_variance": float(err2[var >= q3].mean()),
        "variance_p90_over_p10": float(np.quantile(var, 0.9) / np.quantile(var, 0.1)),
    }
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
