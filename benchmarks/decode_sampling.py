"""HF generate on the ppo_vs_trl `small` workload (its policy: GPT-2 shape, 50k vocabulary; 8 prompts
of 64 tokens, exactly 64 new tokens, old log-probs recorded as PPO does), four ways, one process,
one torch thread, freed memory kept in the heap as `varpo train-ppo` keeps it (varpo/allocator.py),
rounds in rotated order:

  multinomial + linear head    HF generate as TRL runs it (torch.multinomial; the LM head h · Wᵀ)
  inverse_cdf + linear head    varpo's sampler alone (varpo/ppo/generation/sampling.py)
  multinomial + varpo head     varpo's decoding head alone (varpo/ppo/lm_head.py: oneDNN's linear on a
                               weight packed once per rollout; W·hᵀ where this torch has no oneDNN)
  inverse_cdf + varpo head     varpo's default

    python benchmarks/decode_sampling.py --out DIR            # 4 rounds
Writes DIR/decode_sampling.json and DIR/decode_sampling.md: median seconds per rollout and per
decoding step for each way, and each way's speed-up over HF's, paired by round.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

from host import ForeignCpu, describe, machine

WAYS = {  # name: (generation.sampler, varpo's decoding head)
    "multinomial+linear": ("multinomial", False),
    "inverse_cdf+linear": ("inverse_cdf", False),
    "multinomial+varpo_head": ("multinomial", True),
    "inverse_cdf+varpo_head": ("inverse_cdf", True),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from varpo.allocator import keep_freed_memory

    kept = keep_freed_memory()  # as train_ppo does (runtime.keep_freed_memory, on by default)
    from bench_models import build_inputs
    from transformers import AutoModelForCausalLM

    import varpo.ppo.generation.hf as hf
    from varpo.config import load_config
    from varpo.models.loading import load_tokenizer
    from varpo.ppo.tokens import tokenize_prompts

    out = a.out.resolve()
    meta = build_inputs(out / "runs" / "work", a.size)
    p = meta["preset"]
    tok = load_tokenizer(meta["policy_path"])
    model = AutoModelForCausalLM.from_pretrained(meta["policy_path"], dtype=torch.float32).eval()
    prompts = [json.loads(x)["prompt"] for x in Path(meta["prompts_path"]).read_text().splitlines()[: p["batch_size"]]]
    T = p["response_len"]
    base = [f"generation.max_new_tokens={T}", f"generation.min_new_tokens={T}",
            f"generation.max_prompt_len={p['prompt_len'] + 8}"]
    ids, mask, _ = tokenize_prompts(tok, prompts, p["prompt_len"] + 8, "cpu")
    real_head = hf.decode_head

    def rollout(way: str) -> float:
        sampler, transposed = WAYS[way]
        cfg = load_config(None, [*base, f"generation.sampler={sampler}"])
        hf.decode_head = real_head if transposed else (lambda m: contextlib.nullcontext())
        try:
            torch.manual_seed(0)
            t0 = time.perf_counter()
            ro = hf.generate(model, tok, ids, mask, cfg.generation, record_logprobs=cfg.kernels)
            s = time.perf_counter() - t0
        finally:
            hf.decode_head = real_head
        assert ro.response_ids.shape[1] == T
        return s

    names = list(WAYS)
    for w in names:  # warm-up: allocator, thread pools, first-call paths
        rollout(w)
    watch = ForeignCpu()
    secs: dict[str, list[float]] = {w: [] for w in names}
    for r in range(a.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for w in order:
            secs[w].append(rollout(w))
        print(f"round {r}: " + ", ".join(f"{w} {secs[w][-1]:.3f}s" for w in names), flush=True)
    foreign = watch.cores()
    hf_way = "multinomial+linear"
    res = {w: {"seconds_median": statistics.median(v), "seconds": v,
               "per_step_ms": 1000 * statistics.median(v) / T,
               "speedup_vs_hf_paired": statistics.median(h / x for h, x in zip(secs[hf_way], v))}
           for w, v in secs.items()}
    result = {"command": "python benchmarks/decode_sampling.py " + " ".join(argv or __import__("sys").argv[1:]),
              "machine": machine(), "foreign_cores": foreign, "load": describe(foreign), "keep_freed_memory": kept,
              "workload": {"size": a.size, "prompts": len(prompts), "prompt_len": p["prompt_len"], "new_tokens": T,
                           "vocab": model.config.vocab_size, "hidden": model.config.hidden_size},
              "rounds": a.rounds, "ways": res}
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_sampling.json").write_text(json.dumps(result, indent=2))
    lines = ["# HF generate: sampler and decoding LM head", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']['cpu_model']}, 1 torch thread, freed memory kept in the heap: {kept}, "
             f"torch {result['machine']['torch']}, "
             f"transformers {result['machine']['transformers']}, commit {result['machine']['commit']}; "
             f"{result['load']}; load average at the end {result['machine']['loadavg']}.", "",
             f"Workload: {len(prompts)} prompts × {p['prompt_len']} tokens, {T} new tokens each, vocabulary "
             f"{model.config.vocab_size}, hidden {model.config.hidden_size}; old log-probs recorded; {a.rounds} "
             "rounds, rotated order, one warm-up rollout per way.", "",
             "| way | s per rollout (median) | ms per decoding step | speed-up over HF's (paired) |", "|---|---|---|---|"]
    lines += [f"| {w} | {v['seconds_median']:.3f} | {v['per_step_ms']:.1f} | {v['speedup_vs_hf_paired']:.2f}× |"
              for w, v in res.items()]
    (out / "decode_sampling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
