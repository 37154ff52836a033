"""Population statistics against independent float64 computations: explicit loops for the
moments and test statistics, the regularised incomplete beta function for the F and t tails,
published table values for the critical values, the closed Wilson formula, and the χ² test of a
2×2 table for the two-proportion z."""
import math

import numpy as np
import pytest
from scipy.special import betainc
from scipy.stats import chi2_contingency

from varpo.evaluation.stats import (
    compute_stats,
    f_test,
    two_proportion_test,
    variance_ratio_markdown,
    variance_ratio_table,
    welch_test,
    wilson_interval,
)

Z975 = 1.959963984540054  # Φ⁻¹(0.975)


def loop_mean_var(xs):
    m = 0.0
    for x in xs:
        m += x
    m /= len(xs)
    v = 0.0
    for x in xs:
        v += (x - m) ** 2
    return m, v / (len(xs) - 1)


@pytest.mark.parametrize("seed,n1,n2", [(0, 17, 23), (1, 80, 80), (2, 5, 41), (3, 33, 9)])
def test_f_and_welch_match_explicit_formulas(seed, n1, n2):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.3, rng.uniform(0.5, 2.0), n1)
    b = rng.normal(0.35, rng.uniform(0.2, 1.0), n2)
    ma, va = loop_mean_var(a.tolist())
    mb, vb = loop_mean_var(b.tolist())
    d1, d2 = n1 - 1, n2 - 1
    f = va / vb
    # P(F' ≥ f) for F' ~ F(d1, d2) = I_{d2/(d2 + d1 f)}(d2/2, d1/2)
    p_f = betainc(d2 / 2, d1 / 2, d2 / (d2 + d1 * f))
    got = f_test(a, b)
    assert got["f_stat"] == pytest.approx(f, rel=1e-12)
    assert got["variance_ratio"] == pytest.approx(f, rel=1e-12)
    assert got["f_pvalue"] == pytest.approx(p_f, rel=1e-9)
    assert got["f_df"] == [d1, d2]

    se2 = va / n1 + vb / n2
    t = (ma - mb) / math.sqrt(se2)
    df = se2 ** 2 / ((va / n1) ** 2 / d1 + (vb / n2) ** 2 / d2)
    p_t = betainc(df / 2, 0.5, df / (df + t * t))  # two-sided Student tail
    got = welch_test(a, b)
    assert got["welch_t"] == pytest.approx(t, rel=1e-10)
    assert got["welch_df"] == pytest.approx(df, rel=1e-10)
    assert got["welch_pvalue"] == pytest.approx(p_t, rel=1e-8)

    res = compute_stats({"vanilla": a.tolist(), "variance_aware": b.tolist()})
    assert res["f_stat"] == pytest.approx(f, rel=1e-12) and res["welch_t"] == pytest.approx(t, rel=1e-10)
    assert res["vanilla"]["var"] == pytest.approx(va, rel=1e-12) and res["vanilla"]["mean"] == pytest.approx(ma)
    assert res["methods"]["variance_aware"]["n"] == n2


@pytest.mark.parametrize("d1,d2,table", [(79, 79, 1.45), (20, 20, 2.1242), (10, 15, 2.5437), (5, 30, 2.5336),
                                          (1, 10, 4.9646)])
def test_f_critical_values_match_tables(d1, d2, table):
    rng = np.random.default_rng(d1 + d2)
    crit = f_test(rng.normal(size=d1 + 1), rng.normal(size=d2 + 1))["f_crit"]
    assert crit == pytest.approx(table, abs=0.006 if table == 1.45 else 5e-4)


@pytest.mark.parametrize("n", [6, 16, 31, 121])
def test_welch_critical_value_matches_t_table_for_equal_samples(n):
    # equal sizes and sample variances make Welch's df exactly 2(n−1), so t_0.975 is a table value
    a = np.arange(n, dtype=np.float64)
    b = a + 0.5
    got = welch_test(a, b)
    assert got["welch_df"] == pytest.approx(2 * (n - 1))
    t_table = {10: 2.2281, 30: 2.0423, 60: 2.0003, 240: 1.9699}
    assert got["welch_crit"] == pytest.approx(t_table[2 * (n - 1)], abs=2e-4)


@pytest.mark.parametrize("k,n", [(0, 80), (80, 80), (23, 80), (1, 7), (5, 11)])
def test_wilson_matches_closed_formula(k, n):
    p = k / n
    z = Z975
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(max(0.0, centre - half), abs=1e-12)
    assert hi == pytest.approx(min(1.0, centre + half), abs=1e-12)


@pytest.mark.parametrize("ka,na,kb,nb", [(23, 80, 4, 80), (5, 21, 7, 30), (0, 20, 3, 20)])
def test_two_proportion_z_matches_chi_square(ka, na, kb, nb):
    got = two_proportion_test(ka, na, kb, nb)
    chi2, p, _, _ = chi2_contingency([[ka, na - ka], [kb, nb - kb]], correction=False)
    assert got["risk_z"] ** 2 == pytest.approx(chi2, rel=1e-10)
    assert got["risk_pvalue"] == pytest.approx(p, rel=1e-9)
    assert math.copysign(1, got["risk_z"]) == math.copysign(1, ka / na - kb / nb)
    assert got["risk_pvalue_greater"] == pytest.approx(p / 2 if ka / na > kb / nb else 1 - p / 2, rel=1e-9)


