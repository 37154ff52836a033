"""The fused reward-shaping pass against the unfused steps, inside a real PPO step.

    python benchmarks/fused_shaping.py --out DIR [--size small] [--reps 4]

A real varpo trainer (benchmarks/bench_models.py inputs, a 10-head ensemble, σ²/mean σ² weights,
k3) takes one rollout; then, alternating on that same rollout, its reference pass runs
  fused    the trainer's `_shaping`: reference forward, then varpo_kernels.weighted_kl_from_logits over
           its logits (ref log-probs, KL against the generation-time old log-probs, w·KL, mask)
  unfused  the reference forward and selective log-softmax, then core.kl_per_token, the mask and the
           weights as separate [B, T] steps (kernels.fused_shaping=false)
  naive    the textbook way: the reference forward, a full log_softmax over the vocabulary (a
           [chunk, T, V] tensor), a gather, then the same [B, T] steps (what neither varpo path does)
Per path: median seconds over the repetitions, and the peak resident memory above the pass's start
(VmHWM reset through /proc/self/clear_refs; glibc's mmap threshold fixed so freed blocks leave the
RSS, see benchmarks/logprob_kernel.py). Both paths' outputs are compared (they must agree to 1e-5).
Writes DIR/fused_shaping.json and DIR/fused_shaping.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measured(fn):
    """(result, seconds, peak bytes above the start)."""
    Path("/proc/self/clear_refs").write_text("5")
    base = _status("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, _status("VmHWM") - base


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--size", default="small")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args(argv)
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):  # the allocator reads it at start
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    import torch

    torch.set_num_threads(a.threads)
    from bench_models import build_inputs
    from host import ForeignCpu, describe, machine
    from ppo_vs_trl import build_ensemble, override_strings, varpo_overrides

    from varpo.config import load_config
    from varpo.dist import join
    from varpo.ppo import core, resolve_sources
    from varpo.ppo.forward import forward_in_chunks, response_logits
    from varpo.ppo.trainer import PPOTrainer
    from varpo.scoring import build_scorer

    out = a.out.resolve()
    work = (a.work or out / "runs" / "work").resolve()
    meta = build_inputs(work, a.size)
    reward = build_ensemble(meta["policy_path"], 10, work / "reward_k10", 0)
    ov = varpo_overrides(meta, "varpo_variance_aware", str(reward), 1, 0, 1e-5, 0.1)
    ov["ppo.kl.estimator"] = "k3"
    cfg = load_config(None, override_strings(ov))
    join(cfg.deepspeed)
    policy_path, prompts, _, _ = resolve_sources(cfg)
    tr = PPOTrainer.from_config(cfg, out / "runs" / "trainer", prompts=prompts, policy_path=policy_path, scorer=build_scorer(cfg))
    watch = ForeignCpu()
    mk = tr.experience
    ro = mk.rollout(0)
    mk.score(ro)
    mk.weigh(ro)  # mask and weights
    mk.forward_passes(ro)
    mask, w = ro.mask, ro.weights
    est = cfg.ppo.kl.estimator

    def in_chunks(fn):
        return forward_in_chunks(fn, ro, mk.chunk)

    def fused():
        o = in_chunks(lambda c: tr.reference.shaping(c, c.logp, "reference", est)).shaping
        return o.logp, o.kl, o.weighted_sum

    def unfused():
        ref = in_chunks(lambda c: tr.reference.logprobs(c).logp)
        kl = core.kl_per_token(ro.logp, ref, est) * mask
        return ref, kl, torch.where(mask.bool(), kl * w[:, None], torch.zeros_like(kl)).sum(-1)

    def naive():
        def fn(c):
            logits = response_logits(tr.reference.engine, c, tr.reference.temperature)
            return torch.log_softmax(logits.float(), -1).gather(-1, c.response_ids[..., None]).squeeze(-1)

        ref = in_chunks(fn)
        kl = core.kl_per_token(ro.logp, ref, est) * mask
        return ref, kl, torch.where(mask.bool(), kl * w[:, None], torch.zeros_like(kl)).sum(-1)

    paths = {"fused": fused, "unfused": unfused, "naive": naive}
    for fn in paths.values():  # warm-up
        fn()
    times, peaks, outs = {p: [] for p in paths}, {p: [] for p in paths}, {}
    for i in range(a.reps):
        for p in (list(paths) if i % 2 == 0 else list(paths)[::-1]):  # alternate the order
            res, t, peak = measured(paths[p])
            times[p].append(t)
            peaks[p].append(peak)
            outs[p] = res
    max_err = max(float((x - y).abs().max()) for q in ("unfused", "naive") for x, y in zip(outs["fused"], outs[q]))
    foreign = watch.cores()
    B, T = ro.response_ids.shape
    res = {
        "command": "python benchmarks/fused_shaping.py " + " ".join(sys.argv[1:]),
        "machine": machine(threads=a.threads, foreign_cores=foreign, contention=describe(foreign)),
        "size": a.size, "batch": B, "response_len": T, "vocab": meta["vocab_size"], "estimator": est,
        "reps": a.reps, "max_abs_difference": max_err,
        **{p: {"seconds_median": statistics.median(times[p]), "seconds": times[p],
               "peak_extra_mb_median": statistics.median(peaks[p]) / 2**20,
               "peak_extra_mb": [x / 2**20 for x in peaks[p]]} for p in paths},
    }
    res["fused_vs_unfused_time"] = res["fused"]["seconds_median"] / res["unfused"]["seconds_median"]
    res["fused_vs_unfused_peak"] = res["fused"]["peak_extra_mb_median"] / max(res["unfused"]["peak_extra_mb_median"], 1e-9)
    res["fused_vs_naive_time"] = res["fused"]["seconds_median"] / res["naive"]["seconds_median"]
    res["fused_vs_naive_peak"] = res["fused"]["peak_extra_mb_median"] / max(res["naive"]["peak_extra_mb_median"], 1e-9)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fused_shaping.json").write_text(json.dumps(res, indent=1) + "\n")
    md = [
        "# Fused shaping pass vs unfused, inside a real PPO step", "",
        f"Command: `{res['command']}`", "",
        f"Machine: {res['machine']['cpu_model']}, {res['machine']['cores']} cores, {a.threads} torch thread(s), "
        f"torch {torch.__version__}; {res['machine']['contention']}.", "",
        f"Workload: the reference pass of one rollout at size `{a.size}` (batch {B}, {T} response tokens, "
        f"vocabulary {meta['vocab_size']}, {est}, w = σ²/mean σ² from a 10-head ensemble), {a.reps} alternating "
        f"repetitions; outputs agree to {max_err:.2g}.", "",
        "| path | seconds (median) | peak memory above start, MiB (median) |", "|---|---|---|",
        *[f"| {p} | {res[p]['seconds_median']:.3f} | {res[p]['peak_extra_mb_median']:.1f} |" for p in paths], "",
        f"fused / unfused: time {res['fused_vs_unfused_time']:.3f}, peak memory {res['fused_vs_unfused_peak']:.3f}; "
        f"fused / naive: time {res['fused_vs_naive_time']:.3f}, peak memory {res['fused_vs_naive_peak']:.3f}", "",
    ]
    (out / "fused_shaping.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0 if max_err < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
