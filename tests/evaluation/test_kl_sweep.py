"""kl-sweep: the reduction of policies to points, the over-optimization criterion, the CLI contract."""
from __future__ import annotations

import json
import math

import pytest

from varpo.evaluation.kl_sweep import (
    DEFAULT_OVERRIDES,
    _point,
    overoptimization,
    seed_overrides,
    with_defaults,
)


def _p(method, beta, kl, gold, se, proxy):
    return {"method": method, "beta": beta, "kl_mean": kl, "gold_mean": gold, "gold_se": se, "proxy_mean": proxy}


def test_point_means_and_standard_error():
    rows = [{"reward": 0.5, "reward_se": 0.01, "kl_mean": 1.0, "proxy_mean": 0.7},
            {"reward": 0.6, "reward_se": 0.02, "kl_mean": 3.0, "proxy_mean": 0.9}]
    p = _point("vanilla", 0.1, rows)
    assert p["gold_mean"] == pytest.approx(0.55) and p["kl_mean"] == pytest.approx(2.0)
    assert p["proxy_mean"] == pytest.approx(0.8)
    se_seeds = math.sqrt(((0.05) ** 2 * 2) / 1) / math.sqrt(2)  # sample std over 2 seeds / sqrt(2)
    assert p["gold_se"] == pytest.approx(max(se_seeds, math.sqrt(0.01**2 + 0.02**2) / 2))


def test_overoptimization_criterion():
    pts = [_p("v", 1.0, 0.5, 0.50, 0.01, 0.5), _p("v", 0.1, 2.0, 0.60, 0.01, 0.6), _p("v", 0.01, 6.0, 0.45, 0.01, 0.8)]
    o = overoptimization(pts, "v")
    assert o["peak_beta"] == 0.1 and o["peak_is_interior"] and o["proxy_rises_monotonically"]
    assert o["drop"] == pytest.approx(0.15) and o["drop_in_se"] == pytest.approx(0.15 / math.hypot(0.01, 0.01))
    assert o["overoptimized"]
    rising = [_p("v", 1.0, 0.5, 0.5, 0.01, 0.5), _p("v", 0.1, 2.0, 0.6, 0.01, 0.6), _p("v", 0.01, 6.0, 0.7, 0.01, 0.8)]
    assert not overoptimization(rising, "v")["overoptimized"]
    small_drop = [*pts[:2], _p("v", 0.01, 6.0, 0.59, 0.01, 0.8)]
    assert not overoptimization(small_drop, "v")["overoptimized"]  # 0.01 is < 3 SE
    assert overoptimization(pts[:1], "v") is None


def test_sweep_defaults_yield_to_the_users_overrides():
    from varpo.config import load_config
    from varpo.defaults import OVEROPT

    cfg = load_config(OVEROPT, with_defaults([], 60, DEFAULT_OVERRIDES))
    assert cfg.reward_training.ensemble_kind == "deep" and cfg.ppo.steps == 60
    assert cfg.reward_training.num_heads == 5 and not cfg.reward_training.lora.enabled
    cfg = load_config(OVEROPT, with_defaults(["reward_training.ensemble_kind=heads", "ppo.steps=5"], 60,
                                               DEFAULT_OVERRIDES))
    assert cfg.reward_training.ensemble_kind == "heads" and cfg.ppo.steps == 5
    assert load_config(OVEROPT, with_defaults([], None)).ppo.steps == 100  # the config's own
    # --seed S: its own ensemble (run seed, member seeds) unless the user says otherwise
    cfg = load_config(OVEROPT, with_defaults([*seed_overrides(3), "seed=7"], None, DEFAULT_OVERRIDES))
    assert cfg.seed == 7 and cfg.reward_training.head_seed == 300
    assert seed_overrides(0) == []


@pytest.mark.slow
def test_kl_sweep_cli_contract_on_the_oracle(tmp_path):
    from typer.testing import CliRunner

    from varpo.cli import app

    out = tmp_path / "sweep"
    fast = ["reward.type=oracle", "testbed.num_train_pairs=16", "testbed.num_eval_pairs=8", "ppo.steps=1",
            "ppo.batch_size=8", "ppo.mini_batch_size=4", "evaluation.num_eval_prompts=8"]
    res = CliRunner().invoke(app, ["kl-sweep", "--out", str(out), "--betas", "0.1", "--seeds", "1", "--workers", "1",
                                   "--best-of-n", "4", "--seed", "2", *[x for o in fast for x in ("--set", o)]],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "kl_sweep.json").read_text())
    assert data["seed"] == 2 and data["member_seeds"] == [2000, 2000] and data["steps"] == 1
    assert (out / "population" / "policies" / "vanilla@beta=0.1" / "seed_2000.json").exists()
    rows = [json.loads(f.read_text()) for f in (out / "population" / "policies").glob("*@*/seed_*.json")]
    assert len({r["policy_sha256"] for r in rows}) == 2 and all(r["training_seed"] == 2000 for r in rows)
    assert (out / "kl_sweep.png").stat().st_size > 0
    pts = data["points"]
    swept = [p for p in pts if p["method"] in ("vanilla", "variance_aware")]
    assert sorted((p["method"], p["beta"]) for p in swept) == [("vanilla", 0.1), ("variance_aware", 0.1)]
    for p in swept:
        assert set(p) >= {"method", "beta", "kl_mean", "gold_mean", "gold_se", "proxy_mean"}
        # one step from the reference: the evaluation samples' KL is small (a sample mean of
        # log π − log π_ref, which can fall a little below 0)
        assert abs(p["kl_mean"]) < 1.0 and 0 <= p["gold_mean"] <= 1 and p["gold_se"] > 0 and p["proxy_mean"] is not None
    bon = [p for p in pts if p["method"] == "best_of_n"]
    assert [p["n"] for p in bon] == [1, 2, 4]
    assert [p["kl_mean"] for p in bon] == pytest.approx([math.log(n) - (n - 1) / n for n in (1, 2, 4)])
    assert bon[0]["proxy_mean"] <= bon[-1]["proxy_mean"]  # best of more samples scores higher on the proxy