def test_two_proportion_degenerate():
    got = two_proportion_test(0, 10, 0, 12)
    assert got["risk_z"] == 0.0 and got["risk_pvalue"] == 1.0 and got["risk_pvalue_greater"] == 1.0


def test_risk_definitions_and_comparisons():
    rng = np.random.default_rng(7)
    ref = rng.normal(0, 1, 19).round(1)
    van = rng.normal(0.2, 2, 23).round(1)
    va = rng.normal(0.2, 0.5, 21).round(1)
    wc = rng.normal(0.0, 1, 15).round(1)
    res = compute_stats({"reference": ref.tolist(), "vanilla": van.tolist(), "variance_aware": va.tolist(),
                         "worst_case": wc.tolist()})
    ref_mean = sum(ref.tolist()) / len(ref)
    for name, xs in (("vanilla", van), ("variance_aware", va), ("worst_case", wc)):
        below = sum(1 for x in xs if x < ref_mean)
        pair = 0.0
        for x in xs:
            for y in ref:
                pair += 1.0 if x < y else (0.5 if x == y else 0.0)
        row = res[name]
        assert row["risk_count"] == below and row["risk"] == pytest.approx(below / len(xs))
        assert row["risk_pairwise"] == pytest.approx(pair / (len(xs) * len(ref)))
        assert row["risk_ci95"] == pytest.approx(wilson_interval(below, len(xs)))
    pairs = [(c["a"], c["b"]) for c in res["comparisons"]]
    assert pairs == [("vanilla", "variance_aware"), ("vanilla", "worst_case"), ("variance_aware", "worst_case")]
    assert res["primary_comparison"] == ["vanilla", "variance_aware"]
    c = res["comparisons"][1]
    assert c["f_stat"] == pytest.approx(loop_mean_var(van.tolist())[1] / loop_mean_var(wc.tolist())[1])
    assert c["risk_z"] == pytest.approx(two_proportion_test(res["vanilla"]["risk_count"], 23,
                                                            res["worst_case"]["risk_count"], 15)["risk_z"])
    for key in ("f_stat", "f_crit", "f_pvalue", "welch_t", "welch_pvalue"):
        assert res[key] == res["comparisons"][0][key]


def test_primary_pair_falls_back_and_no_reference_means_no_risk():
    res = compute_stats({"vanilla": [1.0, 2.0, 4.0], "median": [1.0, 1.5, 2.5]})
    assert res["primary_comparison"] == ["vanilla", "median"]
    assert res["vanilla"]["risk"] is None and "risk_z" not in res["comparisons"][0]


def test_reserved_method_names_do_not_clobber_top_level_keys():
    res = compute_stats({"vanilla": [1.0, 2.0, 3.0], "comparisons": [1.0, 1.1, 1.3]})
    assert isinstance(res["comparisons"], list)
    assert res["methods"]["comparisons"]["n"] == 3


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # scipy, on constant data
def test_zero_variance_gives_none_not_inf():
    import json

    res = compute_stats({"vanilla": [1.0, 2.0, 3.0], "variance_aware": [2.0, 2.0, 2.0]})
    assert res["f_stat"] is None and res["f_pvalue"] == 0.0
    json.dumps(res, allow_nan=False)


@pytest.mark.parametrize("bad,msg", [
    ({"vanilla": [1.0]}, "at least 2"),
    ({"vanilla": [1.0, float("nan")]}, "finite"),
    ({"variance_aware": [1.0, 2.0]}, "baseline method 'vanilla'"),
])
def test_compute_stats_rejects_bad_input(bad, msg):
    with pytest.raises(ValueError, match=msg):
        compute_stats(bad)


def test_variance_ratio_table():
    rng = np.random.default_rng(3)
    sweep, spread = {}, {}
    for scale in (0.11, 0.92, 5.6):
        sweep[scale] = {"vanilla": rng.normal(0, 1 + scale, 25).tolist(), "variance_aware": rng.normal(0, 1, 27).tolist()}
        spread[scale] = scale / 10
    rows = variance_ratio_table(sweep, spread=spread)
    assert [r["scale"] for r in rows] == [0.11, 0.92, 5.6]
    for r in rows:
        va = loop_mean_var(sweep[r["scale"]]["vanilla"])[1]
        vb = loop_mean_var(sweep[r["scale"]]["variance_aware"])[1]
        assert r["ratio"] == pytest.approx(va / vb) and r["f_stat"] == r["ratio"]
        assert r["var_vanilla"] == pytest.approx(va) and r["spread"] == pytest.approx(r["scale"] / 10)
        assert r["f_pvalue"] == pytest.approx(betainc(13, 12, 26 / (26 + 24 * r["ratio"])), rel=1e-9)
    md = variance_ratio_markdown(rows)
    assert md.count("\n") == 5 and "| 5.6 |" in md
    with pytest.raises(ValueError, match="scale 1: methods \\['variance_aware'\\] missing"):
        variance_ratio_table({1: {"vanilla": [1.0, 2.0]}})
