"""PPO for language models, vanilla and variance-aware (DESIGN.md §1, Algorithm 1).

One iteration:
  1. rollout    the actor samples a response for each prompt of this rank's share of the batch
  2. score      the reward source returns a score s and its uncertainty σ² per response
  3. reference  log-probs of the frozen reference; old log-probs of the actor; critic values
  4. shape      r_t = −β·w(σ²)·kl_t + 1[t = T]·s      (w ≡ 1 is vanilla PPO)
  5. GAE        advantages and returns, advantages whitened with statistics over all ranks
  6. update     ppo_epochs passes of clipped-surrogate (actor) and clipped-value (critic) steps
  7. control    the KL controller sees the batch's mean sequence KL
The maths lives in varpo.ppo.core as pure functions; this file only orchestrates engines.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import torch

from .. import dist
from ..config import VarpoConfig, save_resolved
from ..engines import gathered_params, is_zero3
from ..outputs import append_jsonl, console, progress, read_jsonl, write_json
from ..scoring import Scorer
from . import checkpoint, core
from .generation import build_rollout_engine, sampling_seed
from .logprobs import token_logprobs
from .models import build_actor, build_critic, build_reference, load_tokenizer
from .rollout import Rollout, response_logits, response_values, tokenize_prompts


class NonFiniteError(RuntimeError):
    pass


class PPOTrainer:
    def __init__(self, cfg: VarpoConfig, out_dir: str | Path, *, prompts: list[str], policy_path: str,
                 scorer: Scorer, critic_path: str | None = None, gold_fn=None):
        self.cfg, self.out = cfg, Path(out_dir)
        self.info = dist.init_distributed(cfg.deepspeed.dist_backend, cfg.deepspeed.timeout_minutes)
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

        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.model.tokenizer_path or policy_path)
        self.actor = build_actor(cfg, policy_path, self.world)
        self.reference = build_reference(cfg, policy_path, self.world)
        self.critic = build_critic(cfg, critic_path or policy_path, self.world)
        self.kl_ctl = core.make_kl_controller(p.kl)
        self.sigma_mean = core.RunningMean(p.variance.running_momentum)
        self.step = 0
        self.bad_steps_in_row = 0
        self.counters = {"skipped_steps": 0, "skipped_updates": 0, "truncated_prompts": 0, "dropped_samples": 0}
        self.writer = None
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_resolved(cfg, self.out)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))
        self._maybe_resume()
        # the rollout engine (generation.backend): HF generate with the actor itself, or a colocated
        # vLLM engine that starts from policy_path and is synced after every update
        self.rollout_engine = build_rollout_engine(cfg, self.actor, self.tokenizer, policy_path, self.rank, self.world)
        if self.step > 0:  # resumed: the engine must sample from the checkpoint's policy
            self.rollout_engine.sync_weights(self.actor)

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

    # ------------------------------------------------------------------ phases
    def _logprobs(self, model, ro: Rollout, with_entropy: bool = False):
        logits = response_logits(model, ro, self.cfg.generation.temperature)
        return token_logprobs(logits, ro.response_ids, self.cfg.kernels, with_entropy=with_entropy)

    @torch.no_grad()
    def _forward_in_chunks(self, fn, ro: Rollout) -> torch.Tensor:
        parts = []
        for s in range(0, ro.response_ids.shape[0], self.local_mini):
            parts.append(fn(ro.select(torch.arange(s, min(s + self.local_mini, ro.response_ids.shape[0])))))
        return torch.cat(parts, 0)

    def _global_mean(self, x: torch.Tensor) -> float:
        s = dist.all_reduce_sum(torch.stack([x.double().sum(), torch.tensor(float(x.numel()), dtype=torch.float64)]))
        return (s[0] / s[1]).item()

    def _any_rank(self, flag: bool) -> bool:
        return bool(dist.all_reduce_max(torch.tensor(float(flag))).item() > 0)

    def rollout_phase(self, step: int) -> tuple[Rollout, dict, dict, dict]:
        cfg, timings = self.cfg, {}
        self._seed_step(step)
        prompts = self._batch_prompts(step)
        t0 = time.perf_counter()
        ids, mask, n_trunc = tokenize_prompts(self.tokenizer, prompts, cfg.generation.max_prompt_len, self.device)
        self.counters["truncated_prompts"] += n_trunc
        ro = self.rollout_engine.generate(ids, mask, step)
        timings["generate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        responses = self.tokenizer.batch_decode(
            [r[m.bool()] for r, m in zip(ro.response_ids, ro.response_mask)], skip_special_tokens=True
        )
        scores = self.scorer.score(prompts, responses)
        score = scores.score.to(self.device, torch.float32)
        var = scores.variance.to(self.device, torch.float32)
        valid = scores.valid.to(self.device) if scores.valid is not None else torch.ones_like(score, dtype=torch.bool)
        timings["score"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        ro.ref_logp = self._forward_in_chunks(lambda r: self._logprobs(self.reference, r), ro)
        ro.logp = self._forward_in_chunks(lambda r: self._logprobs(self.actor, r), ro)
        timings["reference"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ro.values = self._forward_in_chunks(lambda r: response_values(self.critic, r), ro)
        timings["value"] = time.perf_counter() - t0
        extra = {"valid": valid}
        if ro.rollout_logp is not None:
            # the sampling engine's log-probs against the trainer's, for the same tokens and weights
            extra["logprob_mismatch"] = core.logprob_mismatch(ro.logp, ro.rollout_logp, ro.response_mask)
        if self.gold_fn is not None:
            extra["gold"] = torch.tensor(self.gold_fn(prompts, responses), dtype=torch.float32)
        return ro, {"score": score, "variance": var}, timings, extra

    def shape_and_advantages(self, ro: Rollout, score: torch.Tensor, var: torch.Tensor, valid: torch.Tensor):
        p = self.cfg.ppo
        mask = ro.response_mask.float() * valid.float()[:, None]  # a dropped sample trains nothing
        score = core.apply_missing_eos_penalty(score, ro.has_eos, p.missing_eos_penalty)
        if p.score_clip is not None:
            score = score.clamp(-p.score_clip, p.score_clip)
        # σ² normalisation uses the mean over all ranks (and, for running_mean, over past batches)
        keep = valid.bool() if valid.any() else torch.ones_like(valid, dtype=torch.bool)

        def batch_mean_of(x: torch.Tensor) -> float:
            return self._global_mean(x[keep])

        batch_mean = batch_mean_of(var)
        running = None
        if p.variance.weighting == "running_mean":
            running = self.sigma_mean.update(batch_mean)
        w = core.variance_weights(
            var, p.variance.weighting, floor=p.variance.floor, ceiling=p.variance.ceiling,
            running_mean=running, batch_mean=torch.tensor(batch_mean), eps=p.variance.eps,
            heterogeneity=p.variance.heterogeneity, mean_fn=batch_mean_of,
        )
        kl = core.kl_per_token(ro.logp, ro.ref_logp, p.kl.estimator) * mask
        rewards, _penalty = core.shape_rewards(score, kl, w, mask, self.kl_ctl.value)
        if p.whiten_rewards:
            rewards = self._whiten(rewards, mask, shift_mean=False)
        adv, ret = core.gae(rewards, ro.values, mask, p.gamma, p.lam)
        if p.whiten_advantages:
            adv = self._whiten(adv, mask)
        # the logged weighted KL is the penalty divided back by β (a dropped row's σ² may be NaN: masked)
        weighted = torch.where(mask.bool(), kl * w[:, None], torch.zeros_like(kl)).sum(-1)
        stats = {"kl": (kl * mask).sum(-1), "weighted_kl": weighted, "w": w,
                 "returns": ret, "score": score, "mask": mask}
        return adv, ret, stats

    def _whiten(self, x, mask, shift_mean=True):
        s, sq, n = core.masked_moments(x, mask)
        tot = dist.all_reduce_sum(torch.stack([s.double(), sq.double(), n.double()]))
        mean = tot[0] / tot[2]
        var = (tot[1] / tot[2] - mean**2) * tot[2] / (tot[2] - 1).clamp(min=1)
        return core.whiten_with(x, mean.to(x.dtype), var.to(x.dtype), mask, shift_mean=shift_mean)

    def update_phase(self, ro: Rollout, adv: torch.Tensor, ret: torch.Tensor, mask: torch.Tensor) -> dict:
        p = self.cfg.ppo
        acc: dict[str, list[float]] = {}
        n = ro.response_ids.shape[0]
        gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.step * 31 + self.rank)
        for _ in range(p.ppo_epochs):
            order = torch.randperm(n, generator=gen)
            for s in range(0, n, self.local_mini):
                idx = order[s : s + self.local_mini]
                mb, mb_adv, mb_ret, mb_mask = ro.select(idx), adv[idx], ret[idx], mask[idx]
                logp, ent = self._logprobs(self.actor, mb, with_entropy=True)
                pg_loss, pg_stats = core.policy_loss(logp, mb.logp, mb_adv, mb_mask, p.clip_range,
                                                     token_weights=self._importance_weights(mb, mb_mask))
                entropy = core.masked_mean(ent, mb_mask)
                # with no bonus, entropy is only logged: keeping it out of the graph spares the
                # backward its vocabulary-wide term (a 0·entropy term would still be differentiated)
                loss = pg_loss - p.entropy_coef * entropy if p.entropy_coef > 0 else pg_loss
                values = response_values(self.critic, mb)
                v_loss, v_stats = core.value_loss(values, mb.values, mb_ret, mb_mask, p.clip_range_value)
                v_loss = p.vf_coef * v_loss
                # every rank must take the same decision, or the collectives inside step() hang
                if self._any_rank(not (torch.isfinite(loss) and torch.isfinite(v_loss) and torch.isfinite(logp).all())):
                    self.counters["skipped_updates"] += 1
                    warnings.warn(f"step {self.step}: non-finite loss or log-prob; minibatch update skipped")
                    self.actor.zero_grad()
                    self.critic.zero_grad()
                    continue
                self.actor.backward(loss)
                self.actor.step()
                self.critic.backward(v_loss)
                self.critic.step()
                for k, v in {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy, **pg_stats, **v_stats}.items():
                    acc.setdefault(k, []).append(float(v.detach() if torch.is_tensor(v) else v))
        return {k: self._global_mean(torch.tensor(v)) for k, v in acc.items()}

    def _importance_weights(self, mb: Rollout, mask: torch.Tensor) -> torch.Tensor | None:
        v = self.cfg.generation.vllm
        if mb.rollout_logp is None or v.importance_correction == "none":
            return None
        return core.truncated_importance_weights(mb.logp, mb.rollout_logp, mask, v.tis_cap)

    def _mismatch_metrics(self, extra: dict) -> dict:
        if "logprob_mismatch" not in extra:
            return {}
        total, count, largest = extra["logprob_mismatch"]
        tot = dist.all_reduce_sum(torch.stack([total.double(), count.double()]))
        return {"rollout_logprob_diff_mean": (tot[0] / tot[1].clamp(min=1)).item(),
                "rollout_logprob_diff_max": dist.all_reduce_max(largest.double()).item()}

    # ------------------------------------------------------------------ loop
    def train_step(self) -> dict:
        t_step = time.perf_counter()
        ro, sc, timings, extra = self.rollout_phase(self.step)
        finite = bool(torch.isfinite(sc["score"]).all() and torch.isfinite(sc["variance"]).all()
                      and torch.isfinite(ro.logp).all() and torch.isfinite(ro.ref_logp).all())
        if self._any_rank(not finite):
            return self._bad_step("non-finite score, variance or log-prob in the rollout")
        t0 = time.perf_counter()
        adv, ret, st = self.shape_and_advantages(ro, sc["score"], sc["variance"], extra["valid"])
        upd = self.update_phase(ro, adv, ret, st["mask"])
        timings["update"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.rollout_engine.sync_weights(self.actor)  # the next rollout samples from the updated policy
        timings["sync"] = time.perf_counter() - t0
        if not upd:
            return self._bad_step("every minibatch update was non-finite")
        self.bad_steps_in_row = 0
        kl_mean = self._global_mean(st["kl"])
        beta = self.kl_ctl.value
        if math.isfinite(kl_mean):
            self.kl_ctl.update(kl_mean, self.cfg.ppo.batch_size)
        elapsed = time.perf_counter() - t_step
        n_tokens = dist.all_reduce_sum(ro.response_mask.sum().double()).item()
        self.counters["dropped_samples"] += int(dist.all_reduce_sum((~extra["valid"].bool()).sum()).item())
        m = {
            "step": self.step, "world_size": self.world,
            "score_mean": self._global_mean(sc["score"]), "score_std": self._global_std(sc["score"]),
            "variance_mean": self._global_mean(sc["variance"]), "weight_mean": self._global_mean(st["w"]),
            # the realised heterogeneity of the weights (what a Table-4 sweep reports against)
            "weight_std": self._global_std(st["w"]),
            "kl_mean": kl_mean, "weighted_kl_mean": self._global_mean(st["weighted_kl"]), "kl_coef": beta,
            "returns_mean": self._global_mean(ret[st["mask"].bool()]),
            "response_length": self._global_mean(ro.response_mask.sum(-1).float()),
            "eos_fraction": self._global_mean(ro.has_eos.float()),
            **self._mismatch_metrics(extra), **upd,
            "episodes_per_s": self.cfg.ppo.batch_size / elapsed, "tokens_per_s": n_tokens / elapsed,
            **{f"time/{k}": v for k, v in timings.items()}, "time/step": elapsed, **self.counters,
        }
        if "gold" in extra:
            m["gold_mean"] = self._global_mean(extra["gold"])
        return m

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

    def _log(self, m: dict) -> None:
        if not self.info.is_main:
            return
        append_jsonl(self.out / "metrics.jsonl", m)
        for k, v in m.items():
            if isinstance(v, (int, float)) and k != "step":
                self.writer.add_scalar(k, v, m["step"])
        self.writer.flush()

    def _state(self) -> dict:
        return {"step": self.step, "kl_ctl": self.kl_ctl.state_dict(), "sigma_mean": self.sigma_mean.state_dict(),
                "bad_steps_in_row": self.bad_steps_in_row, "counters": self.counters, "world_size": self.world}

    def save_checkpoint(self) -> None:
        checkpoint.save(self.out / "checkpoints", self.step, {"actor": self.actor, "critic": self.critic}, self._state())

    def _maybe_resume(self) -> None:
        last = checkpoint.latest(self.out / "checkpoints")
        if last is None:
            if self.info.is_main and (self.out / "metrics.jsonl").exists():
                (self.out / "metrics.jsonl").unlink()  # a fresh run starts a fresh log
            return
        saved = json.loads((last / "trainer_state.json").read_text())
        st = checkpoint.load(last, {"actor": self.actor, "critic": self.critic}, saved_world_size=saved["world_size"])
        self.step = st["step"]
        self.kl_ctl.load_state_dict(st["kl_ctl"])
        self.sigma_mean.load_state_dict(st["sigma_mean"])
        self.bad_steps_in_row, self.counters = st["bad_steps_in_row"], st["counters"]
        if self.info.is_main:
            # drop log rows written after the checkpoint by the interrupted run: they are redone
            path = self.out / "metrics.jsonl"
            rows = [r for r in read_jsonl(path) if r["step"] < self.step] if path.exists() else []
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            console.print(f"resumed from {last} at step {self.step}")

    def train(self) -> dict:
        p = self.cfg.ppo
        history = []
        with progress() as bar:
            task = bar.add_task("PPO", total=p.steps, completed=self.step, info="")
            while self.step < p.steps:
                m = self.train_step()
                self._log(m)
                history.append(m)
                self.step += 1
                if p.checkpoint_every and self.step % p.checkpoint_every == 0 and self.step < p.steps:
                    self.save_checkpoint()
                if "score_mean" in m:
                    bar.update(task, advance=1, info=f"score {m['score_mean']:.3f} kl {m['kl_mean']:.3f}")
                else:
                    bar.update(task, advance=1, info="skipped")
        if p.checkpoint_every:
            self.save_checkpoint()
        self.rollout_engine.close()
        policy_dir = self.export_policy(self.out / "policy")
        good = [m for m in history if "score_mean" in m]
        summary = {
            "steps": self.step, "world_size": self.world, "policy_path": str(policy_dir),
            "episodes_per_s": sum(m["episodes_per_s"] for m in good) / max(len(good), 1),
            "tokens_per_s": sum(m["tokens_per_s"] for m in good) / max(len(good), 1),
            "final": good[-1] if good else {}, **self.counters,
        }
        if self.info.is_main:
            write_json(self.out / "summary.json", summary)
            self.writer.close()
        return summary

    def export_policy(self, path: Path) -> Path:
        """The trained actor as one HF folder (safetensors), gathered from ZeRO-3 shards if any."""
        module = self.actor.module
        with gathered_params(module, enabled=is_zero3(module)):
            if self.info.is_main:
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                module.save_pretrained(str(path), state_dict=state, safe_serialization=True)
                self.tokenizer.save_pretrained(str(path))
        dist.barrier()
        return path
