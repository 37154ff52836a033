"""The tests that fit a non-normal population outcome (Brown–Forsythe, the BCa interval of the
variance ratio, Fisher's exact and McNemar's exact tests, Wilcoxon, Shapiro) against scipy's own
scalar calls, their size under the null by simulation, and the power lines against closed forms."""
import json
import math

import numpy as np
import pytest
from scipy import stats as st
from typer.testing import CliRunner

from varpo.cli import app
from varpo.evaluation.stats import (
    TESTS,
    _holm,
    brown_forsythe,
    compute_stats,
    mcnemar_exact,
    power_against_ratio,
    power_analysis,
    pvalue_of,
    shares_seeds,
    variance_ratio_ci,
    wilcoxon_greater,
)


def bimodal(rng, shape, runaway_rate):
    """A population like the deep ensemble's: most policies near the data (0.61 ± 0.06), the rest
    run off its support (uniform on 0.03–0.35)."""
    run = rng.random(shape) < runaway_rate
    return np.where(run, rng.uniform(0.03, 0.35, shape), rng.normal(0.61, 0.06, shape))


CTX = {"reference_mean": 0.53, "runaway_margin": 0.15}


@pytest.mark.parametrize("seed,na,nb", [(0, 17, 23), (1, 80, 80), (2, 7, 41), (3, 33, 9)])
def test_brown_forsythe_is_scipys_levene_made_one_sided(seed, na, nb):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, rng.uniform(0.5, 2), na), rng.standard_t(3, nb)
    got = brown_forsythe(a, b)
    lev = st.levene(a, b, center="median")
    assert got["brown_forsythe_w"] == pytest.approx(lev.statistic, rel=1e-10)
    assert got["brown_forsythe_pvalue_two_sided"] == pytest.approx(lev.pvalue, rel=1e-10)
    assert got["brown_forsythe_t"] ** 2 == pytest.approx(lev.statistic, rel=1e-10)
    half = lev.pvalue / 2
    want = half if got["brown_forsythe_t"] > 0 else 1 - half
    assert got["brown_forsythe_pvalue"] == pytest.approx(want, rel=1e-9)
    assert pvalue_of("brown_forsythe", a, b) == pytest.approx(got["brown_forsythe_pvalue"], rel=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_exact_tests_match_scipys_scalar_calls(seed):
    rng = np.random.default_rng(seed)
    na, nb = int(rng.integers(3, 60)), int(rng.integers(3, 60))
    a, b = bimodal(rng, na, rng.uniform(0, 0.6)), bimodal(rng, nb, rng.uniform(0, 0.6))
    ka, kb = int(np.sum(a < 0.38)), int(np.sum(b < 0.38))
    want = st.fisher_exact([[ka, na - ka], [kb, nb - kb]], alternative="greater").pvalue
    assert pvalue_of("runaway_fisher", a, b, CTX) == pytest.approx(want, rel=1e-9, abs=1e-15)
    ka, kb = int(np.sum(a < 0.53)), int(np.sum(b < 0.53))
    want = st.fisher_exact([[ka, na - ka], [kb, nb - kb]], alternative="greater").pvalue
    assert pvalue_of("risk_fisher", a, b, CTX) == pytest.approx(want, rel=1e-9, abs=1e-15)
    # paired: McNemar is the binomial test of the discordant pairs
    n = min(na, nb)
    xa, xb = a[:n] < 0.38, b[:n] < 0.38
    only_a, only_b = int(np.sum(xa & ~xb)), int(np.sum(~xa & xb))
    want = st.binomtest(only_a, only_a + only_b, 0.5, alternative="greater").pvalue if only_a + only_b else 1.0
    assert mcnemar_exact(xa, xb)["pvalue"] == pytest.approx(want, rel=1e-9)
    assert pvalue_of("mcnemar_runaway", a[:n], b[:n], CTX) == pytest.approx(want, rel=1e-9)
    want = st.wilcoxon(b[:n] - a[:n], alternative="greater").pvalue
    assert wilcoxon_greater(a[:n], b[:n]) == pytest.approx(want, rel=1e-9)
    assert pvalue_of("wilcoxon", a[:n], b[:n]) == pytest.approx(want, rel=1e-9)
    assert pvalue_of("welch", a, b) == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    f = np.var(a, ddof=1) / np.var(b, ddof=1)
    assert pvalue_of("f_test", a, b) == pytest.approx(st.f.sf(f, na - 1, nb - 1), rel=1e-9)


def test_degenerate_paired_outcomes():
    same = np.array([0.6, 0.1, 0.5, 0.2])
    assert mcnemar_exact(same < 0.38, same < 0.38) == {"only_a": 0, "only_b": 0, "both": 2, "pvalue": 1.0}
    assert wilcoxon_greater(same, same) is None
    assert pvalue_of("wilcoxon", same, same) == 1.0


@pytest.mark.parametrize("paired", [False, True])
def test_variance_ratio_ci_is_scipys_bca_and_covers(paired):
    rng = np.random.default_rng(11)
    a, b = rng.normal(0, 1.5, 30), rng.normal(0, 1.0, 30)
    got = variance_ratio_ci(a, b, paired=paired, n_resamples=2000, seed=4)
    ref = st.bootstrap((a, b), lambda x, y: np.var(x, ddof=1) / np.var(y, ddof=1), paired=paired, vectorized=False,
                       method="BCa", n_resamples=2000, rng=np.random.default_rng(4))
    assert got == pytest.approx([ref.confidence_interval.low, ref.confidence_interval.high], rel=1e-9)
    # coverage of the true ratio (2.25) over fresh normal populations: BCa is near its nominal 95%
    hits, draws = 0, 150
    for _ in range(draws):
        x, y = rng.normal(0, 1.5, 40), rng.normal(0, 1.0, 40)
        lo, hi = variance_ratio_ci(x, y, paired=paired, n_resamples=999, seed=int(rng.integers(1 << 30)))
        hits += lo <= 2.25 <= hi
    assert 0.84 <= hits / draws <= 0.995


def test_variance_ratio_ci_none_when_degenerate():
    assert variance_ratio_ci([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]) is None


# size under the null: both methods drawn from one distribution (bimodal, like the deep ensemble's;
# normal for the F-test, whose p is exact only there). 600 populations per test: the standard error
# of a rejection rate of 0.05 is 0.009, so [0.02, 0.085] fails a test whose size is off by ~4 SE.
SIZE_DRAWS = 600


@pytest.mark.parametrize("name", ["brown_forsythe", "welch", "wilcoxon"])
def test_size_of_continuous_tests_under_the_null(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    n = 40
    a = bimodal(rng, (SIZE_DRAWS, n), 0.25)
    if TESTS[name][0]:  # paired: exchangeable pairs sharing a seed effect
        shared = rng.normal(0, 0.05, (SIZE_DRAWS, n))
        a, b = a + shared, bimodal(rng, (SIZE_DRAWS, n), 0.25) + shared
    else:
        b = bimodal(rng, (SIZE_DRAWS, n), 0.25)
    size = float(np.mean(TESTS[name][1](a, b, CTX) < 0.05))
    assert 0.02 <= size <= 0.085, size


def test_size_of_the_f_test_under_normal_null():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, (SIZE_DRAWS, 25)), rng.normal(0, 1, (SIZE_DRAWS, 31))
    size = float(np.mean(TESTS["f_test"][1](a, b, {}) < 0.05))
    assert 0.02 <= size <= 0.085, size


@pytest.mark.parametrize("name", ["runaway_fisher", "risk_fisher", "mcnemar_runaway", "mcnemar_risk"])
def test_exact_tests_hold_their_level_under_the_null(name):
    """Exact tests of discrete outcomes are conservative: their size is at most α (up to
    simulation error) and, at n = 80 and rates of 0.25–0.45, not vanishingly small."""
    rng = np.random.default_rng(sum(map(ord, name)))
    n = 80
    a, b = bimodal(rng, (SIZE_DRAWS, n), 0.3), bimodal(rng, (SIZE_DRAWS, n), 0.3)
    size = float(np.mean(TESTS[name][1](a, b, CTX) < 0.05))
    assert 0.01 <= size <= 0.065, size


def test_power_from_resampling_matches_normal_theory():
    """Resampling a large normal population pair (variance ratio exactly 4): the F-test's power at
    the observed n is 1, and the n it needs for power 0.8 is normal theory's, the smallest n with
    P(F(n − 1, n − 1) > F_crit / 4) ≥ 0.8."""
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 2, 3000), rng.normal(0, 1, 3000)
    a, b = (a - a.mean()) / a.std() * 2, (b - b.mean()) / b.std()
    pw = power_analysis(a, b, {}, paired=False, tests=["f_test"], sims=1000, n_max=200, seed=1)["f_test"]
    assert pw["n"] == 3000 and pw["power_at_n"] == 1.0
    n80 = next(k for k in range(3, 200) if st.f.sf(st.f.ppf(0.95, k - 1, k - 1) / 4, k - 1, k - 1) >= 0.8)
    assert abs(pw["n_for_power_0.8"] - n80) <= max(2, 0.15 * n80)


