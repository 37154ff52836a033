"""`varpo stats DIR` on synthetic populations in both layouts; bad folders and rows."""
import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from varpo.cli import app
from varpo.config import ConfigError
from varpo.evaluation.stats import compute_stats

METHODS = {"reference": (0.30, 0.02), "vanilla": (0.35, 0.08), "variance_aware": (0.35, 0.03), "worst_case": (0.33, 0.05)}


def population(folder, n=21, layout="files", seed=0):
    rng = np.random.default_rng(seed)
    rows = [{"method": m, "seed": s, "reward": float(rng.normal(mu, sd)), "kl_mean": 0.1}
            for m, (mu, sd) in METHODS.items() for s in range(n)]
    if layout == "files":
        for r in rows:
            p = folder / "policies" / r["method"] / f"seed_{r['seed']}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(r))
    else:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "policies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def run(*args):
    return CliRunner().invoke(app, ["stats", *map(str, args)])


@pytest.mark.parametrize("layout", ["files", "jsonl"])
def test_stats_writes_contract_keys(tmp_path, layout):
    rows = population(tmp_path, layout=layout)
    res = run(tmp_path, "--model", "tiny-lm", "--reward-model", "ensemble")
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "stats.json").read_text())
    for m in METHODS:
        for key in ("mean", "var", "n", "risk"):
            assert key in out[m] and out[m] == out["methods"][m]
        assert out[m]["n"] == 21
    for key in ("f_stat", "f_crit", "f_pvalue", "welch_t", "welch_pvalue"):
        assert isinstance(out[key], float)
    # the command reports what the pure function computes from the same rewards (ordered by seed)
    by = {m: [r["reward"] for r in rows if r["method"] == m] for m in METHODS}
    assert out["f_stat"] == pytest.approx(compute_stats(by)["f_stat"], rel=1e-12)
    assert len(out["comparisons"]) == 3
    md = (tmp_path / "stats.md").read_text()
    assert "## Table 1" in md and "## Table 2" in md and "## Table 3" in md
    assert "| tiny-lm | ensemble | vanilla | variance_aware |" in md
    png = (tmp_path / "hist.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def err(tmp_path, *args):
    res = run(tmp_path, *args)
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError), res.output
    return str(res.exception)


def test_missing_and_empty_folder(tmp_path):
    assert "population folder not found" in err(tmp_path / "nope")
    assert "no policy results" in err(tmp_path)


def test_bad_rows_name_the_file_and_field(tmp_path):
    population(tmp_path, n=3)
    bad = tmp_path / "policies" / "vanilla" / "seed_1.json"
    bad.write_text('{"method": "vanilla", "seed": 1}')
    assert f"{bad}: field 'reward' must be a finite number, got None" in err(tmp_path)
    bad.write_text('{"method": "vanilla", "seed": 1, "reward": "high"}')
    assert "field 'reward'" in err(tmp_path)
    bad.write_text('{"method": "vanilla", "seed": 1, "reward": NaN}')
    assert "field 'reward' must be a finite number, got nan" in err(tmp_path)
    bad.write_text('{"method": "vanilla", "seed": 1, "reward": 0.3')
    assert f"{bad}: not valid JSON" in err(tmp_path)
    bad.write_text('{"method": "vanilla", "seed": 2, "reward": 0.3}')
    assert "field 'seed' is 2 but the file is named seed_1.json" in err(tmp_path)
    bad.write_text('{"method": "median", "seed": 1, "reward": 0.3}')
    assert "under policies/vanilla/" in err(tmp_path)
    bad.write_text('[1, 2]')
    assert "expected a JSON object" in err(tmp_path)


def test_bad_jsonl_line_and_duplicates(tmp_path):
    population(tmp_path, n=3, layout="jsonl")
    jl = tmp_path / "policies.jsonl"
    lines = jl.read_text().splitlines()
    jl.write_text("\n".join(lines[:4] + ['{"method": 3, "seed": 0, "reward": 1.0}'] + lines[4:]) + "\n")
    assert f"{jl}:5: field 'method' must be a non-empty string" in err(tmp_path)
    jl.write_text("\n".join(lines + [lines[0]]) + "\n")
    assert "also in" in err(tmp_path) and ":1" in err(tmp_path)


def test_too_few_policies_and_unknown_baseline(tmp_path):
    population(tmp_path, n=1)
    assert "need at least 2 policies" in err(tmp_path)
    population(tmp_path, n=3)
    assert "baseline method 'ppo'" in err(tmp_path, "--baseline", "ppo")


def test_error_exit_code_through_main(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "varpo.cli", "stats", str(tmp_path / "missing")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "population folder not found" in proc.stderr


def test_evaluation_noise_from_reward_se(tmp_path):
    """Methods whose every policy has a reward_se get eval_noise_var = mean(se²) and
    var_excess = var − eval_noise_var; a method with a missing se gets None."""
    rows = population(tmp_path)
    rng = np.random.default_rng(7)
    se = {}
    for r in rows:
        if r["method"] == "worst_case" and r["seed"] == 3:
            continue  # one policy without an estimate: the method gets none
        se[(r["method"], r["seed"])] = float(rng.uniform(0.001, 0.02))
        path = tmp_path / "policies" / r["method"] / f"seed_{r['seed']}.json"
        path.write_text(json.dumps({**r, "reward_se": se[(r["method"], r["seed"])]}))
    res = run(tmp_path)
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "stats.json").read_text())
    for m in ("reference", "vanilla", "variance_aware"):
        want = sum(v**2 for (mm, _), v in se.items() if mm == m) / 21
        var = float(np.var([r["reward"] for r in rows if r["method"] == m], ddof=1))
        assert out[m]["eval_noise_var"] == pytest.approx(want, rel=1e-12)
        assert out[m]["var_excess"] == pytest.approx(var - want, rel=1e-12)
    assert out["worst_case"]["eval_noise_var"] is None and out["worst_case"]["var_excess"] is None
    assert "Eval-noise var" in (tmp_path / "stats.md").read_text()


@pytest.mark.parametrize("bad", [-0.1, "x", float("inf"), True])
def test_bad_reward_se_names_file_and_field(tmp_path, bad):
    population(tmp_path, n=3)
    path = tmp_path / "policies" / "vanilla" / "seed_1.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "reward_se": bad}).replace("Infinity", "1e999"))
    msg = err(tmp_path)
    assert "seed_1.json" in msg and "reward_se" in msg
