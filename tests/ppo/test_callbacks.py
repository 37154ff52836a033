"""What a user does without editing varpo: add a logger and an early stop as callbacks, on a real
tiny PPO run (real DeepSpeed engines, CPU)."""
from __future__ import annotations

import json

import pytest
import torch

from varpo.ppo import TrainerCallback
from varpo.ppo.experience import Experience


class UserLogger(TrainerCallback):
    """Records every event; asks to stop once the run has done `stop_after` steps."""

    def __init__(self, stop_after: int):
        self.stop_after, self.events, self.rows, self.samples = stop_after, [], [], []

    def on_train_begin(self, trainer):
        self.events.append(("train_begin", trainer.step))
        self.tokenizer = trainer.tokenizer

    def on_rollout_scored(self, prompts, responses, experience):
        self.events.append(("rollout_scored", len(prompts)))
        self.samples.append((list(prompts), list(responses), experience))

    def on_step_end(self, metrics):
        self.events.append(("step_end", metrics["step"]))
        self.rows.append(dict(metrics))
        if metrics["step"] + 1 >= self.stop_after:
            self.stop(f"enough after {self.stop_after} steps")

    def on_checkpoint_saved(self, path):
        self.events.append(("checkpoint_saved", path.name))
        from varpo import checkpoint

        assert checkpoint.check(path) is None  # committed and whole when the callback sees it

    def on_train_end(self, summary):
        self.events.append(("train_end", summary["steps"]))
        self.summary = summary


