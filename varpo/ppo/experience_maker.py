"""Making one PPO step's `Experience` (docs/design.md §2), apart from the update that consumes it
(as OpenRLHF's experience maker is apart from its PPO update). Stages, each a method:
  1. rollout         this rank's prompts for the step, and the rollout engine's responses
  2. score           the reward source's score s and uncertainty σ² per response (and the gold reward)
  3. weigh           the response mask and the σ²-weights w(σ²) (once every rank's s and σ² are finite)
  4. forward_passes  reference and (unless read off generate) actor log-probs; with kernels.fused_shaping
                     the per-token KL and w·KL in the same pass over the logits; critic values
  5. shape           r_t = −β·w(σ²)·kl_t + 1[t = T]·s      (w ≡ 1 is vanilla PPO)
  6. advantages      GAE advantages and returns, advantages whitened with statistics over all ranks
`make(step)` runs them in order and returns the Experience, or None when some rank's score, σ² or
log-prob is not finite (every rank gets None: the trainer skips the step together)."""
from __future__ import annotations

import torch

from .. import dist
from ..outputs import PhaseTimer
from ..seeds import derive_seed
from . import core, packing
from .experience import Experience
from .forward import forward_in_chunks
from .tokens import decode_responses, tokenize_prompts


class ExperienceMaker:
    """`roles`: varpo.ppo.roles.Roles. `kl_ctl` (β) and `sigma_mean` (the running σ² mean) are the
    trainer's, which adapts the one and checkpoints both; `counters` (truncated prompts) and
    `timer` are shared with it too. `on_scored(prompts, responses, experience)` is called after
    scoring (the callbacks' on_rollout_scored)."""

    def __init__(self, cfg, roles, prompts: list[str], *, kl_ctl, sigma_mean, counters: dict, timer: PhaseTimer,
                 gold_fn=None, on_scored=None):
        if not prompts:
            raise ValueError("no training prompts")
        self.cfg, self.prompts, self.gold_fn = cfg, prompts, gold_fn
        self.actor, self.reference, self.critic = roles.actor, roles.reference, roles.critic
        self.reward, self.rollout_engine, self.tokenizer = roles.reward, roles.rollout, roles.tokenizer
        self.rank, self.world, self.device = roles.info.rank, roles.info.world_size, roles.info.device
        self.kl_ctl, self.sigma_mean, self.counters, self.timer = kl_ctl, sigma_mean, counters, timer
        self.on_scored = on_scored or (lambda prompts, responses, exp: None)
        self.local_batch = cfg.ppo.batch_size // self.world
        self.chunk = cfg.ppo.mini_batch_size // self.world  # forwards run minibatch by minibatch

    def make(self, step: int) -> Experience | None:
        exp = self.rollout(step)
        self.score(exp)
        self.on_scored(exp.prompts, exp.responses, exp)
        if dist.any_rank(not bool(torch.isfinite(exp.score).all() and torch.isfinite(exp.variance).all())):
            return None
        self.weigh(exp)
        self.forward_passes(exp)
        if dist.any_rank(not bool(torch.isfinite(exp.logp).all() and torch.isfinite(exp.ref_logp).all())):
            return None
        self.shape(exp)
        self.advantages(exp)
        return exp

    # ------------------------------------------------------------------ data
    def batch_prompts(self, step: int) -> list[str]:
        """This rank's prompts for `step`: a seeded permutation per pass over the data, so the
        data position is a function of the step alone (exact resume, any world size)."""
        B, n = self.cfg.ppo.batch_size, len(self.prompts)
        out = []
        for i in range(step * B + self.rank * self.local_batch, step * B + (self.rank + 1) * self.local_batch):
            epoch, j = divmod(i, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed("data_order", self.cfg.seed, epoch)))
            out.append(self.prompts[int(perm[j])])
        return out

    # ------------------------------------------------------------------ the stages
    def rollout(self, step: int) -> Experience:
        """1. This rank's prompts for `step`, and the rollout engine's sampled responses (ids; its
        own log-probs when it has them). Sampling randomness is a function of (seed, step, rank): a
        resumed run draws what the uninterrupted one would have drawn."""
        with self.timer("generate"):
            torch.manual_seed(derive_seed("sampling", self.cfg.seed, step, self.rank))
            prompts = self.batch_prompts(step)
            ids, mask, n_trunc = tokenize_prompts(self.tokenizer, prompts, self.cfg.generation.max_prompt_len,
                                                   self.device, self.cfg.data.chat_template)
            self.counters["truncated_prompts"] += n_trunc
            exp = self.rollout_engine.generate(ids, mask, step)
        exp.prompts = prompts
        return exp

    def score(self, exp: Experience) -> None:
        """2. Score s, uncertainty σ² and validity from the reward source; the gold reward if any."""
        with self.timer("score"):
            exp.responses = decode_responses(self.tokenizer, exp)
            scores = self.reward.score(exp.prompts, exp.responses)
            exp.score = scores.score.to(self.device, torch.float32)
            exp.variance = scores.variance.to(self.device, torch.float32)
            exp.valid = (scores.valid.to(self.device) if scores.valid is not None
                         else torch.ones_like(exp.score, dtype=torch.bool))
        if self.gold_fn is not None:
            exp.gold = torch.tensor(self.gold_fn(exp.prompts, exp.responses), dtype=torch.float32)

    def weigh(self, exp: Experience) -> None:
        """3. The mask of tokens that train (a dropped sample trains nothing) and w(σ²) [B]. σ²
        normalisation uses the mean over all ranks (and, for running_mean, over past batches) of
        the valid samples."""
        p = self.cfg.ppo.variance
        exp.mask = exp.response_mask.float() * exp.valid.float()[:, None]
        keep = exp.valid.bool() if exp.valid.any() else torch.ones_like(exp.valid, dtype=torch.bool)

        def batch_mean_of(x: torch.Tensor) -> float:
            return dist.global_mean(x[keep])

        batch_mean = batch_mean_of(exp.variance)
        running = self.sigma_mean.update(batch_mean) if p.weighting == "running_mean" else None
        exp.weights = core.variance_weights(
            exp.variance, p.weighting, floor=p.floor, ceiling=p.ceiling, running_mean=running,
            batch_mean=torch.tensor(batch_mean), eps=p.eps, heterogeneity=p.heterogeneity, mean_fn=batch_mean_of,
        )

    def forward_passes(self, exp: Experience) -> None:
        """4. Reference log-probs, the actor's old log-probs (unless the rollout read them off
        generate) and the critic's values, minibatch by minibatch. With kernels.fused_shaping the
        per-token KL and its σ²-weighting come out of the same pass over one model's logits: the
        reference's when the old log-probs are known, else the actor's."""
        est = self.cfg.ppo.kl.estimator
        from_actor = None  # the values of the actor's forward, when its trunk carries the value head
        with self.timer("reference"):
            if not self.cfg.kernels.fused_shaping:
                exp.ref_logp = self._chunks(lambda c: self.reference.logprobs(c).logp, exp)
                if exp.logp is None:
                    out = self._chunks(self.actor.logprobs, exp)
                    exp.logp, from_actor = out.logp, out.values
            elif exp.logp is not None:  # old log-probs from generation: one reference forward does it all
                out = self._chunks(lambda c: self.reference.shaping(c, c.logp, "reference", est), exp)
                exp.ref_logp = out.logp
            else:  # reference first, then the actor's forward carries the shaping
                exp.ref_logp = self._chunks(lambda c: self.reference.logprobs(c).logp, exp)
                out = self._chunks(lambda c: self.actor.shaping(c, c.ref_logp, "policy", est), exp)
                exp.logp, from_actor = out.logp, out.values
            if self.cfg.kernels.fused_shaping:
                exp.kl, exp.extras["weighted_kl_sum"] = out.shaping.kl, out.shaping.weighted_sum
        with self.timer("value"):
            exp.values = self._chunks(self.critic.values, exp, from_actor)

    def shape(self, exp: Experience) -> None:
        """5. Per-token rewards r_t = −β·w(σ²)·kl_t + 1[t = T]·s (w ≡ 1 for vanilla PPO)."""
        with self.timer("shape"):
            p = self.cfg.ppo
            score = core.apply_missing_eos_penalty(exp.score, exp.has_eos, p.missing_eos_penalty)
            if p.score_clip is not None:
                score = score.clamp(-p.score_clip, p.score_clip)
            if exp.kl is None:  # not fused into the forward pass (kernels.fused_shaping=false)
                exp.kl = core.kl_per_token(exp.logp, exp.ref_logp, p.kl.estimator) * exp.mask
            exp.rewards, _penalty = core.shape_rewards(score, exp.kl, exp.weights, exp.mask, self.kl_ctl.value)
            if p.whiten_rewards:
                exp.rewards = whiten(exp.rewards, exp.mask, shift_mean=False)

    def advantages(self, exp: Experience) -> None:
        """6. GAE advantages and returns; advantages whitened with statistics over all ranks."""
        with self.timer("shape"):
            p = self.cfg.ppo
            exp.advantages, exp.returns = core.gae(exp.rewards, exp.values, exp.mask, p.gamma, p.lam)
            if p.whiten_advantages:
                exp.advantages = whiten(exp.advantages, exp.mask)

    def _chunks(self, fn, exp: Experience, *per_sample):
        chunks = None
        if self.cfg.ppo.packing.enabled:  # padding-free forwards: micro-batches balanced by token count
            prompt_len, response_len = packing.sample_lengths(exp)
            chunks = packing.balanced_chunks((prompt_len + response_len).tolist(), self.chunk)
        return forward_in_chunks(fn, exp, self.chunk, *per_sample, chunks=chunks)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """core.whiten_with over the mean and unbiased variance of x's real tokens on all ranks."""
    mean, var = dist.global_mean_var(*core.masked_moments(x, mask))
    return core.whiten_with(x, mean.to(x.dtype), var.to(x.dtype), mask, shift_mean=shift_mean)
