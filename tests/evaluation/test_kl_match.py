"""KL matching per method and the pilot's plateau: the β fit on synthetic power laws, the plateau
on synthetic curves, the per-step means over seeds, and the overrides `population --kl-match` applies."""
import json
import math

import numpy as np
import pytest

from varpo.config import ConfigError
from varpo.evaluation.kl_match import fit_beta, read_kl_match
from varpo.evaluation.training_curves import curves, plateau_step


def test_fit_beta_recovers_a_power_law():
    a, b = 0.7, -0.8  # KL = e^a β^b
    pts = [{"beta": x, "kl_mean": math.exp(a) * x**b} for x in (0.01, 0.02, 0.05)]
    target = math.exp(a) * 0.03**b
    got = fit_beta(pts, target)
    assert got["beta"] == pytest.approx(0.03, rel=1e-9) and got["interpolated"]
    assert got["fit"]["b"] == pytest.approx(b)
    out = fit_beta(pts, math.exp(a) * 0.2**b)
    assert out["beta"] == pytest.approx(0.2, rel=1e-9) and not out["interpolated"]
    assert fit_beta([{"beta": 0.1, "kl_mean": 1.0}, {"beta": 0.2, "kl_mean": 2.0}], 1.5)["beta"] is None  # KL rising in β
    assert fit_beta([{"beta": 0.1, "kl_mean": 1.0}], 1.0) == {"beta": 0.1, "fit": None, "interpolated": False}
    # a KL that levels off at large β (the σ²-weighted penalty's floor): the bracketing pair decides
    bent = [{"beta": 0.1, "kl_mean": 1.64}, {"beta": 0.3, "kl_mean": 0.70}, {"beta": 1.0, "kl_mean": 0.46}]
    got = fit_beta(bent, 0.83)
    t = (math.log(0.83) - math.log(1.64)) / (math.log(0.70) - math.log(1.64))
    assert got["interpolated"] and got["fit"]["bracket"] == pytest.approx([0.1, 0.3])
    assert got["beta"] == pytest.approx(math.exp(math.log(0.1) + t * (math.log(0.3) - math.log(0.1))))


def test_plateau_step():
    rise = [min(s, 50) / 10 for s in range(120)]  # rises until step 50, flat at 5 after
    step = plateau_step(rise, window=10, tol=0.1)
    # the first 10-step window whose mean is within 10% of 5: windows starting at 41 (mean 4.55..)
    want = next(i for i in range(111) if abs(np.mean(rise[i:i + 10]) - 5) <= 0.5)
    assert step == want
    assert plateau_step([1.0] * 15, window=10) is None and plateau_step([1.0] * 39) is None
    noisy = list(np.random.default_rng(0).normal(3, 0.05, 100))
    assert plateau_step(noisy) == 0


def test_curves_average_seeds_per_step(tmp_path):
    for seed, scale in ((0, 1.0), (1, 3.0)):
        d = tmp_path / "runs" / "vanilla@beta=0.1" / f"seed_{seed}"
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "kl_mean": scale * s, "score_mean": s,
                                                             "gold_mean": 0.5}) + "\n" for s in range(4 + seed)))
    cv = curves(tmp_path)
    assert cv["vanilla@beta=0.1"]["kl_mean"] == [0.0, 2.0, 4.0, 6.0]  # the shorter run sets the length
    assert cv["vanilla@beta=0.1"]["seeds"] == 2


def test_read_kl_match(tmp_path):
    methods = {"vanilla": ["ppo.variance.weighting=none"], "variance_aware": ["ppo.variance.weighting=batch_mean"]}
    f = tmp_path / "kl_match.json"
    f.write_text(json.dumps({"beta": {"vanilla": 0.03, "variance_aware": 0.0213456789}}))
    (over,) = read_kl_match(f, methods)
    got = json.loads(over.split("=", 1)[1])
    assert got == {"vanilla": ["ppo.variance.weighting=none", "ppo.kl.beta=0.03"],
                   "variance_aware": ["ppo.variance.weighting=batch_mean", "ppo.kl.beta=0.0213457"]}
    f.write_text(json.dumps({"beta": {"vanilla": 0.03, "variance_aware": None}}))
    with pytest.raises(ConfigError, match="no β for method.*variance_aware"):
        read_kl_match(f, methods)
    f.write_text("{")
    with pytest.raises(ConfigError, match="kl_match.json"):
        read_kl_match(f, methods)


@pytest.mark.slow
def test_kl_match_then_population_trains_each_method_at_its_beta(testbed, tmp_path):
    """Real PPO on the oracle (embedded task, 2 steps): kl-match writes a β per method from the
    policies' evaluation KL; `population --kl-match` trains each method at its β, recorded per row."""
    from typer.testing import CliRunner

    from varpo.cli import app

    fast = ["ppo.steps=2", "ppo.batch_size=16", "ppo.mini_batch_size=8", "evaluation.num_eval_prompts=8",
            "reward.type=oracle"]
    sets = [x for o in fast for x in ("--set", o)]
    res = CliRunner().invoke(app, ["kl-match", "--config", "varpo/defaults/embedded.yaml", "--target-beta", "0.5",
                                   "--betas", "0.05,5", "--seeds", "2", "--workers", "1", "--out", str(tmp_path / "m"),
                                   *sets], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    km = json.loads((tmp_path / "m" / "kl_match.json").read_text())
    assert km["beta"]["vanilla"] == 0.5 and km["target"]["n"] == 2 and km["target"]["kl_mean"] > 0
    assert {(p["method"], p["beta"]) for p in km["points"]} == {("variance_aware", 0.05), ("variance_aware", 5.0)}
    assert (tmp_path / "m" / "curves.png").exists()
    # force a β the test can check in the rows, then let the population read it
    km["beta"]["variance_aware"] = 0.123
    (tmp_path / "km.json").write_text(json.dumps(km))
    res = CliRunner().invoke(app, ["population", "--config", "varpo/defaults/embedded.yaml", "--seeds", "1", "--workers",
                                   "1", "--kl-match", str(tmp_path / "km.json"), "--out", str(tmp_path / "p"), *sets],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = {m: json.loads((tmp_path / "p" / "policies" / m / "seed_0.json").read_text()) for m in ("vanilla", "variance_aware")}
    assert rows["vanilla"]["beta"] == 0.5 and rows["variance_aware"]["beta"] == 0.123
    assert json.loads((tmp_path / "p" / "kl_match.json").read_text())["beta"]["variance_aware"] == 0.123
    ctx = [json.loads(x) for x in (tmp_path / "p" / "runs_context.jsonl").read_text().splitlines()]
    assert len(ctx) == 1 and ctx[0]["jobs"] == 3 and len(ctx[0]["loadavg"]) == 3 and ctx[0]["commit"]
