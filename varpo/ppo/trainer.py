"""PPO for language models, vanilla and variance-aware (docs/design.md §1, Algorithm 1).

The trainer receives its roles built (varpo.ppo.roles.build_roles: actor, reference, critic,
reward source, rollout engine, callbacks) and runs the loop. One iteration, `train_step`:
  1. experience  `experience.make`      rollout → score → σ²-weights → forward passes → shaped rewards
                                        → GAE (varpo.ppo.experience_maker), one `Experience`
  2. update      `update`               ppo_epochs passes of clipped-surrogate (actor) and clipped-value
                                        (critic) steps over shuffled minibatches (varpo.ppo.critic says
                                        how each kind of critic takes its step)
  3. sync        `sync_rollout_engine`  the next rollout samples from the updated policy
  4. control     `adapt_kl`             the KL controller sees the batch's mean sequence KL
The maths lives in varpo.ppo.core as pure functions, the statistics over ranks in varpo.dist;
this file only orchestrates. Outputs (metrics.jsonl, TensorBoard) and user hooks are callbacks
(varpo.callbacks).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import torch

from .. import dist
from .. import engine_checkpoint as checkpoint
from ..callbacks import CallbackList, TrainerCallback, TrainerControl, TrainerState
from ..config import VarpoConfig
from ..errors import NonFiniteError
from ..models.export import export_actor
from ..outputs import PhaseTimer, console, progress, write_json
from ..seeds import derive_seed
from . import core
from .experience import Experience
from .experience_maker import ExperienceMaker
from .phase_flops import actor_forward_at_rollout, phase_flops, role_shapes
from .roles import Roles, build_roles, role_param_counts

__all__ = ["NonFiniteError", "PPOTrainer", "check_batch_sizes"]


def check_batch_sizes(ppo_cfg, world: int) -> None:
    """Every rank takes an equal share of each batch and minibatch."""
    for name, n in (("batch_size", ppo_cfg.batch_size), ("mini_batch_size", ppo_cfg.mini_batch_size)):
        if n % world:
            raise ValueError(f"ppo.{name} ({n}) must be divisible by the world size ({world})")


class PPOTrainer:
    """`PPOTrainer(cfg, out_dir, roles, prompts=..., gold_fn=...)`: `roles` built by
    varpo.ppo.roles.build_roles (or by hand, any objects with the roles' interfaces); `prompts` the
    training prompts; `gold_fn(prompts, responses)` the true reward, when the task has one (logged).
    Resumes from the last complete checkpoint under out_dir/checkpoints."""

    def __init__(self, cfg: VarpoConfig, out_dir: str | Path, roles: Roles | None = None, *,
                 prompts: list[str], gold_fn=None, **removed):
        if roles is None or removed:
            raise TypeError("PPOTrainer(cfg, out_dir, roles, prompts=..., gold_fn=...) takes built roles: "
                            "PPOTrainer.from_config(cfg, out_dir, prompts=..., policy_path=..., scorer=..., "
                            "callbacks=...) builds them as PPOTrainer(..., policy_path=..., scorer=...) used to "
                            "(or varpo.ppo.roles.build_roles)")
        self.cfg, self.out, self.roles = cfg, Path(out_dir), roles
        self.info = roles.info
        self.world, self.rank, self.device = self.info.world_size, self.info.rank, self.info.device
        check_batch_sizes(cfg.ppo, self.world)
        self.actor, self.reference, self.critic = roles.actor, roles.reference, roles.critic
        self.tokenizer, self.scorer, self.rollout_engine = roles.tokenizer, roles.reward, roles.rollout
        self.local_mini = cfg.ppo.mini_batch_size // self.world
        self.params = role_param_counts(self.actor, self.critic)
        self.shapes = role_shapes(roles)  # for each step's flops/<phase> (None: not HF models we can count)
        self.kl_ctl = core.make_kl_controller(cfg.ppo.kl)
        self.sigma_mean = core.ExponentialMovingAverage(cfg.ppo.variance.running_momentum)
        self.state, self.control = TrainerState(), TrainerControl()
        self.bad_steps_in_row = 0
        self._saved_step: int | None = None  # the step of the last checkpoint this run wrote or resumed from
        self.counters = {"skipped_steps": 0, "skipped_updates": 0, "truncated_prompts": 0, "dropped_samples": 0}
        self.timer = PhaseTimer()
        self.callbacks = CallbackList(roles.callbacks, self.control, self.state)
        self.experience = ExperienceMaker(cfg, roles, prompts, kl_ctl=self.kl_ctl, sigma_mean=self.sigma_mean,
                                          counters=self.counters, timer=self.timer, gold_fn=gold_fn,
                                          on_scored=self.callbacks.on_rollout_scored)
        self._maybe_resume()
        if self.step > 0:  # resumed: the rollout engine must sample from the checkpoint's policy
            self.rollout_engine.sync_weights(self.actor.engine)

    @classmethod
    def from_config(cls, cfg: VarpoConfig, out_dir: str | Path, *, prompts: list[str], policy_path: str,
                    scorer=None, critic_path: str | None = None, gold_fn=None,
                    callbacks: list[TrainerCallback] = ()) -> PPOTrainer:
        """Build the roles from the config (varpo.ppo.roles.build_roles), then the trainer."""
        roles = build_roles(cfg, out_dir, policy_path=policy_path, critic_path=critic_path, scorer=scorer,
                            callbacks=callbacks)
        return cls(cfg, out_dir, roles, prompts=prompts, gold_fn=gold_fn)

    @property
    def step(self) -> int:
        """PPO steps completed."""
        return self.state.step

    @step.setter
    def step(self, value: int) -> None:
        self.state.step = value

    # ------------------------------------------------------------------ the stages
    def update(self, exp: Experience) -> dict:
        """2. ppo_epochs passes of clipped-surrogate (actor) and clipped-value (critic) steps over
        shuffled minibatches; returns the mean of each loss statistic over them (all ranks)."""
        with self.timer("update"):
            p = self.cfg.ppo
            acc: dict[str, list[torch.Tensor]] = {}
            gen = torch.Generator().manual_seed(derive_seed("minibatch_order", self.cfg.seed, self.step, self.rank))
            for _ in range(p.ppo_epochs):
                order = torch.randperm(exp.batch_size, generator=gen)
                for s in range(0, exp.batch_size, self.local_mini):
                    mb = exp.select(order[s : s + self.local_mini])
                    # with a value head on the actor's trunk, out.values come from this same forward
                    out = self.actor.logprobs(mb, with_entropy=True, inplace_backward=self.cfg.kernels.inplace_backward)
                    pg_loss, pg_stats = core.policy_loss(out.logp, mb.logp, mb.advantages, mb.mask, p.clip_range,
                                                         token_weights=self._importance_weights(mb))
                    entropy = core.masked_mean(out.entropy, mb.mask)
                    # with no bonus, entropy is only logged: keeping it out of the graph spares the
                    # backward its vocabulary-wide term (a 0·entropy term would still be differentiated)
                    loss = pg_loss - p.entropy_coef * entropy if p.entropy_coef > 0 else pg_loss
                    values = self.critic.values(mb, out.values)
                    v_loss, v_stats = core.value_loss(values, mb.values, mb.returns, mb.mask, p.clip_range_value)
                    v_loss = p.vf_coef * v_loss
                    # every rank must take the same decision, or the collectives inside step() hang
                    # one host sync per minibatch: the three finiteness tests as one tensor, one reduction
                    finite = torch.isfinite(loss) & torch.isfinite(v_loss) & torch.isfinite(out.logp).all()
                    if dist.any_rank(~finite):
                        self.counters["skipped_updates"] += 1
                        warnings.warn(f"step {self.step}: non-finite loss or log-prob; minibatch update skipped")
                        self.actor.zero_grad()
                        self.critic.zero_grad()
                        continue
                    self.actor.step(self.critic.actor_loss(loss, v_loss))
                    self.critic.step(v_loss)
                    # statistics stay on the device until the end: no host sync per minibatch
                    for k, v in {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy, **pg_stats, **v_stats}.items():
                        acc.setdefault(k, []).append(v.detach().float() if torch.is_tensor(v) else pg_loss.new_tensor(float(v)))
            return dist.global_means(acc)

    def _importance_weights(self, mb: Experience) -> torch.Tensor | None:
        v = self.cfg.generation.vllm
        if mb.rollout_logp is None or v.importance_correction == "none":
            return None
        return core.truncated_importance_weights(mb.logp, mb.rollout_logp, mb.mask, v.tis_cap)

    def sync_rollout_engine(self) -> None:
        """3. After the update: the next rollout samples from the updated policy (vLLM: weights
        loaded into the engine in memory; HF: nothing to do)."""
        with self.timer("sync"):
            self.rollout_engine.sync_weights(self.actor.engine)

    def adapt_kl(self, exp: Experience) -> float:
        """4. The KL controller sees the batch's mean sequence KL (over all ranks); returns it."""
        kl_mean = dist.global_mean((exp.kl * exp.mask).sum(-1))
        if math.isfinite(kl_mean):
            self.kl_ctl.update(kl_mean, self.cfg.ppo.batch_size)
        return kl_mean

    # ------------------------------------------------------------------ loop
    def train_step(self) -> dict:
        """One PPO iteration: the four stages of the module docstring."""
        self.timer.reset()
        t_step, cpu_step = time.perf_counter(), time.process_time()
        exp = self.experience.make(self.step)
        if exp is None:
            return self._bad_step("non-finite score, variance or log-prob in the rollout")
        beta = self.kl_ctl.value  # the β this step's rewards were shaped with
        losses = self.update(exp)
        self.sync_rollout_engine()
        if not losses:
            return self._bad_step("every minibatch update was non-finite")
        self.bad_steps_in_row = 0
        kl_mean = self.adapt_kl(exp)
        # CPU seconds of this process (all its threads): unlike wall time, barely moved by other jobs
        self.timer.timings["step_cpu"] = time.process_time() - cpu_step
        return self._metrics(exp, losses, kl_mean, beta, time.perf_counter() - t_step)

    def _metrics(self, exp: Experience, losses: dict, kl_mean: float, beta: float, elapsed: float) -> dict:
        n_tokens = dist.all_reduce_sum(exp.response_mask.sum().double()).item()
        self.counters["dropped_samples"] += int(dist.all_reduce_sum((~exp.valid.bool()).sum()).item())
        # the logged weighted KL is the penalty divided back by β (a dropped row's σ² may be NaN: masked)
        weighted_kl = exp.extras.get("weighted_kl_sum")
        if weighted_kl is None:
            weighted_kl = torch.where(exp.mask.bool(), exp.kl * exp.weights[:, None], torch.zeros_like(exp.kl)).sum(-1)
        m = {
            "step": self.step, "world_size": self.world,
            "score_mean": dist.global_mean(exp.score), "score_std": dist.global_std(exp.score),
            "variance_mean": dist.global_mean(exp.variance), "weight_mean": dist.global_mean(exp.weights),
            # the realised heterogeneity of the weights (what a Table-4 sweep reports against)
            "weight_std": dist.global_std(exp.weights),
            "kl_mean": kl_mean, "weighted_kl_mean": dist.global_mean(weighted_kl), "kl_coef": beta,
            "returns_mean": dist.global_mean(exp.returns[exp.mask.bool()]),
            # how much of the returns' variance the critic's values explained (1: all, ≤ 0: none)
            "explained_variance": float(core.explained_variance(
                exp.values, exp.returns, exp.mask, var_fn=lambda x, m: dist.global_mean_var(*core.masked_moments(x, m))[1])),
            "response_length": dist.global_mean(exp.response_mask.sum(-1).float()),
            "eos_fraction": dist.global_mean(exp.has_eos.float()),
            **self._mismatch_metrics(exp), **losses, **self._lr_metrics(),
            "episodes_per_s": self.cfg.ppo.batch_size / elapsed, "tokens_per_s": n_tokens / elapsed,
            **{f"time/{k}": v for k, v in self.timer.timings.items()}, "time/step": elapsed, **self.counters,
        }
        if self.shapes is not None:  # this rank's matrix-product FLOPs per phase, beside its time/<phase>
            m.update(phase_flops(self.shapes, exp, ppo_epochs=self.cfg.ppo.ppo_epochs,
                                 actor_forward_at_rollout=actor_forward_at_rollout(self.cfg)))
        if exp.gold is not None:
            m["gold_mean"] = dist.global_mean(exp.gold)
        return m

    def _lr_metrics(self) -> dict:
        """The learning rates the next update uses, when ppo.lr_schedule or a warm-up moves them
        (constant: the configured ones, not logged): the critic's own engine's, or with a value
        head on the actor's trunk its group in the actor's optimizer."""
        p = self.cfg.ppo
        if p.lr_schedule == "constant" and not p.lr_warmup_steps:
            return {}
        actor = self.actor.engine.get_lr()
        critic = next(iter(self.critic.engines.values()), None)
        return {"lr_actor": actor[0], "lr_critic": critic.get_lr()[0] if critic is not None else actor[-1]}

    def _mismatch_metrics(self, exp: Experience) -> dict:
        """|Δ log p| between the sampling engine's log-probs and the trainer's old log-probs."""
        if exp.rollout_logp is None:
            return {}
        total, count, largest = core.logprob_mismatch(exp.logp, exp.rollout_logp, exp.response_mask)
        tot = dist.all_reduce_sum(torch.stack([total.double(), count.double()]))
        return {"rollout_logprob_diff_mean": (tot[0] / tot[1].clamp(min=1)).item(),
                "rollout_logprob_diff_max": dist.all_reduce_max(largest.double()).item()}

    def _bad_step(self, why: str) -> dict:
        self.bad_steps_in_row += 1
        self.counters["skipped_steps"] += 1
        warnings.warn(f"step {self.step}: {why}; update skipped ({self.bad_steps_in_row} in a row)")
        if self.bad_steps_in_row >= self.cfg.ppo.max_consecutive_bad_steps:
            raise NonFiniteError(
                f"step {self.step}: {self.bad_steps_in_row} consecutive steps with {why}; stopping "
                f"(ppo.max_consecutive_bad_steps={self.cfg.ppo.max_consecutive_bad_steps}). "
                f"The last checkpoint is kept under {self.out / 'checkpoints'}."
            )
        return {"step": self.step, "world_size": self.world, "skipped": True, **self.counters}

    def _state(self) -> dict:
        return {"step": self.step, "kl_ctl": self.kl_ctl.state_dict(), "sigma_mean": self.sigma_mean.state_dict(),
                "bad_steps_in_row": self.bad_steps_in_row, "counters": self.counters, "world_size": self.world}

    def _trained_engines(self) -> dict:
        """The engines with weights and optimizer state, by checkpoint tag: the actor's and the
        critic's own, if it has one (a head on the actor's trunk lives in the actor's engine)."""
        return {"actor": self.actor.engine, **self.critic.engines}

    def save_checkpoint(self) -> None:
        c = self.cfg.checkpoint
        path = checkpoint.save(self.out / "checkpoints", self.step, self._trained_engines(),
                               self._state(), keep_last=c.keep_last, verify=c.verify)
        self._saved_step = self.step
        self.callbacks.on_checkpoint_saved(path)

    def _maybe_resume(self) -> None:
        last = checkpoint.latest(self.out / "checkpoints")
        if last is None:
            return
        saved = json.loads((last / "trainer_state.json").read_text())
        st, _ = checkpoint.load(last, self._trained_engines(), saved_world_size=saved["world_size"])
        self.step = st["step"]
        self.kl_ctl.load_state_dict(st["kl_ctl"])
        self.sigma_mean.load_state_dict(st["sigma_mean"])
        self.bad_steps_in_row = st["bad_steps_in_row"]
        self.counters.update(st["counters"])  # in place: the experience maker counts into the same dict
        self._saved_step = self.step
        if self.info.is_main:
            console.print(f"resumed from {last} at step {self.step}")

    def train(self) -> dict:
        """Steps until ppo.steps, or until a callback asks to stop; then the last checkpoint (always:
        ppo.checkpoint_every 0 means only then), the exported policy and summary.json."""
        p = self.cfg.ppo
        # running sums for the summary, not a list of every step's metrics (which grew with the run)
        good, eps_sum, tok_sum, final = 0, 0.0, 0.0, {}
        self.callbacks.on_train_begin(self)
        with progress() as bar:
            task = bar.add_task("PPO", total=p.steps, completed=self.step, info="")
            while self.step < p.steps:
                m = self.train_step()
                self.callbacks.on_step_end(m)
                if "score_mean" in m:  # a step whose update ran (not skipped)
                    good, final = good + 1, m
                    eps_sum, tok_sum = eps_sum + m["episodes_per_s"], tok_sum + m["tokens_per_s"]
                self.step += 1
                # every rank must leave the loop together (the next step's collectives)
                stop = dist.any_rank(self.control.should_stop)
                if p.checkpoint_every and self.step % p.checkpoint_every == 0 and self.step < p.steps and not stop:
                    self.save_checkpoint()
                if "score_mean" in m:
                    bar.update(task, advance=1, info=f"score {m['score_mean']:.3f} kl {m['kl_mean']:.3f}")
                else:
                    bar.update(task, advance=1, info="skipped")
                if stop:
                    break
        if self._saved_step != self.step:  # (a run resumed from its last checkpoint has it already)
            self.save_checkpoint()
        self.rollout_engine.close()
        policy_dir = self.export_policy(self.out / "policy")
        summary = {
            "steps": self.step, "world_size": self.world, "policy_path": str(policy_dir),
            "episodes_per_s": eps_sum / max(good, 1), "tokens_per_s": tok_sum / max(good, 1),
            "final": final, **self.counters, **self.params, **self.roles.run_info,
        }
        if self.step < p.steps:
            summary["stopped_early"] = self.control.reason or "a callback on another rank asked to stop"
        if self.info.is_main:
            write_json(self.out / "summary.json", summary)
        self.callbacks.on_train_end(summary)
        return summary

    def export_policy(self, path: Path) -> Path:
        """The trained actor as one plain HF folder (LoRA adapters merged in; the adapters alone
        also under `<path>_adapter`; a shared trunk's value head under `<path>_value_head`),
        gathered from ZeRO-3 shards if any."""
        export_actor(self.actor.engine, self.tokenizer, path, self.info.is_main)
        dist.barrier()
        return path
