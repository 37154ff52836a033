"""What TRL and OpenRLHF users expect of a PPO run: evaluation on held-out prompts during
training (logged with the step's metrics) and a learning-rate warm-up and schedule for actor
and critic (stepped by the engines, resumed exactly)."""
from __future__ import annotations

import math

import pytest
import torch

from varpo.config import load_config
from varpo.outputs import read_jsonl, without_timings

from .conftest import GOOD


def gold_words(prompts, responses):
    """A real true reward for the test: the share of 'good' words in the response."""
    return [sum(w in GOOD for w in r.split()) / max(len(r.split()), 1) for r in responses]


def _cfg(user_models, user_data, ppo_overrides, *extra):
    return load_config(None, [f"model.policy_path={user_models['policy']}", "reward.type=sequence_classifier",
                              f"reward.path={user_models['reward_model']}",
                              f"data.prompts_path={user_data['conv_prompts']}", *ppo_overrides, *extra])


def test_evaluation_during_training_is_logged_and_exact(user_models, user_data, ppo_overrides, tmp_path):
    """eval/* metrics appear at the due steps (every 2, and after the last); the last evaluation is
    recomputed from the exported policy with the same seed: same samples, same reward, same gold."""
    from transformers import AutoModelForCausalLM

    from varpo.data.sets import policy_renderer, train_prompts
    from varpo.models.loading import load_tokenizer
    from varpo.ppo.generation import sampling_seed
    from varpo.ppo.generation.hf import generate
    from varpo.ppo.periodic_eval import EVAL_STEP, PeriodicEvaluation
    from varpo.ppo.roles import build_roles
    from varpo.ppo.tokens import decode_responses, tokenize_prompts
    from varpo.ppo.trainer import PPOTrainer
    from varpo.scoring import build_scorer

    cfg = _cfg(user_models, user_data, ppo_overrides, "ppo.steps=3")
    prompts = train_prompts(cfg, policy_renderer(cfg, user_models["policy"]))
    held = prompts[-5:]  # five held-out prompts: one chunk of the local batch (4) and one of 1
    scorer = build_scorer(cfg)
    roles = build_roles(cfg, tmp_path, policy_path=user_models["policy"], scorer=scorer)
    roles.callbacks.insert(0, PeriodicEvaluation(held, 2, gold_words))  # first: before the loggers, as train_ppo does
    summary = PPOTrainer(cfg, tmp_path, roles, prompts=prompts[:-5], gold_fn=gold_words).train()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert ["eval/reward_mean" in r for r in rows] == [False, True, True]
    last = rows[-1]
    assert last["eval/samples"] == 5 and summary["final"]["eval/gold_mean"] == last["eval/gold_mean"]
    assert last["eval/variance_mean"] == 0.0  # one reward model: no spread
    # the reference: the exported policy, the evaluation's seed, the same chunks
    tok = load_tokenizer(summary["policy_path"])
    policy = AutoModelForCausalLM.from_pretrained(summary["policy_path"]).eval()
    responses = []
    for s in range(0, 5, 4):
        ids, mask, _ = tokenize_prompts(tok, held[s : s + 4], cfg.generation.max_prompt_len, "cpu")
        torch.manual_seed(sampling_seed(cfg.seed, EVAL_STEP + s, 0))
        responses += decode_responses(tok, generate(policy, tok, ids, mask, cfg.generation, record_logprobs=cfg.kernels))
    rewards = scorer.score(held, responses).score.double()
    assert last["eval/reward_mean"] == pytest.approx(float(rewards.mean()), rel=1e-6)
    assert last["eval/score_mean"] == last["eval/reward_mean"]
    assert last["eval/gold_mean"] == pytest.approx(sum(gold_words(held, responses)) / 5, rel=1e-12)
    lengths = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in responses]
    assert last["eval/response_length"] >= sum(lengths) / 5 - 1e-9  # (+ the EOS a finished response keeps)


def test_lr_factor_matches_torch_schedulers():
    """The warm-up and decays against torch's own schedulers (a recursive implementation), at
    fresh random sizes."""
    from varpo.engines import lr_factor

    g = torch.Generator().manual_seed(7)
    for _ in range(6):
        warmup, decay = int(torch.randint(0, 9, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g))
        min_ratio = float(torch.rand(1, generator=g)) * 0.5
        total = warmup + decay
        for schedule in ("linear", "cosine"):
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.SGD([p], lr=1.0)
            parts = [torch.optim.lr_scheduler.LinearLR(opt, 1 / warmup, 1.0, total_iters=warmup - 1)] if warmup else []
            after = (torch.optim.lr_scheduler.LinearLR(opt, 1.0, min_ratio, total_iters=decay) if schedule == "linear"
                     else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=decay, eta_min=min_ratio))
            sched = torch.optim.lr_scheduler.SequentialLR(opt, [*parts, after], milestones=[warmup]) if parts else after
            for u in range(total + 3):
                want = opt.param_groups[0]["lr"] if u <= total else min_ratio
                got = lr_factor(u, warmup, total, schedule, min_ratio)
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (schedule, warmup, decay, u)
                opt.step()
                sched.step()
    assert lr_factor(5, 0, 10, "constant") == 1.0 and lr_factor(0, 4, 10, "constant") == 0.25


def test_schedule_drives_both_roles_and_resumes_exactly(user_models, user_data, ppo_overrides, tmp_path):
    from varpo.engines import lr_factor
    from varpo.ppo import TrainerCallback, train_ppo

    sched = ["ppo.steps=3", "ppo.lr_schedule=linear", "ppo.lr_warmup_steps=1", "ppo.actor_lr=2e-3",
             "ppo.critic_lr=1e-3", "ppo.checkpoint_every=1"]
    cfg = _cfg(user_models, user_data, ppo_overrides, *sched)
    train_ppo(cfg, tmp_path / "full")
    rows = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    per_step = cfg.ppo.ppo_epochs * cfg.ppo.batch_size // cfg.ppo.mini_batch_size  # updates per PPO step
    for r in rows:  # the rate the next update uses: after (step + 1) steps of updates
        f = lr_factor(per_step * (r["step"] + 1), per_step, per_step * 3, "linear", 0.0)
        assert (r["lr_actor"], r["lr_critic"]) == pytest.approx((2e-3 * f, 1e-3 * f), rel=1e-9)
    assert rows[0]["lr_actor"] == pytest.approx(2e-3) and rows[-1]["lr_actor"] == pytest.approx(0.0, abs=1e-15)

    class StopAfter2(TrainerCallback):
        def on_step_end(self, metrics):
            if metrics["step"] == 1:
                self.stop("simulated interruption")

    train_ppo(cfg, tmp_path / "cut", callbacks=[StopAfter2()])
    (tmp_path / "cut" / "summary.json").unlink()  # as a kill after the step-2 checkpoint leaves it
    train_ppo(cfg, tmp_path / "cut")
    got = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [without_timings(r) for r in got] == [without_timings(r) for r in rows]
    assert math.isclose(got[1]["lr_actor"], 2e-3 * 0.5)
