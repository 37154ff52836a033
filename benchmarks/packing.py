"""Padding-free forwards against the padded layout on a batch whose prompts and responses really
vary in length (ppo.packing, varpo/ppo/packing.py): the reference forward, the critic's forward and
one update minibatch's forward + backward (actor log-probs and entropy, critic values, PPO losses),
timed alternately, with the padding fraction of the batch and the FLOP ratio the packing should
deliver (varpo.models.flops on the padded vs the packed rows).

    python benchmarks/packing.py --out DIR                  # the small preset (GPT-2 shape, 50k vocabulary)
    python benchmarks/packing.py --size tiny --repeats 3 --out DIR

Lengths: prompts uniform in [prompt_len/4, prompt_len] (left-padded), responses uniform in
[1, response_len] (right-padded, as EOS leaves them). DIR/packing.json, DIR/packing.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from host import ForeignCpu, describe, machine

PHASES = ("reference", "value", "update")


def batch(p: dict, B: int, vocab: int, seed: int):
    import torch

    from varpo.ppo.experience import Experience

    g = torch.Generator().manual_seed(seed)
    P, T = p["prompt_len"], p["response_len"]
    plen = torch.randint(max(1, P // 4), P + 1, (B,), generator=g)
    rlen = torch.randint(1, T + 1, (B,), generator=g)
    pm = (torch.arange(P)[None] >= P - plen[:, None]).long()
    rm = (torch.arange(T)[None] < rlen[:, None]).long()
    exp = Experience(torch.randint(3, vocab, (B, P), generator=g) * pm, pm, torch.randint(3, vocab, (B, T), generator=g) * rm,
                     rm, rlen < T)
    exp.mask = rm.float()
    exp.logp = -torch.rand(B, T, generator=g) * 5
    exp.values = torch.randn(B, T, generator=g)
    exp.advantages = torch.randn(B, T, generator=g) * exp.mask
    exp.returns = torch.randn(B, T, generator=g) * exp.mask
    return exp


def computed_flops(shape, exp, packed: bool, lm: bool, attn: str) -> float:
    """FLOPs a forward really computes over exp: the padded [B, P + T] rows (LM head at T per
    sample), or the packed rows (dense attention per row under sdpa/eager)."""
    from varpo.models.flops import forward_flops
    from varpo.ppo import packing

    B, T = exp.response_ids.shape
    L = exp.prompt_ids.shape[1] + T
    if not packed:
        return forward_flops(shape, [L] * B, B * T if lm else 0, value_head=not lm)
    rows = packing.plan(exp, attn, shape=shape) or []
    lens = [int(r.input_ids.shape[1]) for r in rows]
    return forward_flops(shape, lens, int(exp.response_mask.sum()) if lm else 0, value_head=not lm)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per layout and phase (alternating)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import torch
    from bench_models import build_inputs
    from transformers import AutoModel, AutoModelForCausalLM

    from varpo.allocator import keep_freed_memory
    from varpo.config import KernelsConfig, PackingConfig
    from varpo.models.value_head import ValueModel
    from varpo.ppo import core, packing
    from varpo.ppo.actor import CausalLMRole
    from varpo.ppo.critic import SeparateCritic
    from varpo.ppo.phase_flops import shape_of

    torch.set_num_threads(a.threads)
    keep_freed_memory()  # as train_ppo runs
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    meta = build_inputs(out / "runs" / "work", a.size, seed=a.seed)  # runs/ is git-ignored: no models in results
    p = meta["preset"]
    lm = AutoModelForCausalLM.from_pretrained(meta["policy_path"]).eval()
    critic = ValueModel(AutoModel.from_pretrained(meta["policy_path"])).eval()
    attn = packing.attn_implementation(lm)
    shape = shape_of(lm)
    ref_batch = batch(p, p["batch_size"], meta["vocab_size"], a.seed)
    mini = batch(p, p["mini_batch_size"], meta["vocab_size"], a.seed + 1)
    kernels = KernelsConfig()

    def roles(on: bool):
        cfg = PackingConfig(enabled=on)
        return CausalLMRole(lm, 1.0, kernels, packing=cfg), SeparateCritic(critic, cfg)

    def run(phase: str, on: bool) -> None:
        actor, values = roles(on)
        if phase == "reference":
            with torch.no_grad():
                actor.logprobs(ref_batch)
        elif phase == "value":
            with torch.no_grad():
                values.values(ref_batch)
        else:
            lm.zero_grad(set_to_none=True)
            critic.zero_grad(set_to_none=True)
            o = actor.logprobs(mini, with_entropy=True, inplace_backward=True)
            pg, _ = core.policy_loss(o.logp, mini.logp, mini.advantages, mini.mask, 0.2)
            vl, _ = core.value_loss(values.values(mini), mini.values, mini.returns, mini.mask, 0.2)
            (pg + 0.1 * vl).backward()

    watch = ForeignCpu()
    times = {ph: {"padded": [], "packed": []} for ph in PHASES}
    cpu = {ph: {"padded": [], "packed": []} for ph in PHASES}
    for ph in PHASES:
        run(ph, False)
        run(ph, True)  # warm-up both
        for i in range(a.repeats):
            for on in ((False, True) if i % 2 == 0 else (True, False)):
                c0, t0 = time.process_time(), time.perf_counter()
                run(ph, on)
                key = "packed" if on else "padded"
                times[ph][key].append(time.perf_counter() - t0)
                cpu[ph][key].append(time.process_time() - c0)
    foreign = watch.cores()
    res = {"command": "python benchmarks/packing.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": machine("cpu", threads=a.threads), "foreign_cores": foreign, "load": describe(foreign),
           "size": a.size, "attn_implementation": attn,
           "padding_fraction": {"reference_batch": packing.padding_fraction(ref_batch),
                                "update_minibatch": packing.padding_fraction(mini)}, "phases": {}}
    for ph in PHASES:
        exp, lm_role = (mini, True) if ph == "update" else (ref_batch, ph == "reference")
        if ph == "update":
            f_pad = computed_flops(shape, exp, False, True, attn) + computed_flops(shape, exp, False, False, attn)
            f_pack = computed_flops(shape, exp, True, True, attn) + computed_flops(shape, exp, True, False, attn)
        else:
            f_pad, f_pack = (computed_flops(shape, exp, x, lm_role, attn) for x in (False, True))
        med = {k: statistics.median(v) for k, v in times[ph].items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu[ph].items()}
        res["phases"][ph] = {"seconds": med, "cpu_seconds": med_cpu, "all_seconds": times[ph],
                             "speedup": med["padded"] / med["packed"],
                             "speedup_cpu": med_cpu["padded"] / med_cpu["packed"],
                             "flops_padded": f_pad, "flops_packed": f_pack, "flop_ratio": f_pad / f_pack}
    (out / "packing.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# Padding-free forwards vs the padded layout", "", f"Command: `{res['command']}`", "",
             f"Machine: {res['machine']['cpu_model']}, {a.threads} torch thread(s); {res['load']}.", "",
             f"Padding fraction: reference batch {res['padding_fraction']['reference_batch']:.1%} "
             f"({p['batch_size']} samples), update minibatch {res['padding_fraction']['update_minibatch']:.1%} "
             f"({p['mini_batch_size']} samples); attention {attn}.", "",
             "| phase | padded s | packed s | speed-up (wall) | speed-up (CPU) | FLOP ratio padded/packed |",
             "|---|---|---|---|---|---|"]
    for ph, r in res["phases"].items():
        lines.append(f"| {ph} | {r['seconds']['padded']:.3f} | {r['seconds']['packed']:.3f} | {r['speedup']:.2f} | "
                     f"{r['speedup_cpu']:.2f} | {r['flop_ratio']:.2f} |")
    (out / "packing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