def test_power_is_none_when_the_effect_points_the_other_way():
    rng = np.random.default_rng(6)
    a, b = rng.normal(0, 1, 50), rng.normal(0, 1.6, 50)
    pw = power_analysis(a, b, {}, paired=False, tests=["brown_forsythe"], sims=300, n_max=400)
    assert pw["brown_forsythe"]["n_for_power_0.8"] is None and pw["brown_forsythe"]["power_at_n"] < 0.05


def test_power_against_ratio_f_is_the_closed_form_and_bf_is_simulated():
    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 1, 80), rng.normal(0, 1, 80)
    got = power_against_ratio(a, b, ratio=2.5, sims=2000, seed=1)
    assert got["f_test"] == pytest.approx(st.f.sf(st.f.ppf(0.95, 79, 79) / 2.5, 79, 79), rel=1e-12)
    # Brown–Forsythe on normal data at ratio 2.5: a direct simulation of normal populations
    x, y = rng.normal(0, math.sqrt(2.5), (2000, 80)), rng.normal(0, 1, (2000, 80))
    direct = float(np.mean(TESTS["brown_forsythe"][1](x, y, {}) < 0.05))
    assert got["brown_forsythe"] == pytest.approx(direct, abs=0.05)


def test_holm_adjustment():
    assert _holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert _holm([0.5, None]) == [0.5, None]
    assert _holm([0.02]) == [0.02]


