"""The theory on real responses by importance reweighting: each reweighted optimum equals the
simplex policy of varpo.theory.softmax (itself checked against a numerical maximisation) on the
uniform distribution over the samples, per draw and prompt; KL and ESS against scipy; the β search
matches KL; equal weights give equal methods; and the command on the real testbed."""
import json

import numpy as np
import pytest
from scipy.stats import entropy
from typer.testing import CliRunner

from varpo.theory.reweighting import (
    ess,
    match_weighted_beta,
    predict,
    sample_kl,
    vanilla_reweighting,
    weighted_reweighting,
)
from varpo.theory.softmax import vanilla_policy, weighted_kl_policy


def _instance(seed, d=3, p=4, m=37):
    rng = np.random.default_rng(seed)
    gold = rng.uniform(0.2, 0.9, (p, m))
    s2 = rng.uniform(0.001, 0.4, (p, m))
    r_hat = gold[None] + np.sqrt(s2)[None] * rng.standard_normal((d, p, m))
    return gold, s2, r_hat


@pytest.mark.parametrize("seed", range(3))
def test_reweightings_are_the_simplex_optima_on_the_samples(seed):
    gold, s2, r_hat = _instance(seed)
    d, p, m = r_hat.shape
    uniform = np.full(m, 1.0 / m)
    betas = np.random.default_rng(seed).uniform(0.05, 0.5, d)
    pv = vanilla_reweighting(r_hat, betas[:, None, None])
    pw, _ = weighted_reweighting(r_hat, s2, betas[:, None, None])
    for i in range(d):
        for j in range(p):
            assert pv[i, j] == pytest.approx(vanilla_policy(r_hat[i, j], uniform, betas[i]), rel=1e-9, abs=1e-300)
            want = weighted_kl_policy(r_hat[i, j], s2[j], uniform, betas[i])
            assert pw[i, j] == pytest.approx(want, rel=1e-7, abs=1e-12)
            assert sample_kl(pw[i, j]) == pytest.approx(entropy(pw[i, j], uniform), rel=1e-9, abs=1e-12)
            assert ess(pv[i, j]) == pytest.approx(1.0 / sum(x * x for x in pv[i, j]), rel=1e-12)


def test_warm_start_gives_the_same_optimum():
    gold, s2, r_hat = _instance(5)
    cold, lam = weighted_reweighting(r_hat, s2, 0.2)
    warm, _ = weighted_reweighting(r_hat, s2, 0.21, lam0=lam)
    again, _ = weighted_reweighting(r_hat, s2, 0.21)
    assert warm == pytest.approx(again, rel=1e-8, abs=1e-14) and not np.allclose(cold, warm)


def test_beta_search_matches_kl_per_draw():
    gold, s2, r_hat = _instance(6, d=5)
    w = s2 / s2.mean()
    target = sample_kl(vanilla_reweighting(r_hat, 0.1)).mean(-1)
    beta, matched, pw = match_weighted_beta(r_hat, w, target, 0.1)
    assert matched.all()
    assert sample_kl(pw).mean(-1) == pytest.approx(target, rel=1e-4)
    # each draw's β differs (its own noise), and masses are those of that β
    assert np.unique(np.round(beta, 8)).size == 5
    direct, _ = weighted_reweighting(r_hat, w, beta[:, None, None])
    assert pw == pytest.approx(direct, rel=1e-7, abs=1e-12)
    # a target below the weighted penalty's KL floor cannot be met: flagged, not silently wrong
    _, matched0, _ = match_weighted_beta(r_hat, w, np.zeros(5), 0.1)
    assert not matched0.any()


def test_predict_with_equal_weights_is_vanilla_and_reports_per_point():
    gold, s2, r_hat = _instance(7, d=12)
    res = predict(gold, r_hat, np.ones_like(s2), [0.1, 0.4])
    for pt in res["points"]:
        assert pt["var_ratio"] == pytest.approx(1.0, rel=1e-5)
        assert pt["variance_aware"]["kl"] == pytest.approx(pt["vanilla"]["kl"], rel=1e-5)
        assert pt["kl_matched_share"] == 1.0
    assert res["reference_return"] == pytest.approx(gold.mean())
    res = predict(gold, r_hat, s2, [0.1])
    pt = res["points"][0]
    ret = (vanilla_reweighting(r_hat, 0.1) * gold).sum(-1).mean(-1)
    assert pt["vanilla"]["returns"] == pytest.approx(ret.tolist(), rel=1e-12)
    assert pt["vanilla"]["return_var"] == pytest.approx(np.var(ret, ddof=1), rel=1e-12)
    assert pt["vanilla"]["risk"] == pytest.approx(float(np.mean(ret < gold.mean())))
    assert pt["var_ratio"] == pytest.approx(pt["vanilla"]["return_var"] / pt["variance_aware"]["return_var"])
    assert res["max_sample_kl"] == pytest.approx(np.log(37))


def test_predict_command_on_the_testbed(testbed, tmp_path):
    from varpo.cli import app

    res = CliRunner().invoke(app, ["theory", "predict", "--config", "varpo/defaults/embedded.yaml", "--out", str(tmp_path),
                                   "--prompts", "2", "--samples", "24", "--draws", "6", "--betas", "0.1,1"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "prediction.json").read_text())
    assert out["prompts"] == 2 and out["samples_per_prompt"] == 24 and out["draws"] == 6
    assert [p["beta"] for p in out["points"]] == [0.1, 1.0]
    assert all(len(p["vanilla"]["returns"]) == 6 for p in out["points"])
    assert out["points"][0]["vanilla"]["kl"] > out["points"][1]["vanilla"]["kl"]  # smaller β, further from π_ref
    assert (tmp_path / "prediction.png").read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(app, ["theory", "predict", "--out", str(tmp_path), "--set", "reward.type=gold"])
    assert bad.exit_code != 0 and "oracle" in str(bad.exception)
