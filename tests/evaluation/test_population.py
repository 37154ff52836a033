"""Populations and the quickstart on the embedded default (real testbed, real ensemble, real PPO)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

FAST = ["ppo.steps=3", "ppo.batch_size=16", "ppo.mini_batch_size=8", "evaluation.num_eval_prompts=16",
        "reward_training.num_heads=4"]


def _invoke(*args):
    from varpo.cli import app

    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def test_quickstart_contract_and_population_resume(testbed, tmp_path):
    out = tmp_path / "qs"
    _invoke("quickstart", "--out", str(out), "--seeds", "2", *[x for o in FAST for x in ("--set", o)])
    report = json.loads((out / "report.json").read_text())
    assert report["reference"]["gold_reward_mean"] == pytest.approx(
        sum(json.loads((out / "policies/reference" / f"seed_{k}.json").read_text())["reward"] for k in range(2)) / 2)
    for method in ("vanilla", "variance_aware"):
        r = report[method]
        assert r["n_policies"] == 2 and 0.0 <= r["gold_reward_mean"] <= 1.0 and r["gold_reward_var"] >= 0.0
        assert r["kl_mean"] > 0.0  # the policies moved away from the reference
    assert report["seconds"] > 0
    # a killed population resumes: remove one result and its run, rerun, only that one is redone
    victim = out / "policies/variance_aware/seed_1.json"
    kept = json.loads((out / "policies/vanilla/seed_0.json").read_text())
    victim.unlink()
    from varpo.defaults import EMBEDDED
    from varpo.evaluation.population import run_population

    rows = run_population(EMBEDDED, FAST, 2, out, workers=1)  # reuses OUT/reward/ and the 5 results
    assert victim.exists() and len(rows) == 6
    assert json.loads((out / "policies/vanilla/seed_0.json").read_text()) == kept
