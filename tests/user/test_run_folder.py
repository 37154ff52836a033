"""No silent surprises in an output folder: a finished run is not replaced without --overwrite,
an interrupted or finished run is not continued with another configuration without
--allow-config-change (the differing fields are listed), ppo.checkpoint_every 0 writes the last
checkpoint (so raising ppo.steps continues a run exactly), and summary.json names the reward."""
from __future__ import annotations

import json

import pytest
import yaml

from varpo.config import ConfigError, load_config, redacted_dict
from varpo.outputs import read_jsonl, without_timings
from varpo.run_folder import PPO, REWARD, config_changes, decide

from .test_bad_inputs import snapshot


def _saved(cfg) -> dict:
    return yaml.safe_load(yaml.safe_dump(redacted_dict(cfg)))


@pytest.mark.parametrize("change,listed", [
    (["ppo.kl.beta=0.2"], ["ppo.kl.beta"]),
    (["ppo.variance.weighting=batch_mean", "seed=3"], ["ppo.variance.weighting", "seed"]),
    (["ppo.checkpoint_every=5", "ppo.log_samples_every=1", "evaluation.num_eval_prompts=3", "checkpoint.keep_last=4",
      "kernels.backend=torch", "deepspeed.timeout_minutes=9", "ppo.eval_every=2"], []),
    (["ppo.steps=99"], []),  # a constant learning rate: raising the steps continues the same run
    (["reward_training.lr=0.5"], ["reward_training.lr"]),  # the default ensemble is trained from it
    (["data.eval_prompts_path=/x.jsonl"], []),  # only evaluated on
])
def test_which_ppo_fields_count(change, listed):
    base = load_config(None, [])
    assert [k for k, _, _ in config_changes(_saved(base), load_config(None, change), PPO)] == listed


def test_schedule_and_reward_make_fields_count():
    sched = ["ppo.lr_schedule=cosine"]
    assert [k for k, _, _ in config_changes(_saved(load_config(None, sched)),
                                            load_config(None, [*sched, "ppo.steps=40"]))] == ["ppo.steps"]
    own_rm = ["reward.path=/rm"]  # with a reward model named, how the default one would train is irrelevant
    assert config_changes(_saved(load_config(None, own_rm)), load_config(None, [*own_rm, "reward_training.lr=0.5"])) == []
    # reward training: its own sections count, PPO's do not
    assert [k for k, _, _ in config_changes(_saved(load_config(None, [])), load_config(None, [
        "ppo.kl.beta=3", "reward_training.lr=0.5", "reward_training.epochs=5", "reward_training.eval_every=2"]),
        REWARD)] == ["reward_training.lr"]  # more epochs continue the same run
    # a field the saved config predates is not a change
    old = _saved(load_config(None, []))
    del old["ppo"]["lr_schedule"]
    assert config_changes(old, load_config(None, []), PPO) == []


def test_decide_on_fabricated_folders(tmp_path):
    cfg = load_config(None, ["ppo.steps=4"])
    assert decide(tmp_path / "new", cfg, PPO).action == "fresh"
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000002").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(redacted_dict(cfg)))
    assert decide(run, cfg, PPO).action == "resume"
    other = load_config(None, ["ppo.steps=4", "ppo.kl.beta=0.3", "generation.temperature=0.7"])
    with pytest.raises(ConfigError, match=r"--out .*run: the interrupted PPO run there was started with another "
                                          r"configuration, .*generation.temperature: 1.0 -> 0.7; ppo.kl.beta: 0.1 -> "
                                          r"0.3\. .*--allow-config-change"):
        decide(run, other, PPO)
    d = decide(run, other, PPO, allow_config_change=True)
    assert d.action == "resume" and "generation.temperature, ppo.kl.beta changed" in d.note
    (run / "summary.json").write_text(json.dumps({"steps": 4}))
    with pytest.raises(ConfigError, match=r"holds a finished PPO run .*pass --overwrite to replace it, or raise "
                                          r"ppo.steps above 4 to continue it"):
        decide(run, cfg, PPO)
    assert decide(run, cfg, PPO, reuse_finished=True).summary == {"steps": 4}
    with pytest.raises(ConfigError, match="finished PPO run there was started with another configuration"):
        decide(run, other, PPO, reuse_finished=True)  # a population never reuses a run of another config
    assert decide(run, cfg, PPO, overwrite=True).action == "overwrite"
    assert decide(run, load_config(None, ["ppo.steps=6"]), PPO).action == "continue"
    (run / "config.yaml").unlink()  # a run from before config.yaml was saved: said, not compared
    d = decide(run, load_config(None, ["ppo.steps=6"]), PPO)
    assert d.action == "continue" and "cannot be compared" in d.note
    assert decide(run, cfg, PPO, reuse_finished=True).action == "reuse"
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "rm_report.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds a finished reward-model run .*rm_report.json\); choose another "
                                          r"--out, or pass --overwrite to replace it$"):
        decide(rm, cfg, REWARD)


