"""One timed PPO run of TRL 1.12.0's `trl.experimental.ppo.PPOTrainer` on the shared benchmark inputs.

Run by benchmarks/ppo_vs_trl.py in the isolated TRL environment (benchmarks/.venv-trl), one fresh
process per run:  python trl_side.py --inputs WORK --out RUN.json --steps N [--threads T]

TRL's training loop is one monolithic method, so its phases are timed from outside by replacing,
in this process only, the module-level helpers the loop calls (`batch_generation`, `forward`,
`get_reward` in trl.experimental.ppo.ppo_trainer) with timing wrappers:
  generate   batch_generation (HF generate; TRL keeps its scores as the rollout log-probs)
  reference  forward(ref_model, ...) and the reference log-softmax
  value      get_reward(value_model, ...)
  score      get_reward(reward_model, ...)
  update     the rest of the step: rewards, GAE, whitening, the PPO epochs, logging, gc
Step boundaries come from a TrainerCallback (on_train_begin, on_step_end), so a step's wall time
includes everything TRL does per step. The same wrapper forces min_new_tokens = response_length
(TRL always sets max_new_tokens only), so both trainers generate exactly the same token count.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

PHASES = ("generate", "score", "reference", "value", "update")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", required=True, help="work dir written by bench_models.build_inputs")
    ap.add_argument("--out", required=True, help="result JSON of this run")
    ap.add_argument("--steps", type=int, required=True, help="PPO steps (the first is warm-up)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kl-coef", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-5)
    a = ap.parse_args(argv)
    t_start = time.perf_counter()

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    import transformers
    import trl
    from bench_models import load_prompts
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as pt

    meta = json.loads((Path(a.inputs) / "inputs.json").read_text())
    p = meta["preset"]
    B, M, T = p["batch_size"], p["mini_batch_size"], p["response_len"]
    device = "cuda" if torch.cuda.is_available() else "cpu"

    tok = AutoTokenizer.from_pretrained(meta["policy_path"])
    tok.padding_side = "left"  # TRL generates after left-padded queries
    torch.manual_seed(a.seed)
    policy = AutoModelForCausalLM.from_pretrained(meta["policy_path"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(meta["policy_path"], dtype=torch.float32)
    # TRL's value and reward models: the same backbone weights under a 1-output score head
    value = AutoModelForSequenceClassification.from_pretrained(meta["policy_path"], num_labels=1, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(meta["policy_path"], num_labels=1, dtype=torch.float32)
    prompts = load_prompts(meta["prompts_path"])
    ds = Dataset.from_dict({"input_ids": [tok(s)["input_ids"] for s in prompts]})

    out_dir = Path(a.out).with_suffix("")
    cfg = PPOConfig(
        output_dir=str(out_dir / "trl_out"), report_to=[], save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=a.seed, use_cpu=(device == "cpu"), bf16=False, fp16=False,
        # one rollout batch of B prompts per step, M sequences per minibatch, one micro-batch per
        # minibatch (TRL: local_batch = per_device * grad_accum; minibatch = batch / num_mini_batches)
        per_device_train_batch_size=M, gradient_accumulation_steps=B // M, num_mini_batches=B // M,
        num_ppo_epochs=p["ppo_epochs"], total_episodes=B * a.steps,
        local_rollout_forward_batch_size=B,  # generation and rollout forwards over the whole batch, as varpo
        response_length=T, temperature=1.0, stop_token="eos", missing_eos_penalty=None,
        kl_coef=a.kl_coef, kl_estimator="k1", learning_rate=a.lr, num_sample_generations=0,
        whiten_rewards=False, gamma=1.0, lam=0.95, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
        dataloader_num_workers=0,
    )

    # ---- phase timers (this process only) ----
    acc: dict[str, float] = defaultdict(float)
    trainer_ref: dict = {}

    def timed(name, fn):
        def wrapper(*args, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kw)
            finally:
                acc[name] += time.perf_counter() - t0
                acc[name + "_cpu"] += time.process_time() - c0
        return wrapper

    orig_batch_generation, orig_forward, orig_get_reward = pt.batch_generation, pt.forward, pt.get_reward

    def batch_generation(model, queries, bs, pad_token_id, generation_config):
        import copy

        gc_ = copy.deepcopy(generation_config)
        gc_.min_new_tokens = gc_.max_new_tokens  # fixed response length on both sides
        query_responses, logits = timed("generate", orig_batch_generation)(model, queries, bs, pad_token_id, gc_)
        gen_lengths.append(int(logits.shape[1]))  # tokens generated per response in this batch
        return query_responses, logits

    def forward(model, query_responses, pad_token_id):
        if model is trainer_ref.get("ref"):
            return timed("reference", orig_forward)(model, query_responses, pad_token_id)
        return orig_forward(model, query_responses, pad_token_id)

    def get_reward(model, query_responses, pad_token_id, context_length):
        name = "score" if model is trainer_ref.get("reward") else "value"
        return timed(name, orig_get_reward)(model, query_responses, pad_token_id, context_length)

    pt.batch_generation, pt.forward, pt.get_reward = batch_generation, forward, get_reward
    # TRL calls gc.collect() twice per step; timed separately (still counted inside `update`)
    pt.gc = type(pt.gc)("gc_timed")
    pt.gc.__dict__.update({k: getattr(__import__("gc"), k) for k in dir(__import__("gc")) if not k.startswith("__")})
    pt.gc.collect = timed("gc_collect", __import__("gc").collect)

    steps: list[dict] = []
    gen_lengths: list[int] = []
    opt_steps = {"n": 0}

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t, self.c = time.perf_counter(), time.process_time()
            acc.clear()

        def on_step_end(self, args, state, control, **kw):
            now, cpu = time.perf_counter(), time.process_time()
            wall = now - self.t
            # cpu_s: this process's CPU seconds (all its threads), which other jobs on the machine barely move
            row = {"wall_s": wall, "cpu_s": cpu - self.c, "episodes": B, "tokens": B * T, "optimizer_steps": opt_steps["n"]}
            for k in ("generate", "score", "reference", "value"):
                row[f"time/{k}"] = acc.get(k, 0.0)
            row["time/update"] = wall - sum(row[f"time/{k}"] for k in ("generate", "score", "reference", "value"))
            row["time/update_gc_collect"] = acc.get("gc_collect", 0.0)
            row["cpu/update_gc_collect"] = acc.get("gc_collect_cpu", 0.0)
            steps.append(row)
            acc.clear()
            opt_steps["n"] = 0
            self.t, self.c = now, cpu  # the next step starts where this one ended: nothing between steps is lost

    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=ds, value_model=value, callbacks=[StepClock()])
    trainer_ref["ref"], trainer_ref["reward"] = trainer.ref_model, trainer.reward_model
    # count real optimizer steps (accelerate skips step() on non-sync micro-batches)
    inner = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    inner_step = inner.step

    def counting_step(*args, **kw):
        opt_steps["n"] += 1
        return inner_step(*args, **kw)

    inner.step = counting_step
    setup_s = time.perf_counter() - t_start
    trainer.train()

    if any(n != T for n in gen_lengths):
        raise RuntimeError(f"TRL generated {sorted(set(gen_lengths))} tokens per response, expected exactly {T}")
    result = {
        "side": "trl", "variant": "trl", "steps": steps, "setup_s": setup_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "threads": torch.get_num_threads(), "device": device,
        "optimizer_steps_per_ppo_step": steps[-1]["optimizer_steps"] if steps else None,
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                     "python": sys.version.split()[0]},
        "settings": {"batch_size": B, "mini_batch_size": M, "ppo_epochs": p["ppo_epochs"], "response_len": T,
                     "prompt_len": p["prompt_len"], "kl_estimator": "k1", "kl_coef": a.kl_coef, "lr": a.lr,
                     "reward_heads": 1},
    }
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