def _population(rng, n=40):
    ref = rng.normal(0.53, 0.012, n)
    van, va = bimodal(rng, n, 0.35), bimodal(rng, n, 0.12)
    return {"reference": ref.tolist(), "vanilla": van.tolist(), "variance_aware": va.tolist()}


def test_compute_stats_reports_the_declared_tests_first():
    rng = np.random.default_rng(8)
    pop = _population(rng)
    seeds = {m: list(range(40)) for m in pop}
    res = compute_stats(pop, seeds=seeds, primary_test=["mcnemar_runaway", "brown_forsythe"], power_sims=100)
    assert next(iter(res)) == "primary_test"
    pt = res["primary_test"]
    assert pt["declared"] == ["mcnemar_runaway", "brown_forsythe"] and pt["comparison"] == ["vanilla", "variance_aware"]
    van, va, ref_mean = np.array(pop["vanilla"]), np.array(pop["variance_aware"]), float(np.mean(pop["reference"]))
    run_v, run_a = van < ref_mean - 0.15, va < ref_mean - 0.15
    only_v, only_a = int(np.sum(run_v & ~run_a)), int(np.sum(~run_v & run_a))
    want_mc = st.binomtest(only_v, only_v + only_a, 0.5, alternative="greater").pvalue
    assert pt["results"][0]["pvalue"] == pytest.approx(want_mc)
    assert pt["results"][1]["pvalue"] == pytest.approx(res["brown_forsythe_pvalue"])
    assert {r["holm_pvalue"] for r in pt["results"]} <= set(_holm([r["pvalue"] for r in pt["results"]]))
    assert res["runaway"]["per_method"]["vanilla"]["count"] == int(run_v.sum())
    assert res["runaway"]["fisher_pvalue"] == pytest.approx(st.fisher_exact(
        [[run_v.sum(), 40 - run_v.sum()], [run_a.sum(), 40 - run_a.sum()]], alternative="greater").pvalue)
    assert res["paired"]["mcnemar_pvalue"] == pytest.approx(want_mc)
    assert res["paired"]["wilcoxon_pvalue"] == pytest.approx(st.wilcoxon(va - van, alternative="greater").pvalue)
    assert len(res["variance_ratio_ci"]) == 2 and res["variance_ratio_ci"][0] < res["variance_ratio_ci"][1]
    assert res["normality"]["shapiro_pvalue"]["vanilla"] == pytest.approx(st.shapiro(van).pvalue)
    assert res["normality"]["f_test_reliable"] is False  # bimodal
    assert set(res["power"]["per_test"]) == set(TESTS)


