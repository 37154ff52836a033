"""`varpo theory bandit`: the contract keys, the plots, and errors naming the option."""
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from varpo.cli import app
from varpo.config import ConfigError

SMALL = ["--n-draws", "20000", "--repeats", "3", "--draws-per-repeat", "300"]


def run(*args):
    return CliRunner().invoke(app, ["theory", "bandit", *map(str, args)])


def test_contract(tmp_path):
    res = run("--out", tmp_path, "--true-rewards", "1,0.8,0.6", "--variances", "2,0.1,0.1", *SMALL)
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "theory.json").read_text())
    assert out["true_rewards"] == [1.0, 0.8, 0.6] and out["variances"] == [2.0, 0.1, 0.1]
    assert out["n_draws"] == 20000
    for key in ("risk_closed_form", "risk_monte_carlo", "risk_monte_carlo_se"):
        assert set(out[key]) == {"vanilla", "variance_aware"}
    assert out["risk_closed_form"]["variance_aware"] < out["risk_closed_form"]["vanilla"]
    assert set(out["kl_regularised"]["policies"]) == {"vanilla", "variance_aware", "sharpe"}
    assert set(out["heterogeneity"]["settings"]) == {"narrow", "wide"}
    assert "_returns" not in out["kl_regularised"] and "_pooled" not in out["heterogeneity"]
    for name in out["files"]:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert len(out["files"]) == 3


def test_defaults_are_the_paper_illustration(tmp_path):
    res = run("--out", tmp_path, *SMALL)
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "theory.json").read_text())
    assert out["true_rewards"] == [0.6, 0.8, 1.0] and out["variances"] == [2.0, 0.1, 0.1]
    assert "spuriously" in out["illustration"]["note"]


@pytest.mark.parametrize("args,msg", [
    (["--true-rewards", "1,0.8", "--variances", "2,0.1,0.1"], "--variances '2,0.1,0.1': expected 2 values"),
    (["--variances", "2,-0.1,0.1"], "--variances '2,-0.1,0.1': every variance must be > 0"),
    (["--true-rewards", "1,x,0.6"], "--true-rewards '1,x,0.6': expected comma-separated numbers"),
    (["--true-rewards", "1,nan,0.6"], "--true-rewards '1,nan,0.6': every value must be finite"),
    (["--beta", "0"], "--beta 0.0: must be finite and > 0"),
    (["--beta-rule", "median"], "--beta-rule 'median'"),
    (["--wide", "2,1"], "--wide '2,1': expected 0 < LO ≤ HI"),
    (["--narrow", "1"], "--narrow '1': expected 2 values"),
])
def test_bad_input_names_the_option(tmp_path, args, msg):
    res = run("--out", tmp_path, *args)
    assert isinstance(res.exception, ConfigError), res.output
    assert msg in str(res.exception)
    assert not (tmp_path / "theory.json").exists()


def test_error_exit_code_through_main(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "varpo.cli", "theory", "bandit", "--out", str(tmp_path),
                           "--variances", "1,2"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "--variances '1,2': expected 3 values" in proc.stderr
