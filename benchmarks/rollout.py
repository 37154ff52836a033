"""Rollout generation: HF generate (the trainer's `varpo.ppo.generation.hf.generate`) against the
colocated vLLM engine (`varpo.ppo.generation.vllm`), same model, same prompts, same lengths.

Both sides generate exactly `response_len` new tokens per prompt (min_new_tokens = max_new_tokens,
so EOS cannot end a row early) from the same prompt batch, with the sampling settings PPO uses.
The two alternate (hf vllm hf vllm ...) after one untimed warm-up each, so drift in the machine's
load falls on both; tokens/s = generated tokens / median seconds per batch. Then the weights are
perturbed (an "update"), synced into the engine in memory, and vLLM's log-probs of a fresh rollout
are compared with the trainer's forward on the updated weights: `logprob_max_abs_diff_after_sync`.

Runs in the vLLM environment (README, "vLLM rollouts"):
    .venv-vllm/bin/python benchmarks/rollout.py --out benchmarks/results/rollout          # CPU, tiny Llama
    python benchmarks/rollout.py --size gpt2-small --out DIR                               # GPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench_models import SIZES, build_inputs, load_prompts  # benchmarks/, the script's own folder
from host import ForeignCpu, describe, machine


def _vllm_version() -> str | None:
    try:
        import vllm
    except ImportError:
        return None
    return vllm.__version__


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--size", default="tiny", choices=sorted(SIZES))
    ap.add_argument("--batch", type=int, default=None, help="prompts per rollout (default: the preset's batch_size)")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens per response (default: the preset's)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rollouts per side")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: float32 on CPU, bfloat16 on GPU (both sides)")
    ap.add_argument("--work", type=Path, default=None, help="where the model is built (default: OUT/work)")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from varpo.config import load_config
    from varpo.models.loading import load_tokenizer
    from varpo.ppo.forward import response_logits
    from varpo.ppo.generation import build_rollout_engine
    from varpo.ppo.generation.hf import generate
    from varpo.ppo.logprobs import token_logprobs
    from varpo.ppo.tokens import tokenize_prompts

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    p = SIZES[args.size]
    B, T = args.batch or p.batch_size, args.new_tokens or p.response_len
    inputs = build_inputs(args.work or args.out / "work", args.size)
    policy = inputs["policy_path"]
    prompts = load_prompts(inputs["prompts_path"])[:B]
    cfg = load_config(None, [
        f"model.policy_path={policy}", f"model.dtype={dtype}", "generation.backend=vllm",
        f"generation.max_new_tokens={T}", f"generation.min_new_tokens={T}", f"generation.max_prompt_len={p.prompt_len}",
    ])
    tok = load_tokenizer(policy)
    actor = AutoModelForCausalLM.from_pretrained(policy, dtype=getattr(torch, dtype)).to(device).eval()
    ids, mask, _ = tokenize_prompts(tok, prompts, p.prompt_len, device)

    t0 = time.perf_counter()
    engine = build_rollout_engine(cfg, actor, tok, policy, rank=0, world=1)
    engine_start = time.perf_counter() - t0

    def hf(step):
        torch.manual_seed(step)
        return generate(actor, tok, ids, mask, cfg.generation)

    def vl(step):
        return engine.generate(ids, mask, step)

    def timed(fn, step):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        ro = fn(step)
        if cuda:
            torch.cuda.synchronize()
        n = int(ro.response_mask.sum())
        if n != B * T:
            raise RuntimeError(f"expected {B * T} generated tokens, got {n}")
        return time.perf_counter() - t

    watch = ForeignCpu()
    timed(hf, 0), timed(vl, 0)  # warm-up
    secs = {"hf": [], "vllm": []}
    for r in range(args.repeats):
        secs["hf"].append(timed(hf, r + 1))
        secs["vllm"].append(timed(vl, r + 1))
    contention = watch.cores()

    # an update, synced in memory; then vLLM's log-probs against the trainer's on the new weights
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for prm in actor.parameters():
            prm.add_((torch.randn(prm.shape, generator=g) * 0.01).to(prm))
    t0 = time.perf_counter()
    engine.sync_weights(actor)
    sync_s = time.perf_counter() - t0
    ro = engine.generate(ids, mask, 10**6)
    with torch.no_grad():
        want = token_logprobs(response_logits(actor, ro, cfg.generation.temperature), ro.response_ids, cfg.kernels)
    engine_lp = ro.logp if ro.logp is not None else ro.rollout_logp  # raw (old log-probs) or processed
    diff = float(((engine_lp.float() - want.float()).abs() * ro.response_mask).max())
    engine.close()

    res = {}
    for side in ("hf", "vllm"):
        med = statistics.median(secs[side])
        res[side] = {"tokens_per_s": B * T / med, "seconds": med, "seconds_all": secs[side]}
    out = {
        "hf": res["hf"], "vllm": res["vllm"],
        "vllm_vs_hf": res["vllm"]["tokens_per_s"] / res["hf"]["tokens_per_s"],
        "logprob_max_abs_diff_after_sync": diff,
        "vllm_engine_start_s": engine_start, "vllm_sync_s": sync_s,
        "workload": {"size": args.size, "n_params": inputs["n_params"], "dtype": dtype, "prompts": B,
                     "prompt_len": p.prompt_len, "new_tokens": T, "repeats": args.repeats,
                     "sampling": {"temperature": cfg.generation.temperature, "top_k": cfg.generation.top_k,
                                  "top_p": cfg.generation.top_p}},
        "machine": machine(vllm=_vllm_version(), other_processes_cores=contention, contention=describe(contention)),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rollout.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("hf", "vllm", "vllm_vs_hf", "logprob_max_abs_diff_after_sync")}, indent=1))
    return out


if __name__ == "__main__":
    main()
