"""Evaluation during PPO (`ppo.eval_every`), as TRL's and OpenRLHF's users expect: every N steps
(and after the last) the current policy answers held-out prompts, one sample each, and the
step's metrics gain

    eval/reward_mean     the reward source's point estimate (ensemble mean, judges' midpoint, ...)
    eval/score_mean      the score s PPO trains on (the configured aggregation)
    eval/variance_mean   σ² of the reward on those samples (0 for a single reward model)
    eval/gold_mean       the true reward, where the task has one (the testbed's gold)
    eval/response_length tokens per response

logged like every other metric (metrics.jsonl, TensorBoard, W&B). A trainer callback that runs
before the loggers, on every rank: each rank samples an equal share of the prompts (ZeRO-3 and
the ensemble's sharded forward need every rank in every call), and the means are over all ranks.
Sampling is seeded by one fixed seed for every evaluation, so successive evaluations differ by
the policy, not by the draw; it reseeds nothing training uses (each PPO step seeds its own)."""
from __future__ import annotations

import math

import torch

from .. import dist
from ..callbacks import TrainerCallback

EVAL_STEP = 10_000_019  # the `step` the sampling seed is derived from: apart from every training step


class PeriodicEvaluation(TrainerCallback):
    def __init__(self, prompts: list[str], every: int, gold_fn=None):
        if not prompts:
            raise ValueError("PeriodicEvaluation: no held-out prompts")
        if every < 1:
            raise ValueError(f"PeriodicEvaluation: every must be ≥ 1, got {every}")
        self.prompts, self.every, self.gold_fn = list(prompts), every, gold_fn
        self.trainer = None

    def on_train_begin(self, trainer) -> None:
        self.trainer = trainer

    def due(self, step: int) -> bool:
        done = step + 1  # steps completed after this one
        return done % self.every == 0 or done == self.trainer.cfg.ppo.steps

    def on_step_end(self, metrics: dict) -> None:
        if self.due(metrics["step"]):
            metrics.update(self.evaluate())

    def _shard(self) -> tuple[list[str], list[bool]]:
        """This rank's prompts (equal counts on every rank: the last shard repeats its last prompt)
        and which of them are real (the repeats are left out of the means)."""
        n, world, rank = len(self.prompts), self.trainer.world, self.trainer.rank
        per = math.ceil(n / world)
        idx = list(range(rank * per, (rank + 1) * per))
        return [self.prompts[min(i, n - 1)] for i in idx], [i < n for i in idx]

    @torch.no_grad()
    def evaluate(self) -> dict:
        from .tokens import decode_responses, tokenize_prompts

        t = self.trainer
        cfg = t.cfg
        prompts, real = self._shard()
        responses, lengths = [], []
        chunk = max(1, cfg.ppo.batch_size // t.world)  # no larger than a training rollout: the same memory
        for s in range(0, len(prompts), chunk):
            ids, mask, _ = tokenize_prompts(t.tokenizer, prompts[s : s + chunk], cfg.generation.max_prompt_len,
                                            t.device, cfg.data.chat_template)
            exp = t.rollout_engine.generate(ids, mask, EVAL_STEP + s)
            responses += decode_responses(t.tokenizer, exp)
            lengths += exp.response_mask.sum(-1).float().cpu().tolist()
        sc = t.scorer.score(prompts, responses)
        keep = torch.tensor(real, dtype=torch.bool)
        if sc.valid is not None:
            keep &= sc.valid.bool().cpu()
        columns = {"reward_mean": (sc.eval_reward if sc.eval_reward is not None else sc.score),
                   "score_mean": sc.score, "variance_mean": sc.variance, "response_length": torch.tensor(lengths)}
        if self.gold_fn is not None:
            columns["gold_mean"] = torch.tensor(self.gold_fn(prompts, responses), dtype=torch.float64)
        sums = torch.stack([torch.where(keep, c.double().cpu(), 0.0).sum() for c in columns.values()]
                           + [keep.double().sum()])
        sums = dist.all_reduce_sum(sums.to(t.device)).cpu()
        count = float(sums[-1])
        out = {f"eval/{k}": (float(v) / count if count else float("nan")) for k, v in zip(columns, sums[:-1])}
        out["eval/samples"] = int(count)
        return out