def test_user_logger_and_early_stop(make_cfg, prompts, tmp_path, word_scorer):
    from varpo import checkpoint
    from varpo.ppo.loggers import WandbLogger
    from varpo.ppo.trainer import PPOTrainer

    cfg = make_cfg("ppo.steps=5", "ppo.checkpoint_every=1", "ppo.variance.weighting=batch_mean",
                   "ppo.log_samples_every=1")
    user = UserLogger(stop_after=2)
    trainer = PPOTrainer.from_config(cfg, tmp_path, prompts=prompts, policy_path=cfg.model.policy_path, scorer=word_scorer(),
                         callbacks=[user])
    assert not any(isinstance(cb, WandbLogger) for cb in trainer.callbacks.callbacks)  # off by default
    summary = trainer.train()

    assert user.events == [
        ("train_begin", 0),
        ("rollout_scored", 8), ("step_end", 0), ("checkpoint_saved", checkpoint.name_of(1)),
        ("rollout_scored", 8), ("step_end", 1),  # stop requested: no periodic checkpoint, the final one
        ("checkpoint_saved", checkpoint.name_of(2)), ("train_end", 2),
    ]
    assert summary["steps"] == 2 and summary["stopped_early"] == "enough after 2 steps"
    assert user.summary == summary == json.loads((tmp_path / "summary.json").read_text())
    # the user's logger saw exactly the rows varpo wrote
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == json.loads(json.dumps(user.rows))
    # the scored experience: its texts are the decoded ids, its scores the scorer's on those texts
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 8 and [r["step"] for r in samples] == [0] * 8 + [1] * 8
    for step, (prompts_, responses, exp) in enumerate(user.samples):
        rows = samples[8 * step: 8 * step + 8]
        assert [r["prompt"] for r in rows] == prompts_ and [r["response"] for r in rows] == responses
        assert [r["score"] for r in rows] == pytest.approx(exp.score.tolist(), abs=0)
        assert [r["variance"] for r in rows] == pytest.approx(exp.variance.tolist(), abs=0)
        # explained variance of the critic: 1 − Var[R − V]/Var[R] over real tokens, float64 by hand
        real = exp.mask.bool()
        R, V = exp.returns[real].double(), exp.values[real].double()
        assert user.rows[step]["explained_variance"] == pytest.approx(float(1 - (R - V).var() / R.var()), rel=1e-4, abs=1e-6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    (text,) = [t for t in events.Tags()["tensors"] if t.startswith("samples")]
    table = [e for e in events.Tensors(text)]
    assert [e.step for e in table] == [0, 1]
    first = table[0].tensor_proto.string_val[0].decode()
    assert first.startswith("| prompt | response | score | σ² |") and user.samples[0][0][0] in first
    for prompts_, responses, exp in user.samples:
        assert exp.prompts == prompts_ and exp.responses == responses
        assert responses == user.tokenizer.batch_decode(
            [r[m.bool()] for r, m in zip(exp.response_ids, exp.response_mask)], skip_special_tokens=True)
        again = word_scorer().score(prompts_, responses)
        torch.testing.assert_close(exp.score, again.score.float())
        torch.testing.assert_close(exp.variance, again.variance.float())
        # filled by the later stages of the same step (the object the update consumed)
        B, T = exp.response_ids.shape
        for name in ("logp", "ref_logp", "values", "mask", "kl", "rewards", "advantages", "returns"):
            assert getattr(exp, name).shape == (B, T), name
        assert exp.weights.shape == (B,)
        assert float(exp.weights.mean()) == pytest.approx(1.0, rel=1e-5)  # batch_mean, one rank


def test_wandb_is_optional_and_its_absence_is_a_clear_error(make_cfg, prompts, tmp_path, word_scorer, monkeypatch):
    """Enabled without the package: a ConfigError naming the field, before any model loads."""
    import sys

    from varpo.config import ConfigError
    from varpo.ppo.trainer import PPOTrainer

    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without wandb looks like to import
    cfg = make_cfg("ppo.wandb.enabled=true")
    with pytest.raises(ConfigError, match=r"ppo\.wandb\.enabled: true needs the wandb package"):
        PPOTrainer.from_config(cfg, tmp_path, prompts=prompts, policy_path=cfg.model.policy_path, scorer=word_scorer())
    assert make_cfg().ppo.wandb.enabled is False


def test_callbacks_must_be_callbacks(make_cfg, prompts, tmp_path, word_scorer):
    from varpo.ppo.callbacks import CallbackList, TrainerControl

    with pytest.raises(TypeError, match="TrainerCallback instances, got function"):
        CallbackList([lambda m: None], TrainerControl())


def test_experience_select_carries_every_field_and_extra():
    g = torch.Generator().manual_seed(0)
    B, P, T = 5, 3, 4
    exp = Experience(torch.randint(0, 9, (B, P), generator=g), torch.ones(B, P, dtype=torch.long),
                     torch.randint(0, 9, (B, T), generator=g), torch.ones(B, T, dtype=torch.long),
                     torch.rand(B, generator=g) > 0.5, prompts=[f"p{i}" for i in range(B)],
                     responses=[f"r{i}" for i in range(B)], score=torch.rand(B, generator=g),
                     logp=torch.rand(B, T, generator=g), extras={"is_weight": torch.rand(B, T, generator=g),
                                                                 "group": [i // 2 for i in range(B)]})
    idx = torch.tensor([4, 0, 2])
    sub = exp.select(idx)
    assert sub.prompts == ["p4", "p0", "p2"] and sub.responses == ["r4", "r0", "r2"]
    assert sub.extras["group"] == [2, 0, 1]
    for name in ("prompt_ids", "response_ids", "has_eos", "score", "logp"):
        assert torch.equal(getattr(sub, name), getattr(exp, name)[idx]), name
    assert torch.equal(sub.extras["is_weight"], exp.extras["is_weight"][idx])
    assert sub.values is None and sub.advantages is None
    assert [c.batch_size for c in exp.chunks(2)] == [2, 2, 1]
    assert torch.equal(torch.cat([c.sequences for c in exp.chunks(2)]), exp.sequences)
    with pytest.raises(TypeError, match="cannot select from dict"):
        Experience(*[getattr(exp, n) for n in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "has_eos")],
                   extras={"bad": {}}).select(idx)
