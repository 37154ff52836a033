"""The issue's contract, from outside: `varpo train-rm --out DIR` on the embedded default."""
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_train_rm_on_the_embedded_default(tmp_path, testbed):
    out = tmp_path / "rm"
    env = {**os.environ, "VARPO_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-m", "varpo.cli", "train-rm", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "rm_report.json").read_text())
    for key in ("num_heads", "head_accuracy", "ensemble_accuracy", "variance_quantiles", "diff_variance_quantiles", "seconds"):
        assert key in r, key
    K = r["num_heads"]
    assert K == 10 and len(r["head_accuracy"]) == K
    for q in ("variance_quantiles", "diff_variance_quantiles"):
        assert 0 < r[q]["p10"] <= r[q]["p50"] <= r[q]["p90"]  # the heads genuinely disagree
    assert len(set(r["head_accuracy"])) > 1
    assert r["ensemble_accuracy"] > 0.65  # 500 held-out pairs: chance is 0.5 ± 0.045 (2σ)
    assert r["ensemble_gold_accuracy"] > 0.65
    assert isinstance(r["uncertainty_calibration"]["spearman_sigma2_sqerr"], float)  # gold is known: σ² vs error
    assert (out / "disagreement.png").stat().st_size > 0
    assert r["model_path"] == str(out / "reward_model")
    # the folder is what a PPO config points at
    from varpo.config import VarpoConfig
    from varpo.scoring import build_scorer

    cfg = VarpoConfig.model_validate({"reward": {"type": "ensemble", "path": r["model_path"]}})
    pairs = testbed.pairs("eval")[:8]
    s = build_scorer(cfg).score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    assert s.score.shape == (8,) and (s.variance > 0).all() and s.extras["per_head"].shape == (8, K)
