"""PPO for language models, vanilla and variance-aware (docs/design.md §1, Algorithm 1).

One iteration, `PPOTrainer.train_step`: seven stages, each a method that fills in one
`Experience` (varpo.ppo.experience), the object the update consumes:
  1. rollout    `rollout`         the actor samples a response for each prompt of this rank's share of the batch
  2. score      `score`           the reward source returns a score s and its uncertainty σ² per response
  3. reference  `forward_passes`  log-probs of the frozen reference and, in the same pass over its logits, the
                                  per-token KL against the actor's old log-probs (read off generate's logits)
                                  and its σ²-weighting (varpo_kernels.weighted_kl_from_logits); critic values
                                  (model.critic=shared_trunk: a value head on the actor's trunk, see models.py)
  4. shape      `shape`           r_t = −β·w(σ²)·kl_t + 1[t = T]·s      (w ≡ 1 is vanilla PPO)
  5. GAE        `advantages`      advantages and returns, advantages whitened with statistics over all ranks
  6. update     `update`          ppo_epochs passes of clipped-surrogate (actor) and clipped-value (critic) steps
                                  (shared trunk: one forward, one step on policy loss + vf_coef·value loss)
  7. control    `adapt_kl`        the KL controller sees the batch's mean sequence KL
The maths lives in varpo.ppo.core as pure functions; this file only orchestrates engines.
Outputs (metrics.jsonl, TensorBoard) and user hooks are callbacks (varpo.ppo.callbacks).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import dist
from ..config import VarpoConfig, save_resolved
from ..outputs import console, progress, write_json
from ..reward_source import Scorer
from . import checkpoint, core
from .callbacks import CallbackList, TrainerCallback, TrainerControl
from .experience import Experience
from .generation import build_rollout_engine, sampling_seed
from .loggers import MetricsJsonl, SampleTable, TensorBoardLogger, WandbLogger
from .logprobs import shaping_pass, token_logprobs
from .models import (
    build_actor,
    build_critic,
    build_reference,
    export_actor,
    load_tokenizer,
    role_param_counts,
)
from .rollout import decode_responses, response_logits, response_values, tokenize_prompts


class NonFiniteError(RuntimeError):
    pass


class PPOTrainer:
    def __init__(self, cfg: VarpoConfig, out_dir: str | Path, *, prompts: list[str], policy_path: str,
                 scorer: Scorer, critic_path: str | None = None, gold_fn=None,
                 callbacks: list[TrainerCallback] = (), evaluator: TrainerCallback | None = None,
                 run_info: dict | None = None):
        self.cfg, self.out = cfg, Path(out_dir)
        self.info = dist.init_distributed(cfg.deepspeed.dist_backend, cfg.deepspeed.timeout_minutes,
                                          cfg.deepspeed.peer_timeout_s, cfg.deepspeed.rendezvous_timeout_s)
        self.world, self.rank, self.device = self.info.world_size, self.info.rank, self.info.device
        p = cfg.ppo
        for name, n in (("batch_size", p.batch_size), ("mini_batch_size", p.mini_batch_size)):
            if n % self.world:
                raise ValueError(f"ppo.{name} ({n}) must be divisible by the world size ({self.world})")
        if not prompts:
            raise ValueError("no training prompts")
        self.prompts, self.scorer, self.gold_fn = prompts, scorer, gold_fn
        self.local_batch = p.batch_size // self.world
        self.local_mini = p.mini_batch_size // self.world

        # varpo's own outputs first: a logger that cannot start (wandb missing) fails before any model loads
        own_callbacks = self._own_callbacks() if self.info.is_main else []

        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.model.tokenizer_path or policy_path)
        self.actor = build_actor(cfg, policy_path, self.world)
        # with LoRA and model.lora.reference_from_base: the actor's base with adapters disabled
        self.reference = build_reference(cfg, policy_path, self.world, actor=self.actor)
        # None with model.critic=shared_trunk: the actor's engine carries the value head (self.shared_trunk)
        self.critic = build_critic(cfg, critic_path or policy_path, self.world)
        self.shared_trunk = self.critic is None
        self.params = role_param_counts(self.actor, self.critic)
        self.kl_ctl = core.make_kl_controller(p.kl)
        self.sigma_mean = core.ExponentialMovingAverage(p.variance.running_momentum)
        self.step = 0
        self._saved_step: int | None = None  # the step of the last checkpoint this run wrote or resumed from
        self.bad_steps_in_row = 0
        self.counters = {"skipped_steps": 0, "skipped_updates": 0, "truncated_prompts": 0, "dropped_samples": 0}
        self.timings: dict[str, float] = {}
        self.control = TrainerControl()
        # evaluation during training (varpo.ppo.periodic_eval) runs first, on every rank: it adds its
        # eval/* metrics to the step's row before the loggers write it
        self.callbacks = CallbackList([*([evaluator] if evaluator else []), *own_callbacks, *callbacks], self.control)
        self.run_info = dict(run_info or {})  # what produced this run (reward source, ...), for summary.json
        self._maybe_resume()
        # the rollout engine (generation.backend): HF generate with the actor itself, or a colocated
        # vLLM engine that starts from policy_path and is synced after every update
        self.rollout_engine = build_rollout_engine(cfg, self.actor, self.tokenizer, policy_path, self.rank, self.world)
        if self.step > 0:  # resumed: the engine must sample from the checkpoint's policy
            self.rollout_engine.sync_weights(self.actor)

    def _own_callbacks(self) -> list[TrainerCallback]:
        """metrics.jsonl, TensorBoard, the sample table and (ppo.wandb.enabled) W&B, on rank 0."""
        p = self.cfg.ppo
        self.out.mkdir(parents=True, exist_ok=True)
        save_resolved(self.cfg, self.out)
        tb = TensorBoardLogger(self.out / "tensorboard")
        own = [MetricsJsonl(self.out / "metrics.jsonl"), tb]
        if p.log_samples_every:
            own.append(SampleTable(self.out / "samples.jsonl", p.log_samples_every, lambda: self.step, tensorboard=tb))
        if p.wandb.enabled:
            own.append(WandbLogger(self.cfg, self.out, lambda: self.step, samples_every=p.log_samples_every))
        return own

    # ------------------------------------------------------------------ data
    def _batch_prompts(self, step: int) -> list[str]:
        """This rank's prompts for `step`: a seeded permutation per pass over the data, so the
        data position is a function of the step alone (exact resume, any world size)."""
        B, n = self.cfg.ppo.batch_size, len(self.prompts)
        out = []
        for i in range(step * B + self.rank * self.local_batch, step * B + (self.rank + 1) * self.local_batch):
            epoch, j = divmod(i, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch))
            out.append(self.prompts[int(perm[j])])
        return out

    def _seed_step(self, step: int) -> None:
        # sampling randomness is a function of (seed, step, rank): a resumed run draws what the
        # uninterrupted one would have drawn
        torch.manual_seed(sampling_seed(self.cfg.seed, step, self.rank))

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def _timed(self, phase: str):
        t0 = time.perf_counter()
        yield
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0

    def _logits(self, model, exp: Experience):
        """(logits, values) of one forward: values from the same forward when `model` is the actor
        and it shares its trunk with the value head, else None."""
        if model is self.actor and self.shared_trunk:
            return response_logits(model, exp, self.cfg.generation.temperature, with_values=True)
        return response_logits(model, exp, self.cfg.generation.temperature), None

    def _logprobs(self, model, exp: Experience, with_entropy: bool = False, inplace_backward: bool = False):
        """Log-probs (and entropy) of `model`; for a shared-trunk actor also its values, as the
        last element of a tuple."""
        logits, values = self._logits(model, exp)
        out = token_logprobs(logits, exp.response_ids, self.cfg.kernels, with_entropy=with_entropy,
                             inplace_backward=inplace_backward)
        if values is None:
            return out
        return (*out, values) if with_entropy else (out, values)

    @torch.no_grad()
    def _forward_in_chunks(self, fn, exp: Experience):
        """fn over minibatch-sized chunks, outputs concatenated (a tuple's fields each, nested)."""
        return _cat([fn(chunk) for chunk in exp.chunks(self.local_mini)])

    def _shaping(self, model, logits_of: str, exp: Experience):
        """One forward of `model` and the fused shaping pass over its logits, chunk by chunk:
        log-probs of `model`, per-token KL against the other model's log-probs (exp.logp for the
        reference's logits, exp.ref_logp for the actor's), w·KL, masked by exp.mask. For a
        shared-trunk actor: (that, values of the same forward)."""
        def fn(c: Experience):
            logits, values = self._logits(model, c)
            other = c.logp if logits_of == "reference" else c.ref_logp
            out = shaping_pass(logits, c.response_ids, other, c.mask, c.weights, self.cfg.ppo.kl.estimator,
                               logits_of, self.cfg.kernels)
            return out if values is None else (out, values)

        return self._forward_in_chunks(fn, exp)

    def _variance_weights(self, exp: Experience) -> torch.Tensor:
        """w(σ²) [B]; σ² normalisation uses the mean over all ranks (and, for running_mean, over
        past batches) of the valid samples."""
        p = self.cfg.ppo
        keep = exp.valid.bool() if exp.valid.any() else torch.ones_like(exp.valid, dtype=torch.bool)

        def batch_mean_of(x: torch.Tensor) -> float:
            return self._global_mean(x[keep])

        batch_mean = batch_mean_of(exp.variance)
        running = None
        if p.variance.weighting == "running_mean":
            running = self.sigma_mean.update(batch_mean)
        return core.variance_weights(
            exp.variance, p.variance.weighting, floor=p.variance.floor, ceiling=p.variance.ceiling,
            running_mean=running, batch_mean=torch.tensor(batch_mean), eps=p.variance.eps,
            heterogeneity=p.variance.heterogeneity, mean_fn=batch_mean_of,
        )

    def _global_mean(self, x: torch.Tensor) -> float:
        s = dist.all_reduce_sum(torch.stack([x.double().sum(), x.new_tensor(float(x.numel()), dtype=torch.float64)]))
        return (s[0] / s[1]).item()

    def _any_rank(self, flag: bool | torch.Tensor) -> bool:
        """True when `flag` is set on any rank (a tensor flag stays on its device until the reduction)."""
        t = flag.detach().float().reshape(()) if torch.is_tensor(flag) else torch.tensor(float(flag))
        return bool(dist.all_reduce_max(t).item() > 0)

    def _global_means(self, acc: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        """Per key, the mean over every rank's minibatch values: one all-reduce and one host
        transfer for all keys (the same sums as a _global_mean per key)."""
        if not acc:
            return {}
        keys = list(acc)
        sums = torch.stack([torch.stack(acc[k]).double().sum() for k in keys])
        counts = torch.tensor([float(len(acc[k])) for k in keys], dtype=torch.float64)
        tot = dist.all_reduce_sum(torch.stack([sums.cpu(), counts]))
        return dict(zip(keys, (tot[0] / tot[1]).tolist()))

    # ------------------------------------------------------------------ the seven stages
    def rollout(self, step: int) -> Experience:
        """1. This rank's prompts for `step`, and the actor's sampled responses (ids and texts)."""
        with self._timed("generate"):
            self._seed_step(step)
            prompts = self._batch_prompts(step)
            ids, mask, n_trunc = tokenize_prompts(self.tokenizer, prompts, self.cfg.generation.max_prompt_len,
                                                   self.device, self.cfg.data.chat_template)
            self.counters["truncated_prompts"] += n_trunc
            exp = self.rollout_engine.generate(ids, mask, step)
        exp.prompts = prompts
        return exp

    def score(self, exp: Experience) -> None:
        """2. Score s, uncertainty σ² and validity from the reward source; the gold reward if any."""
        with self._timed("score"):
            exp.responses = decode_responses(self.tokenizer, exp)
            scores = self.scorer.score(exp.prompts, exp.responses)
            exp.score = scores.score.to(self.device, torch.float32)
            exp.variance = scores.variance.to(self.device, torch.float32)
            exp.valid = (scores.valid.to(self.device) if scores.valid is not None
                         else torch.ones_like(exp.score, dtype=torch.bool))
        if self.gold_fn is not None:
            exp.gold = torch.tensor(self.gold_fn(exp.prompts, exp.responses), dtype=torch.float32)

    def forward_passes(self, exp: Experience) -> None:
        """3. Reference log-probs, the actor's old log-probs and the critic's values; with
        kernels.fused_shaping the per-token KL and its σ²-weighting in the same pass over the logits
        (the weights are known before any forward; a non-finite score or σ² skips the step before
        it can reach the running mean). With model.critic=shared_trunk the values come from the
        actor's trunk: from the actor forward that computes the old log-probs when there is one,
        else (old log-probs read off generate) from a trunk forward of their own."""
        with self._timed("reference"):
            fused = self.cfg.kernels.fused_shaping and not self._any_rank(
                not bool(torch.isfinite(exp.score).all() and torch.isfinite(exp.variance).all()))
            if fused:
                exp.mask = exp.response_mask.float() * exp.valid.float()[:, None]
                exp.weights = self._variance_weights(exp)
                if exp.logp is not None:  # old log-probs from generation: one reference forward does it all
                    out = self._shaping(self.reference, "reference", exp)
                    exp.ref_logp = out.logp
                else:  # reference first, then the actor's forward carries the shaping
                    exp.ref_logp = self._forward_in_chunks(lambda c: self._logprobs(self.reference, c), exp)
                    out = self._shaping(self.actor, "policy", exp)
                    if self.shared_trunk:
                        out, exp.values = out
                    exp.logp = out.logp
                exp.kl, exp.extras["weighted_kl_sum"] = out.kl, out.weighted_sum
            else:
                exp.ref_logp = self._forward_in_chunks(lambda c: self._logprobs(self.reference, c), exp)
                if exp.logp is None:
                    exp.logp = self._forward_in_chunks(lambda c: self._logprobs(self.actor, c), exp)
                    if self.shared_trunk:
                        exp.logp, exp.values = exp.logp
        if exp.values is None:
            with self._timed("value"):
                # the critic, or the shared trunk's value head when no actor forward ran above
                critic = self.actor if self.shared_trunk else self.critic
                exp.values = self._forward_in_chunks(lambda c: response_values(critic, c), exp)

    def _rollout_is_finite(self, exp: Experience) -> bool:
        return bool(torch.isfinite(exp.score).all() and torch.isfinite(exp.variance).all()
                    and torch.isfinite(exp.logp).all() and torch.isfinite(exp.ref_logp).all())

    def shape(self, exp: Experience) -> None:
        """4. Per-token rewards r_t = −β·w(σ²)·kl_t + 1[t = T]·s (w ≡ 1 for vanilla PPO)."""
        with self._timed("update"):
            p = self.cfg.ppo
            exp.mask = exp.response_mask.float() * exp.valid.float()[:, None]  # a dropped sample trains nothing
            score = core.apply_missing_eos_penalty(exp.score, exp.has_eos, p.missing_eos_penalty)
            if p.score_clip is not None:
                score = score.clamp(-p.score_clip, p.score_clip)
            if exp.kl is None:  # not fused into the forward pass (kernels.fused_shaping=false)
                exp.weights = self._variance_weights(exp)
                exp.kl = core.kl_per_token(exp.logp, exp.ref_logp, p.kl.estimator) * exp.mask
            exp.rewards, _penalty = core.shape_rewards(score, exp.kl, exp.weights, exp.mask, self.kl_ctl.value)
            if p.whiten_rewards:
                exp.rewards = self._whiten(exp.rewards, exp.mask, shift_mean=False)

    def advantages(self, exp: Experience) -> None:
        """5. GAE advantages and returns; advantages whitened with statistics over all ranks."""
        with self._timed("update"):
            p = self.cfg.ppo
            exp.advantages, exp.returns = core.gae(exp.rewards, exp.values, exp.mask, p.gamma, p.lam)
            if p.whiten_advantages:
                exp.advantages = self._whiten(exp.advantages, exp.mask)

    def _global_mean_var(self, x, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased variance of x's real tokens over all ranks (float64 0-d tensors)."""
        s, sq, n = core.masked_moments(x, mask)
        tot = dist.all_reduce_sum(torch.stack([s.double(), sq.double(), n.double()]))
        mean = tot[0] / tot[2]
        return mean, (tot[1] / tot[2] - mean**2) * tot[2] / (tot[2] - 1).clamp(min=1)

    def _whiten(self, x, mask, shift_mean=True):
        mean, var = self._global_mean_var(x, mask)
        return core.whiten_with(x, mean.to(x.dtype), var.to(x.dtype), mask, shift_mean=shift_mean)

    def update(self, exp: Experience) -> dict:
        """6. ppo_epochs passes of clipped-surrogate (actor) and clipped-value (critic) steps over
        shuffled minibatches; returns the mean of each loss statistic over them (all ranks)."""
        with self._timed("update"):
            p = self.cfg.ppo
            acc: dict[str, list[float]] = {}
            gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.step * 31 + self.rank)
            for _ in range(p.ppo_epochs):
                order = torch.randperm(exp.batch_size, generator=gen)
                for s in range(0, exp.batch_size, self.local_mini):
                    mb = exp.select(order[s : s + self.local_mini])
                    # a shared trunk: logits and values from this one forward
                    logp, ent, *shared_values = self._logprobs(self.actor, mb, with_entropy=True,
                                                               inplace_backward=self.cfg.kernels.inplace_backward)
                    pg_loss, pg_stats = core.policy_loss(logp, mb.logp, mb.advantages, mb.mask, p.clip_range,
                                                         token_weights=self._importance_weights(mb))
                    entropy = core.masked_mean(ent, mb.mask)
                    # with no bonus, entropy is only logged: keeping it out of the graph spares the
                    # backward its vocabulary-wide term (a 0·entropy term would still be differentiated)
                    loss = pg_loss - p.entropy_coef * entropy if p.entropy_coef > 0 else pg_loss
                    values = shared_values[0] if self.shared_trunk else response_values(self.critic, mb)
                    v_loss, v_stats = core.value_loss(values, mb.values, mb.returns, mb.mask, p.clip_range_value)
                    v_loss = p.vf_coef * v_loss
                    # every rank must take the same decision, or the collectives inside step() hang
                    # one host sync per minibatch: the three finiteness tests as one tensor, one reduction
                    finite = torch.isfinite(loss) & torch.isfinite(v_loss) & torch.isfinite(logp).all()
                    if self._any_rank(~finite):
                        self.counters["skipped_updates"] += 1
                        warnings.warn(f"step {self.step}: non-finite loss or log-prob; minibatch update skipped")
                        for engine in self._trained_engines().values():
                            engine.zero_grad()
                        continue
                    if self.shared_trunk:  # one engine, one optimizer: vf_coef weighs the value loss
                        self.actor.backward(loss + v_loss)
                        self.actor.step()
                    else:
                        self.actor.backward(loss)
                        self.actor.step()
                        self.critic.backward(v_loss)
                        self.critic.step()
                    # statistics stay on the device until the end: no host sync per minibatch
                    for k, v in {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy, **pg_stats, **v_stats}.items():
                        acc.setdefault(k, []).append(v.detach().float() if torch.is_tensor(v) else pg_loss.new_tensor(float(v)))
            return self._global_means(acc)

    def _importance_weights(self, mb: Experience) -> torch.Tensor | None:
        v = self.cfg.generation.vllm
        if mb.rollout_logp is None or v.importance_correction == "none":
            return None
        return core.truncated_importance_weights(mb.logp, mb.rollout_logp, mb.mask, v.tis_cap)

    def sync_rollout_engine(self) -> None:
        """After the update: the next rollout samples from the updated policy (vLLM: weights
        loaded into the engine in memory; HF: nothing to do)."""
        with self._timed("sync"):
            self.rollout_engine.sync_weights(self.actor)

    def adapt_kl(self, exp: Experience) -> float:
        """7. The KL controller sees the batch's mean sequence KL (over all ranks); returns it."""
        kl_mean = self._global_mean((exp.kl * exp.mask).sum(-1))
        if math.isfinite(kl_mean):
            self.kl_ctl.update(kl_mean, self.cfg.ppo.batch_size)
        return kl_mean

    # ------------------------------------------------------------------ loop
    def train_step(self) -> dict:
        """One PPO iteration: the seven stages of the module docstring on one Experience."""
        self.timings = {}
        t_step, cpu_step = time.perf_counter(), time.process_time()
        exp = self.rollout(self.step)
        self.score(exp)
        self.callbacks.on_rollout_scored(exp.prompts, exp.responses, exp)
        self.forward_passes(exp)
        if self._any_rank(not self._rollout_is_finite(exp)):
            return self._bad_step("non-finite score, variance or log-prob in the rollout")
        beta = self.kl_ctl.value  # the β this step's rewards were shaped with
        self.shape(exp)
        self.advantages(exp)
        losses = self.update(exp)
        self.sync_rollout_engine()
        if not losses:
            return self._bad_step("every minibatch update was non-finite")
        self.bad_steps_in_row = 0
        kl_mean = self.adapt_kl(exp)
        # CPU seconds of this process (all its threads): unlike wall time, barely moved by other jobs
        self.timings["step_cpu"] = time.process_time() - cpu_step
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
            "score_mean": self._global_mean(exp.score), "score_std": self._global_std(exp.score),
            "variance_mean": self._global_mean(exp.variance), "weight_mean": self._global_mean(exp.weights),
            # the realised heterogeneity of the weights (what a Table-4 sweep reports against)
            "weight_std": self._global_std(exp.weights),
            "kl_mean": kl_mean, "weighted_kl_mean": self._global_mean(weighted_kl), "kl_coef": beta,
            "returns_mean": self._global_mean(exp.returns[exp.mask.bool()]),
            # how much of the returns' variance the critic's values explained (1: all, ≤ 0: none)
            "explained_variance": float(core.explained_variance(
                exp.values, exp.returns, exp.mask, var_fn=lambda x, m: self._global_mean_var(x, m)[1])),
            "response_length": self._global_mean(exp.response_mask.sum(-1).float()),
            "eos_fraction": self._global_mean(exp.has_eos.float()),
            **self._mismatch_metrics(exp), **losses, **self._lr_metrics(),
            "episodes_per_s": self.cfg.ppo.batch_size / elapsed, "tokens_per_s": n_tokens / elapsed,
            **{f"time/{k}": v for k, v in self.timings.items()}, "time/step": elapsed, **self.counters,
        }
        if exp.gold is not None:
            m["gold_mean"] = self._global_mean(exp.gold)
        return m

    def _lr_metrics(self) -> dict:
        """The learning rates the next update uses (ppo.lr_schedule moves them)."""
        actor = self.actor.get_lr()
        return {"lr_actor": actor[0], "lr_critic": actor[-1] if self.shared_trunk else self.critic.get_lr()[0]}

    def _mismatch_metrics(self, exp: Experience) -> dict:
        """|Δ log p| between the sampling engine's log-probs and the trainer's old log-probs."""
        if exp.rollout_logp is None:
            return {}
        total, count, largest = core.logprob_mismatch(exp.logp, exp.rollout_logp, exp.response_mask)
        tot = dist.all_reduce_sum(torch.stack([total.double(), count.double()]))
        return {"rollout_logprob_diff_mean": (tot[0] / tot[1].clamp(min=1)).item(),
                "rollout_logprob_diff_max": dist.all_reduce_max(largest.double()).item()}

    def _global_std(self, x):
        mean = self._global_mean(x)
        return math.sqrt(max(self._global_mean((x.double() - mean) ** 2), 0.0))

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
        """The engines with weights and optimizer state: actor and critic, or with a shared trunk
        the actor alone (its module holds the value head, its optimizer the head's group)."""
        return {"actor": self.actor} if self.shared_trunk else {"actor": self.actor, "critic": self.critic}

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
        st = checkpoint.load(last, self._trained_engines(), saved_world_size=saved["world_size"])
        self.step = st["step"]
        self.kl_ctl.load_state_dict(st["kl_ctl"])
        self.sigma_mean.load_state_dict(st["sigma_mean"])
        self.bad_steps_in_row, self.counters = st["bad_steps_in_row"], st["counters"]
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
                stop = self._any_rank(self.control.should_stop)
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
            "final": final, **self.counters, **self.params, **self.run_info,
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
        export_actor(self.actor, self.tokenizer, path, self.info.is_main)
        dist.barrier()
        return path


def _cat(parts: list):
    """Chunk outputs concatenated along the batch: tensors, or (named) tuples of them, nested."""
    if torch.is_tensor(parts[0]):
        return torch.cat(parts, 0)
    fields = [_cat(list(f)) for f in zip(*parts)]
    return tuple(fields) if type(parts[0]) is tuple else type(parts[0])(*fields)
