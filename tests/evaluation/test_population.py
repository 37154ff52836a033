"""Populations and the quickstart on the embedded default (real testbed, real ensemble, real PPO)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

FAST = ["ppo.steps=3", "ppo.batch_size=16", "ppo.mini_batch_size=8", "evaluation.num_eval_prompts=16",
        "reward_training.num_heads=4"]


def _invoke(*args):
    from varpo.cli import app

    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


@pytest.mark.slow
def test_quickstart_contract_and_population_resume(testbed, tmp_path):
    out = tmp_path / "qs"
    _invoke("quickstart", "--out", str(out), "--seeds", "2", *[x for o in [*FAST, "reward_training.epochs=1"]
                                                                for x in ("--set", o)])
    report = json.loads((out / "report.json").read_text())
    assert report["reference"]["gold_reward_mean"] == pytest.approx(
        sum(json.loads((out / "policies/reference" / f"seed_{k}.json").read_text())["reward"] for k in range(2)) / 2)
    for method in ("vanilla", "variance_aware"):
        r = report[method]
        assert r["n_policies"] == 2 and 0.0 <= r["gold_reward_mean"] <= 1.0 and r["gold_reward_var"] >= 0.0
        assert r["kl_mean"] > 0.0  # the policies moved away from the reference
    assert report["seconds"] > 0
    # the default task is the over-optimization task with the deep ensemble and per-method β; the
    # report says what it shows: the declared primary test and a verdict
    assert report["reward_model"]["num_heads"] == 4
    assert report["primary_test"]["declared"] == ["mcnemar_risk"] and report["verdict"]
    assert any(line.startswith(("No difference here", "variance_aware is less")) for line in report["verdict"])
    rows = {m: json.loads((out / f"policies/{m}/seed_0.json").read_text()) for m in ("vanilla", "variance_aware")}
    assert rows["vanilla"]["beta"] == 0.03 and rows["variance_aware"]["beta"] == 0.0271
    assert json.loads((out / "stats.json").read_text())["paired"]["n_pairs"] == 2
    # a killed population resumes: remove one result and its run, rerun, only that one is redone
    victim = out / "policies/variance_aware/seed_1.json"
    kept = json.loads((out / "policies/vanilla/seed_0.json").read_text())
    victim.unlink()
    from varpo.defaults import OVEROPT
    from varpo.evaluation.population import run_population

    rows = run_population(OVEROPT, [*FAST, "reward_training.epochs=1"], 2, out, workers=1)  # reuses OUT/reward/ and the 5 results
    assert victim.exists() and len(rows) == 6
    assert json.loads((out / "policies/vanilla/seed_0.json").read_text()) == kept


def test_member_overrides_separate_training_seed_from_the_oracle_draw():
    from varpo.config import ConfigError, load_config
    from varpo.evaluation.population import member_overrides

    oracle = load_config(None, ["reward.type=oracle", "seed=3"])
    assert member_overrides(oracle, 5, "both") == ["seed=5"]
    assert member_overrides(oracle, 5, "training") == ["seed=5", "reward.oracle.noise_seed=3"]
    fixed = load_config(None, ["reward.type=oracle", "seed=3", "reward.oracle.noise_seed=9"])
    assert member_overrides(fixed, 5, "training") == ["seed=5", "reward.oracle.noise_seed=9"]
    assert member_overrides(oracle, 5, "reward") == ["seed=3", "reward.oracle.noise_seed=5"]
    with pytest.raises(ConfigError, match="reward.type=oracle"):
        member_overrides(load_config(None, []), 1, "reward")  # an ensemble has no noise draw to vary
    with pytest.raises(ConfigError, match="--vary"):
        member_overrides(oracle, 1, "everything")


@pytest.mark.slow
def test_population_vary_reward_and_training_on_the_oracle(testbed, tmp_path):
    """Real PPO on the oracle: --vary reward keeps one training seed and changes the noise draw,
    --vary training the converse; each member's row says which it got, and the two kinds of
    population refuse to share a folder."""
    from varpo.config import ConfigError
    from varpo.defaults import EMBEDDED
    from varpo.evaluation.population import run_population

    over = [*FAST, "ppo.steps=2", "reward.type=oracle"]
    rows = run_population(EMBEDDED, over, 2, tmp_path / "r", workers=1, methods=["vanilla"], vary="reward")
    van = sorted((r for r in rows if r["method"] == "vanilla"), key=lambda r: r["seed"])
    assert [(r["training_seed"], r["noise_seed"], r["vary"]) for r in van] == [(0, 0, "reward"), (0, 1, "reward")]
    # the same training seed and a different reward draw: the policies are not the same
    assert van[0]["kl_mean"] != van[1]["kl_mean"]
    # each row: the final policy's KL on its evaluation samples, the β and steps it trained with
    for r in van:
        assert r["kl"] > 0 and r["kl_se"] > 0 and r["beta"] == 0.5 and r["steps"] == 2 and r["kl_last5_mean"] is not None
    ref = [r for r in rows if r["method"] == "reference"]
    assert all(r["kl"] == 0.0 and r["beta"] is None for r in ref)
    assert (tmp_path / "r" / "config.yaml").exists()
    rows = run_population(EMBEDDED, over, 2, tmp_path / "t", workers=1, methods=["vanilla"], vary="training")
    van = sorted((r for r in rows if r["method"] == "vanilla"), key=lambda r: r["seed"])
    assert [(r["training_seed"], r["noise_seed"]) for r in van] == [(0, 0), (1, 0)]
    with pytest.raises(ConfigError, match="vary.txt.*--vary training"):
        run_population(EMBEDDED, over, 2, tmp_path / "t", workers=1, methods=["vanilla"], vary="reward")


def test_worker_threads_respects_omp_num_threads():
    from varpo.evaluation.population import worker_threads

    assert worker_threads(8, 2, {}) == 4 and worker_threads(2, 4, {}) == 1
    assert worker_threads(2, 1, {"OMP_NUM_THREADS": "1"}) == 1  # three populations on two cores
    assert worker_threads(8, 2, {"OMP_NUM_THREADS": "0"}) == 4 and worker_threads(8, 2, {"OMP_NUM_THREADS": "x"}) == 4


def test_a_resumed_population_keeps_its_declared_primary_test(tmp_path):
    """The primary test is declared before a population runs (OUT/config.yaml); resuming it with
    another declaration is refused before any job starts."""
    from varpo.config import ConfigError, load_config, save_resolved
    from varpo.defaults import EMBEDDED
    from varpo.evaluation.population import run_population

    over = ["reward.type=oracle", "evaluation.primary_test=[mcnemar_runaway]"]
    save_resolved(load_config(EMBEDDED, over), tmp_path)
    with pytest.raises(ConfigError, match="declared evaluation.primary_test=\\['mcnemar_runaway'\\]"):
        run_population(EMBEDDED, ["reward.type=oracle", "evaluation.primary_test=[brown_forsythe]"], 2, tmp_path)
    with pytest.raises(ConfigError, match="runaway_margin"):
        run_population(EMBEDDED, [*over, "evaluation.runaway_margin=0.3"], 2, tmp_path)
    assert not (tmp_path / "policies").exists()