def test_unpaired_when_seeds_differ_and_no_reference():
    rng = np.random.default_rng(9)
    pop = _population(rng, 30)
    seeds = {"reference": list(range(30)), "vanilla": list(range(30)), "variance_aware": list(range(100, 130))}
    res = compute_stats(pop, seeds=seeds, primary_test=["mcnemar_runaway"], power_sims=0)
    assert "paired" not in res and res["primary_test"]["results"][0]["pvalue"] is None
    assert "seeds" in res["primary_test"]["results"][0]["unavailable"]
    res = compute_stats({m: pop[m] for m in ("vanilla", "variance_aware")}, primary_test=["runaway_fisher"], power_sims=0)
    assert "runaway" not in res and "reference" in res["primary_test"]["results"][0]["unavailable"]
    with pytest.raises(ValueError, match="primary_test"):
        compute_stats(pop, primary_test=["t_test"])


def test_shares_seeds_reads_the_rows():
    rows = [{"method": m, "seed": k, "training_seed": k, "noise_seed": None} for m in ("vanilla", "variance_aware")
            for k in range(3)]
    assert shares_seeds(rows)
    rows[4]["training_seed"] = 99
    assert not shares_seeds(rows)
    assert shares_seeds([{"method": m, "seed": k} for m in ("reference", "vanilla") for k in range(2)])


def test_stats_command_reads_the_declared_test_from_the_population_config(tmp_path):
    rng = np.random.default_rng(10)
    pop = _population(rng, 24)
    rows = [{"method": m, "seed": k, "training_seed": k, "reward": x} for m, xs in pop.items() for k, x in enumerate(xs)]
    (tmp_path / "policies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "config.yaml").write_text("evaluation:\n  primary_test: [runaway_fisher, mcnemar_risk]\n"
                                          "  runaway_margin: 0.2\n")
    res = CliRunner().invoke(app, ["stats", str(tmp_path), "--power-sims", "50"])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "stats.json").read_text())
    assert list(out)[0] == "primary_test" and out["primary_test"]["declared"] == ["runaway_fisher", "mcnemar_risk"]
    assert out["primary_test"]["declared_in"].endswith("config.yaml")
    assert out["runaway"]["margin"] == 0.2 and out["paired"]["n_pairs"] == 24
    for key in ("brown_forsythe_pvalue", "variance_ratio_ci", "runaway", "paired"):
        assert out[key] is not None
    assert "fisher_pvalue" in out["runaway"] and "mcnemar_pvalue" in out["paired"] and "wilcoxon_pvalue" in out["paired"]
    md = (tmp_path / "stats.md").read_text()
    assert "## Primary tests" in md and "runaway_fisher" in md and "unreliable" in md
    (tmp_path / "config.yaml").write_text("evaluation:\n  primary_test: [bogus]\n")
    res = CliRunner().invoke(app, ["stats", str(tmp_path)])
    assert res.exit_code != 0 and "primary_test" in str(res.exception)
