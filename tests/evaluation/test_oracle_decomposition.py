"""varpo/evaluation/oracle_decomposition.py: the bandit interpolation and the per-population table."""
import json
import math

import numpy as np
import pytest

from varpo.evaluation import oracle_decomposition as dec


def test_bandit_ratio_is_interpolated_in_log_kl():
    rng = np.random.default_rng(5)
    kls = np.sort(rng.uniform(0.3, 6.0, 5))
    ratios = rng.uniform(0.5, 6.0, 5)
    pts = [{"kl_vanilla": float(k), "var_ratio": float(r), "kl_matched": True} for k, r in zip(kls[::-1], ratios[::-1])]
    for kl in rng.uniform(kls[0], kls[-1], 7):
        assert dec.bandit_ratio_at(pts, float(kl)) == pytest.approx(float(np.interp(math.log(kl), np.log(kls), ratios)))
    assert dec.bandit_ratio_at(pts, float(kls[-1]) * 2) is None  # no extrapolation
    # unmatched points are left out
    pts[0]["kl_matched"] = False
    assert dec.bandit_ratio_at(pts, float(kls[-1])) is None


def test_decompose_reads_stats_and_rows(tmp_path):
    rng = np.random.default_rng(6)
    rows, stats = [], {"f_stat": 1.3, "f_crit": 2.5, "f_pvalue": 0.3, "welch_pvalue": 0.2}
    for m, n in (("reference", 4), ("vanilla", 6), ("variance_aware", 5)):
        g = rng.normal(0.6, 0.03, n)
        for k, x in enumerate(g):
            rows.append({"method": m, "seed": k, "vary": "reward", "reward": float(x), "reward_se": 0.01,
                         "kl_mean": 0.0 if m == "reference" else float(1 + k), "kl_last5_mean": None if m == "reference" else 2.0,
                         "sigma2_mean": 0.02 + k * 0.001})
        stats[m] = {"n": n, "mean": float(g.mean()), "var": float(g.var(ddof=1)), "eval_noise_var": 1e-4,
                    "var_excess": float(g.var(ddof=1)) - 1e-4}
    (tmp_path / "policies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    bandit = {"points": [{"kl_vanilla": 1.0, "var_ratio": 2.0}, {"kl_vanilla": 4.0, "var_ratio": 4.0}]}
    e = dec.decompose({"r": tmp_path}, bandit)["r"]
    assert e["vary"] == ["reward"] and e["vanilla"]["n"] == 6
    assert e["vanilla"]["kl_mean"] == pytest.approx(2.0)  # the last-5-step KL wins over the final batch's
    assert e["reference"]["kl_mean"] == pytest.approx(0.0)
    assert e["excess_ratio"] == pytest.approx(stats["vanilla"]["var_excess"] / stats["variance_aware"]["var_excess"])
    assert e["bandit_var_ratio_at_kl"] == pytest.approx(3.0)  # halfway in log KL between 1 and 4
    assert e["variance_aware"]["eval_sigma2_mean"] == pytest.approx(np.mean([0.02 + k * 0.001 for k in range(5)]))
    md = dec.markdown({"r": e}, "cmd")
    assert "| r | reward | vanilla | 6 |" in md


def test_weight_summary_from_logged_samples(tmp_path):
    rng = np.random.default_rng(8)
    all_w = []
    for method, weighting in (("variance_aware", "batch_mean"), ("vanilla", "none")):
        for seed in range(2):
            run = tmp_path / "runs" / method / f"seed_{seed}"
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(f"ppo:\n  variance:\n    weighting: {weighting}\n")
            metrics, samples = [], []
            for step in range(3):
                var = rng.uniform(0.001, 0.4, 5)
                metrics.append({"step": step, "variance_mean": float(var.mean() * 1.1)})
                for k, v in enumerate(var):
                    samples.append({"step": step, "variance": float(v), "valid": k != 4})
                    if weighting == "batch_mean" and k != 4:
                        all_w.append(v / (var.mean() * 1.1))
            (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
            (run / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in samples))
    out = dec.weight_summary(tmp_path)
    assert list(out) == ["variance_aware"]  # vanilla does not weight
    w = np.array(all_w)
    assert out["variance_aware"]["n_samples"] == len(w) == 24
    assert out["variance_aware"]["median"] == pytest.approx(float(np.median(w)))
    assert out["variance_aware"]["share_below_0.5"] == pytest.approx(float((w < 0.5).mean()))
    assert out["variance_aware"]["share_above_2"] == pytest.approx(float((w > 2).mean()))
    # a floor in the run's config clamps the weights as training did
    for run in (tmp_path / "runs" / "variance_aware").glob("seed_*"):
        (run / "config.yaml").write_text("ppo:\n  variance:\n    weighting: batch_mean\n    floor: 1.0\n")
    out = dec.weight_summary(tmp_path)["variance_aware"]
    assert out["share_below_1"] == 0.0 and out["median"] == pytest.approx(float(np.median(np.maximum(w, 1.0))))


def test_arm_kl_matches_scipy_and_floors_unseen_arms():
    from scipy.stats import entropy

    from varpo.evaluation import oracle_arms

    rng = np.random.default_rng(9)
    cs_ref = list(rng.integers(-3, 4, 301))
    cs_pol = list(rng.integers(-1, 4, 173))
    p, q = oracle_arms.c_hist(cs_pol), oracle_arms.c_hist(cs_ref)
    assert sum(p.values()) == pytest.approx(1.0) and p[2] == pytest.approx(cs_pol.count(2) / 173)
    arms = sorted(set(p) | set(q))
    assert oracle_arms.arm_kl(p, q) == pytest.approx(entropy([p.get(c, 0) for c in arms], [q.get(c, 0) for c in arms]))
    # an arm the reference never showed: mass 1e-4, finite KL
    assert oracle_arms.arm_kl({5: 1.0}, q) == pytest.approx(math.log(1 / 1e-4))


def test_against_prediction_pairs_members_with_their_noise_draws():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(12)
    draws = 20
    points = []
    for beta, kl in ((0.1, 3.0), (0.2, 1.2), (0.5, 0.2)):
        points.append({"beta": beta, "kl_matched_share": 1.0 if beta < 0.5 else 0.5, "var_ratio": 1.3,
                       "var_ratio_ci": [1.0, 1.7],
                       "vanilla": {"kl": kl, "returns": rng.normal(0.7, 0.1, draws).tolist()},
                       "variance_aware": {"kl": kl, "returns": rng.normal(0.7, 0.08, draws).tolist()}})
    pred = {"draws": draws, "points": points}
    seeds = [3, 0, 7, 11, 19, 5]  # members' noise draws, not in order
    rows = []
    for m in ("vanilla", "variance_aware"):
        for k, z in enumerate(seeds):
            rows.append({"method": m, "seed": k, "noise_seed": z, "reward": float(rng.normal(0.68, 0.02)),
                         "kl": 1.0 + 0.1 * k, "sigma2_mean": 0.02})
    rows.append({"method": "reference", "seed": 0, "noise_seed": None, "reward": 0.53, "kl": 0.0})
    got = dec.against_prediction(rows, pred)
    assert got["prediction_beta"] == 0.2  # nearest matched point in log KL to PPO's mean KL 1.25
    for m in ("vanilla", "variance_aware"):
        gold = [r["reward"] for r in rows if r["method"] == m]
        opt = [points[1][m]["returns"][z] for z in seeds]
        want = spearmanr(gold, opt)
        assert got[m]["spearman_gold_vs_optimum"] == pytest.approx(want.statistic)
        assert got[m]["spearman_pvalue"] == pytest.approx(want.pvalue)
        assert got[m]["optimum_return_var"] == pytest.approx(np.var(opt, ddof=1))
        assert got[m]["ppo_gold_var"] == pytest.approx(np.var(gold, ddof=1))
    assert got["ppo_var_ratio"] == pytest.approx(got["vanilla"]["ppo_gold_var"] / got["variance_aware"]["ppo_gold_var"])
    assert dec.against_prediction([r for r in rows if r["method"] == "reference"], pred) is None
