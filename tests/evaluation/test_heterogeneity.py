"""`varpo heterogeneity` (Table 4) on the embedded default with tiny settings: real testbed, real
ensemble trained once, real PPO and gold-reward evaluation; its report, its resume, its errors."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from varpo.config import ConfigError

TINY = ["ppo.steps=2", "ppo.batch_size=4", "ppo.mini_batch_size=2", "ppo.ppo_epochs=1", "generation.max_new_tokens=4",
        "evaluation.num_eval_prompts=4", "evaluation.eval_batch_size=4", "reward_training.num_heads=2",
        "reward_training.epochs=1", "reward_training.max_train_pairs=64", "reward_training.batch_size=32"]
ROW_KEYS = {"scale", "spread", "weight_mean", "var_vanilla", "var_variance_aware", "n_a", "n_b", "ratio", "f_stat",
            "f_crit", "f_pvalue", "mean_vanilla", "mean_variance_aware", "kl_vanilla", "kl_variance_aware", "folder"}
# rewritten by every invocation by design: the report, and runs_context.jsonl (one line per invocation
# of each population: command, commit, load)
OUTPUTS = ("heterogeneity.json", "heterogeneity.md", "runs_context.jsonl")


def _invoke(*args):
    from varpo.cli import app

    return CliRunner().invoke(app, ["heterogeneity", *map(str, args)])


def _sweep(out, *extra):
    res = _invoke("--out", out, "--seeds", 2, "--scales", "0,1", "--workers", 1,
                  *[x for o in TINY for x in ("--set", o)], *extra)
    assert res.exit_code == 0, res.output
    return json.loads((out / "heterogeneity.json").read_text())


def _files(out):
    """mtime of every file the sweep's work writes (a retrained or re-evaluated policy rewrites some)."""
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in OUTPUTS}


def _rewards(folder, method):
    return [json.loads((folder / "policies" / method / f"seed_{k}.json").read_text())["reward"] for k in range(2)]


@pytest.mark.slow
def test_sweep_report_resume_and_alpha_zero_is_vanilla(testbed, tmp_path):
    out = tmp_path / "het"
    rep = _sweep(out)
    assert rep["a"] == "vanilla" and rep["b"] == "variance_aware" and rep["seeds"] == 2
    assert rep["scales"] == [0.0, 1.0] and [r["scale"] for r in rep["rows"]] == [0.0, 1.0]
    assert rep["command"].startswith("varpo heterogeneity --scales 0,1 --seeds 2 --out ")
    assert rep["reference"]["n_policies"] == 2
    assert rep["reference"]["reward_mean"] == pytest.approx(statistics.fmean(_rewards(out / "base", "reference")))
    # one reward model, one reference/vanilla population, one variance-aware population per α
    assert (out / "reward" / "rm_report.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["base", "heterogeneity.json", "heterogeneity.md", "reward",
                                                     "scale_0", "scale_1"]
    assert sorted(p.name for p in (out / "base" / "policies").iterdir()) == ["reference", "vanilla"]
    vanilla = _rewards(out / "base", "vanilla")
    for row in rep["rows"]:
        assert set(row) == ROW_KEYS
        va = _rewards(out / f"scale_{row['scale']:g}", "variance_aware")
        assert row["n_a"] == row["n_b"] == 2
        assert row["var_vanilla"] == pytest.approx(statistics.variance(vanilla), rel=1e-12, abs=1e-15)
        assert row["var_variance_aware"] == pytest.approx(statistics.variance(va), rel=1e-12, abs=1e-15)
        assert row["mean_variance_aware"] == pytest.approx(statistics.fmean(va))
        assert row["weight_mean"] == pytest.approx(1.0, rel=1e-6)  # α keeps the mean weight
    alpha0, alpha1 = rep["rows"]
    # α = 0 is vanilla PPO through the whole pipeline: the same policies, the same rewards
    assert _rewards(out / "scale_0", "variance_aware") == vanilla
    assert alpha0["spread"] == 0.0 and alpha0["kl_variance_aware"] == alpha0["kl_vanilla"]
    assert alpha1["spread"] > 0.0
    md = (out / "heterogeneity.md").read_text()
    assert rep["command"] in md and "| Scale | Spread of w | Var(vanilla) | Var(variance_aware) | Ratio |" in md

    # a finished sweep rerun does no work: no file is rewritten, the report is the same
    before = _files(out)
    again = _sweep(out)
    assert _files(out) == before and again == rep

    # a sweep killed before one result was saved redoes that policy only, identically
    victim = out / "scale_1" / "policies" / "variance_aware" / "seed_1.json"
    lost = json.loads(victim.read_text())
    victim.unlink()
    before = _files(out)
    resumed = _sweep(out)
    changed = {p for p, t in _files(out).items() if before.get(p) != t}
    assert victim in changed and all(str(p).startswith(str(out / "scale_1")) for p in changed)
    assert json.loads(victim.read_text()) == lost and resumed == rep


@pytest.mark.parametrize("scales, message", [
    ("a,1", "--scales: 'a' is not a number"),
    ("0,-1", "--scales: '-1' is not a finite number ≥ 0"),
    ("inf", "--scales: 'inf' is not a finite number ≥ 0"),
    ("", "--scales: empty"),
    ("0,,1", "--scales: empty entry"),
    ("1,1.0", "--scales: '1.0' is given twice"),
])
def test_bad_scales_fail_naming_the_option(tmp_path, scales, message):
    res = _invoke("--out", tmp_path / "het", "--seeds", 2, f"--scales={scales}")
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError), res.output
    assert message in str(res.exception)
    assert not (tmp_path / "het").exists()  # nothing started


def test_methods_that_cannot_carry_the_sweep_fail_before_training(tmp_path):
    res = _invoke("--out", tmp_path / "het", "--seeds", 2, "--scales", "0,1",
                  "--set", "evaluation.methods={vanilla: [ppo.variance.weighting=none], "
                  "variance_aware: [ppo.variance.weighting=raw]}")
    assert isinstance(res.exception, ConfigError), res.output
    assert "ppo.variance: " in str(res.exception) and "heterogeneity (0.0) must be 1 with weighting=raw" in str(res.exception)
    res = _invoke("--out", tmp_path / "het", "--seeds", 2, "--set", "evaluation.methods={vanilla: []}")
    assert isinstance(res.exception, ConfigError) and "evaluation.methods: the heterogeneity sweep needs ['variance_aware']" \
        in str(res.exception)
    assert not (tmp_path / "het").exists()
    # through the real entry point: exit status 2 and the message on stderr
    proc = subprocess.run([sys.executable, "-m", "varpo.cli", "heterogeneity", "--out", str(tmp_path / "het"),
                           "--scales", "0,x"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "--scales: 'x' is not a number" in proc.stderr
