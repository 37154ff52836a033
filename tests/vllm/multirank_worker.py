"""One rank of tests/vllm/test_multirank_vllm.py, under the `deepspeed` launcher: PPO through the
product's own path (`varpo.ppo.train_ppo`, as launch/train_ppo.py calls it) with
generation.backend=vllm and a ZeRO-3 actor, plus a callback that probes this rank's vLLM engine
after every step (after the update and the weight sync):

- the engine samples the same probe prompts on every rank (the test compares the ranks: their
  sampling seeds differ by rank only);
- its log-probs of those samples against the trainer's forward with the actor's gathered, updated
  weights (`now`) and with the weights from before the update (`prev`; the initial policy at
  step 0): a synced engine matches `now`, a stale one would match `prev`;
- the step's own rollout: the old log-probs PPO trained with (the engine's own, at temperature 1)
  against the trainer's forward with the weights that sampled it (`prev`), on this rank.

Writes OUT/probe/rank<r>.json."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

PROBE_STEP = 10_000  # the probe's sampling seeds never coincide with a training step's


def plain_logp(model, ro, temperature: float):
    """Log-probs of the engine's samples under a plain HF model (varpo.ppo.forward.response_logits,
    as the actor role computes them, varpo.ppo.actor.CausalLMRole.logprobs)."""
    import torch

    from varpo.ppo.forward import response_logits

    with torch.no_grad():
        logits = response_logits(model, ro, temperature).float()
        return logits.log_softmax(-1).gather(-1, ro.response_ids[..., None]).squeeze(-1)


def masked_max(a, b, mask) -> float:
    return float(((a.float() - b.float()).abs() * mask.float()).max())


def make_probe(out: Path, probe_prompts: list[str], initial):
    """`initial`: the policy as loaded before training, a plain HF model (loaded before any ZeRO-3
    model exists: while one does, HF's DeepSpeed integration would partition it too)."""
    import torch

    from varpo.engines import gathered_params
    from varpo.ppo import TrainerCallback
    from varpo.ppo.tokens import tokenize_prompts

    class Probe(TrainerCallback):
        def on_train_begin(self, trainer) -> None:
            self.t, self.rows, self.exp = trainer, [], None
            self.prev = initial  # the weights before the first update: the policy the engine started from

        def on_rollout_scored(self, prompts, responses, experience) -> None:
            self.exp = experience  # its old log-probs are filled in by the next stage of the step

        def on_step_end(self, metrics: dict) -> None:
            t, gen = self.t, self.t.cfg.generation
            exp = self.exp
            row = {"step": metrics["step"], "mismatch_logged": "rollout_logprob_diff_max" in metrics,
                   "old_logp_from_engine": exp.rollout_logp is None,
                   # the policy before this step's update sampled the rollout: its forward is the truth
                   "train_diff_max": masked_max(exp.logp, plain_logp(self.prev, exp, gen.temperature),
                                                exp.response_mask),
                   "train_tokens": int(exp.response_mask.sum())}
            ids, mask, _ = tokenize_prompts(t.tokenizer, probe_prompts, gen.max_prompt_len, t.device)
            ro = t.rollout_engine.generate(ids, mask, PROBE_STEP + metrics["step"])
            with torch.no_grad():  # the trainer's own forward (the DeepSpeed engine fetches ZeRO-3 shards)
                now = t.actor.logprobs(ro).logp
            with gathered_params(t.actor.module):  # every rank joins: ZeRO-3 all-gathers
                current = {n: p.detach().clone() for n, p in t.actor.module.named_parameters()}
            prev = plain_logp(self.prev, ro, gen.temperature)
            with torch.no_grad():
                for n, p in self.prev.named_parameters():
                    p.copy_(current[n])
            row.update(now_diff_max=masked_max(ro.logp, now, ro.response_mask),
                       prev_diff_max=masked_max(ro.logp, prev, ro.response_mask),
                       probe_response_ids=ro.response_ids.tolist(),
                       probe_lengths=ro.response_mask.sum(-1).tolist())
            self.rows.append(row)

        def on_train_end(self, summary: dict) -> None:
            info = {"rank": self.t.rank, "world": self.t.world,
                    "omp_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"), "rows": self.rows}
            (out / "probe").mkdir(parents=True, exist_ok=True)
            (out / "probe" / f"rank{self.t.rank}.json").write_text(json.dumps(info))

    return Probe()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--probe-prompts", type=Path, required=True, help="JSON list of prompts, the same on every rank")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--local_rank", type=int, default=None)
    a = ap.parse_args()
    if a.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(a.local_rank))
    import torch
    from transformers import AutoModelForCausalLM

    from varpo.config import load_config
    from varpo.ppo import train_ppo

    cfg = load_config(None, a.overrides)
    initial = AutoModelForCausalLM.from_pretrained(cfg.model.policy_path, dtype=torch.float32).eval()
    train_ppo(cfg, a.out, callbacks=[make_probe(a.out, json.loads(a.probe_prompts.read_text()), initial)])


if __name__ == "__main__":
    main()
