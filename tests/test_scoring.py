"""varpo.scoring: the reward-source registry and the default reward ensemble's cache key."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from varpo import scoring
from varpo.config import ConfigError, config_hash, load_config


def test_every_reward_type_of_the_config_has_a_source():
    from typing import get_args

    from varpo.config import RewardConfig

    assert set(get_args(RewardConfig.model_fields["type"].annotation)) == set(scoring.SCORERS)
    cfg = load_config(None, [])
    object.__setattr__(cfg.reward, "type", "nope")  # past the schema: what a registry without the type sees
    with pytest.raises(ConfigError, match="reward.type='nope'.*known: ensemble, judge, gold, oracle"):
        scoring.build_scorer(cfg)


def test_the_default_ensemble_is_keyed_by_config_hash_and_an_older_cache_is_used_in_place(tmp_path, monkeypatch):
    """The cache folder is named by config_hash (16 characters); a folder made when the key had 12
    (its first 12) is found and used where it is, without training."""
    tb_dir = tmp_path / "testbed-x-v1"
    tb_dir.mkdir()
    monkeypatch.setattr("varpo.testbed.build_testbed", lambda cfg, progress=False: SimpleNamespace(dir=tb_dir))
    cfg = load_config(None, [])
    key = config_hash({"reward": cfg.reward, "reward_training": cfg.reward_training})
    assert len(key) == 16
    legacy = tmp_path / f"testbed-x-v1-reward-{key[:12]}"
    legacy.mkdir()
    (legacy / "rm_report.json").write_text(json.dumps({"model_path": str(legacy / "reward_model")}))
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("trained although a cache exists"))
    assert scoring.default_reward_model(cfg) == str(legacy / "reward_model")
    current = tmp_path / f"testbed-x-v1-reward-{key}"
    current.mkdir()
    (current / "rm_report.json").write_text(json.dumps({"model_path": str(current / "reward_model")}))
    assert scoring.default_reward_model(cfg) == str(current / "reward_model")