def test_finished_runs_are_kept_and_continued_exactly(user_models, tmp_path, ppo_overrides):
    from varpo.ppo import train_ppo

    common = [f"model.policy_path={user_models['policy']}", "reward.type=sequence_classifier",
              f"reward.path={user_models['reward_model']}", *ppo_overrides, "ppo.checkpoint_every=0"]
    a, b = tmp_path / "a", tmp_path / "b"
    s2 = train_ppo(load_config(None, common), a)
    assert (a / "checkpoints" / "step_00000002").is_dir()  # checkpoint_every 0: "only at the end", not never
    assert s2["reward"]["type"] == "sequence_classifier" and s2["reward"]["path"] == user_models["reward_model"]
    assert s2["reward"]["sigma2"].startswith("0: one reward model")
    assert json.loads((a / "summary.json").read_text())["reward"] == s2["reward"]
    before = snapshot(a)
    for extra, match in ((["ppo.steps=2"], "holds a finished PPO run"),
                         (["ppo.steps=3", "ppo.kl.beta=0.3"], r"ppo.kl.beta: 0.1 -> 0.3")):
        with pytest.raises(ConfigError, match=match):
            train_ppo(load_config(None, [*common, *extra]), a)
        assert snapshot(a) == before  # refused: nothing written, nothing replaced
    assert train_ppo(load_config(None, common), a, reuse_finished=True) == s2 and snapshot(a) == before
    # raising ppo.steps continues it from the last checkpoint, as if it had never stopped
    s3 = train_ppo(load_config(None, [*common, "ppo.steps=3"]), a)
    train_ppo(load_config(None, [*common, "ppo.steps=3"]), b)
    assert s3["steps"] == 3
    ra, rb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [r["step"] for r in ra] == [0, 1, 2]
    assert [without_timings(r) for r in ra] == [without_timings(r) for r in rb]
    # --overwrite starts over: the earlier run's outputs are gone, a user's own file stays
    (a / "notes.txt").write_text("mine")
    train_ppo(load_config(None, [*common, "ppo.steps=1"]), a, overwrite=True)
    assert [r["step"] for r in read_jsonl(a / "metrics.jsonl")] == [0]
    assert sorted(p.name for p in (a / "checkpoints").glob("step_*")) == ["step_00000001"]
    assert (a / "notes.txt").read_text() == "mine"


def test_reward_training_runs_are_kept_and_continued(user_models, user_data, tmp_path):
    """`varpo train-rm` (varpo.commands.train_rm.run): a finished run is refused and left as it was,
    raising reward_training.epochs continues it exactly, --overwrite starts over."""
    from varpo.commands.train_rm import run

    rm = [f"reward_training.backbone_path={user_models['reward_model']}", f"data.pairs_path={user_data['hh_pairs']}",
          "reward_training.num_heads=2", "reward_training.lora.enabled=false", "reward_training.batch_size=16",
          "reward_training.max_length=32", "reward_training.eval_every=2"]
    a, b = tmp_path / "a", tmp_path / "b"
    one = run(load_config(None, [*rm, "reward_training.epochs=1"]), a)
    assert one["steps"] == 2 and (a / "checkpoints" / "step_00000002").is_dir()  # 43 pairs, batches of 16
    before = snapshot(a)
    for extra, match in ((["reward_training.epochs=1"], r"holds a finished reward-model run .*raise "
                                                          r"reward_training.epochs above 1 to continue it"),
                         (["reward_training.epochs=2", "reward_training.lr=0.5"], r"reward_training.lr: 0.01 -> 0.5")):
        with pytest.raises(ConfigError, match=match):
            run(load_config(None, [*rm, *extra]), a)
        assert snapshot(a) == before
    two = run(load_config(None, [*rm, "reward_training.epochs=2"]), a)
    ref = run(load_config(None, [*rm, "reward_training.epochs=2"]), b)
    assert two["steps"] == ref["steps"] == 4
    assert two["final_train_loss"] == ref["final_train_loss"] and two["head_accuracy"] == ref["head_accuracy"]
    three = run(load_config(None, [*rm, "reward_training.epochs=1"]), a, overwrite=True)
    assert three["steps"] == 2 and sorted(p.name for p in (a / "checkpoints").glob("step_*")) == ["step_00000002"]
