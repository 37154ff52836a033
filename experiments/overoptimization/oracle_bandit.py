"""What the paper's bandit theory (varpo.theory, Thm 2.7) predicts for the oracle reward on the
over-optimization task: arms = the net positive count c of a response, π_ref = the reference LM's
distribution over c (from the testbed's pair samples), r*(c) = the mean gold of those samples in arm c
(0 past the last observed arm), σ²(c) = the oracle's σ² (reward.oracle defaults). Over draws of the
oracle's noise z, the KL-regularised vanilla policy π ∝ π_ref exp(r̂/β) and the σ²-weighted one
(w = σ²/E_ref σ², as `ppo.variance.weighting=batch_mean` normalises, β matched to the same mean KL)
give true returns ⟨π, r*⟩ whose variance ratio and risk P(⟨π, r*⟩ < ⟨π_ref, r*⟩) are the
bandit's prediction of what a population of policies would show.

    python experiments/overoptimization/oracle_bandit.py --testbed ~/.cache/varpo/testbed-<key> --out DIR
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from varpo.reward.oracle import oracle_sigma
from varpo.testbed.overopt import net_positive
from varpo.theory.bandit import match_beta
from varpo.theory.softmax import kl_divergence, vanilla_policy, weighted_kl_policy


def arms(testbed: Path, extra_arms: int = 2, floor_mass: float = 1e-4):
    rows = [json.loads(x) for x in (testbed / "pairs_eval.jsonl").read_text().splitlines()]
    rows += [json.loads(x) for x in (testbed / "pairs_train.jsonl").read_text().splitlines()]
    c = np.array([net_positive(r[s]) for r in rows for s in ("chosen", "rejected")])
    g = np.array([r[f"{s}_gold"] for r in rows for s in ("chosen", "rejected")])
    cs = np.arange(c.min(), c.max() + 1 + extra_arms)
    counts = np.array([(c == v).sum() for v in cs], dtype=np.float64)
    r_star = np.array([g[c == v].mean() if (c == v).any() else 0.0 for v in cs])
    pi_ref = np.maximum(counts, floor_mass * counts.sum())
    return cs, r_star, pi_ref / pi_ref.sum()


def simulate(cs, r_star, pi_ref, betas, draws: int, seed: int, sigma_min=0.03, sigma_max=0.6, threshold=3):
    s2 = np.array([oracle_sigma(int(v), sigma_min, sigma_max, threshold) ** 2 for v in cs])
    w = s2 / float(pi_ref @ s2)  # batch_mean normalisation under the reference
    rng = np.random.default_rng(seed)
    r_hat = r_star + np.sqrt(s2) * rng.standard_normal((draws, len(cs)))
    ref = float(pi_ref @ r_star)
    out = []
    for beta in betas:
        pv = vanilla_policy(r_hat, pi_ref, beta)
        kl_v = kl_divergence(pv, pi_ref)
        fn = lambda r, b: weighted_kl_policy(r, w, pi_ref, b)  # noqa: E731
        b_va, matched = match_beta(fn, r_hat[:2000], pi_ref, float(kl_v[:2000].mean()), beta)
        pva = fn(r_hat, b_va)
        ret_v, ret_va = pv @ r_star, pva @ r_star
        out.append({"beta": beta, "beta_va": b_va, "kl_matched": matched,
                    "kl_vanilla": float(kl_v.mean()), "kl_va": float(kl_divergence(pva, pi_ref).mean()),
                    "mean_vanilla": float(ret_v.mean()), "mean_va": float(ret_va.mean()),
                    "var_vanilla": float(ret_v.var(ddof=1)), "var_va": float(ret_va.var(ddof=1)),
                    "var_ratio": float(ret_v.var(ddof=1) / ret_va.var(ddof=1)),
                    "risk_vanilla": float((ret_v < ref).mean()), "risk_va": float((ret_va < ref).mean())})
    return {"arms_c": cs.tolist(), "r_star": r_star.tolist(), "pi_ref": pi_ref.tolist(), "sigma2": s2.tolist(),
            "reference_return": ref, "draws": draws, "points": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--testbed", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--betas", default="0.01,0.02,0.05,0.1,0.2")
    ap.add_argument("--draws", type=int, default=20000)
    a = ap.parse_args()
    cs, r_star, pi_ref = arms(a.testbed)
    res = simulate(cs, r_star, pi_ref, [float(b) for b in a.betas.split(",")], a.draws, 0)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "oracle_bandit.json").write_text(json.dumps(res, indent=2))
    for p in res["points"]:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in p.items()})


if __name__ == "__main__":
    main()
