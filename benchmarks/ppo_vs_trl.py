"""PPO throughput, side by side: varpo against TRL 1.12.0's `trl.experimental.ppo.PPOTrainer`.

    python benchmarks/ppo_vs_trl.py --quick --out DIR          # ~5 min on 2 CPU cores
    python benchmarks/ppo_vs_trl.py --size small --rounds 3 --steps 3 --warmup 1 \
        --variants trl,varpo_vanilla,varpo_variance_aware --out DIR
                                        # compute-bound CPU size (50k vocabulary, 64-token responses)
    python benchmarks/ppo_vs_trl.py --size gpt2-small --out DIR  # GPT-2 small, meant for a GPU
    python benchmarks/ppo_vs_trl.py --size small --variants trl,varpo_vanilla,varpo_vllm --out DIR
                                        # with vLLM rollouts (needs .venv-vllm: bash scripts/setup_vllm_env.sh)

Both trainers get the same inputs (benchmarks/bench_models.py): one randomly initialised policy
checkpoint (also the reference, and the backbone of the value model and of the reward model), one
word-level tokenizer (pad = eos), the same fixed-length prompts, batch size, minibatch size, PPO
epochs, learning rates, KL estimator (k1) and coefficient, GAE (γ=1, λ=0.95), clip ranges, and
sampling (temperature 1, top_k 0, top_p 1, min_new_tokens = max_new_tokens, so every response has
exactly the same number of tokens on both sides). TRL's reward and value models are
AutoModelForSequenceClassification(num_labels=1) on the backbone; varpo's reward is a K-head
ensemble on the same backbone (varpo.reward.EnsembleRewardModel) and its critic a value head on it.

Variants, one fresh subprocess per run; every round runs each selected variant once, and the order
rotates by one place per round (trl, vanilla, variance-aware; vanilla, variance-aware, trl; ...), so that
over len(variants) rounds each variant takes each position once: a round's later runs were measured
slower on a quiet 2-core machine whichever variant ran there (results/ppo_vs_trl/small/order_reversed),
and a fixed order would charge that to one variant (--order fixed keeps the old order):
  trl                    TRL PPOTrainer (in the isolated env benchmarks/.venv-trl, prepared here)
  varpo_vanilla          varpo PPO, 10-head ensemble, w = 1
  varpo_variance_aware   varpo PPO, 10-head ensemble, w = σ²/mean(σ²) (batch_mean)
  varpo_1head            varpo PPO, 1-head ensemble, w = 1 (the reward model TRL has)
  varpo_shared_trunk     as varpo_vanilla with model.critic=shared_trunk (the value head on the actor's
                         trunk: no critic model, one forward per minibatch for logits and values); opt-in,
                         not in the default --variants (select it with --variants ...,varpo_shared_trunk)
  varpo_vllm             as varpo_vanilla with generation.backend=vllm (a colocated vLLM engine samples the
                         rollouts, weights synced in memory after each update), run by the vLLM environment's
                         interpreter (--vllm-venv, default .venv-vllm in the repository, or $VARPO_VLLM_VENV);
                         opt-in. Its start-up is reported apart (`startup_s`: importing vLLM and building the
                         engine, `startup_parts_s`; a user pays it once per run, not per step), with
                         `breakeven_steps`: the steps after which the faster steps have paid for the extra seconds
                         before the first step (`setup_s` against varpo_vanilla's) in the same round

Throughput of one run = episodes (tokens) of its steps after warm-up / their wall time, where a
step's wall time runs from the end of the previous step to the end of this one (both trainers'
per-step logging and bookkeeping included). `ratio_vs_trl` = median over rounds of
varpo_vanilla / trl from the same round (and per variant, `<variant>.ratio_vs_trl`).

Model FLOPs utilisation per phase (`<variant>.mfu`): the matrix-product FLOPs each phase did
(varpo.models.flops, from the model's shape and the real token counts: varpo's metrics rows carry
them, TRL's are counted from the same workload) / the phase's seconds / this machine's matrix-product
peak, measured before every round by benchmarks/roofline.py at the runs' dtype and thread count
(`roofline`); generation's unavoidable bytes (weights once per decode step, the KV cache) / its
seconds / the measured copy bandwidth (`generate_bandwidth_fraction`).
Results: DIR/results.json, DIR/results.md, DIR/throughput.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from host import SHARED_CORES, ForeignCpu, machine  # benchmarks/, the script's own folder
from roofline import utilisation

HERE = Path(__file__).resolve().parent

TRL_VERSION = "1.12.0"
PHASES = ("generate", "score", "reference", "value", "shape", "update", "other")
VARIANTS = {
    "trl": {"side": "trl", "heads": 1, "weighting": None},
    "varpo_vanilla": {"side": "varpo", "heads": 10, "weighting": "none"},
    "varpo_variance_aware": {"side": "varpo", "heads": 10, "weighting": "batch_mean"},
    "varpo_1head": {"side": "varpo", "heads": 1, "weighting": "none"},
    # opt-in: the default run keeps its time budget
    "varpo_shared_trunk": {"side": "varpo", "heads": 10, "weighting": "none", "critic": "shared_trunk", "opt_in": True},
    # opt-in: needs the vLLM environment
    "varpo_vllm": {"side": "varpo", "heads": 10, "weighting": "none", "backend": "vllm", "opt_in": True},
}
MFU_PHASES = ("generate", "reference", "value", "update")
DEFAULT_VARIANTS = [v for v, spec in VARIANTS.items() if not spec.get("opt_in")]


def round_order(variants: list[str], r: int, order: str = "rotate") -> list[str]:
    """The variants in the order round r runs them: rotated left by r places (a Latin square over
    len(variants) rounds), or as given with order="fixed"."""
    if order == "fixed" or not variants:
        return list(variants)
    k = r % len(variants)
    return list(variants[k:]) + list(variants[:k])
# quick: ~3 min on 2 idle cores, ~5 on busy ones; full: more rounds and steps for tighter medians
MODES = {"quick": {"rounds": 5, "steps": 5, "warmup": 1}, "full": {"rounds": 5, "steps": 10, "warmup": 2}}
REQUIRED_KEYS = ("trl", "varpo_vanilla", "varpo_variance_aware", "ratio_vs_trl", "ratio_vs_trl_excluding_gc_collect",
                 "machine")


# ---------------------------------------------------------------------------------------- statistics
def summarize(values: list[float]) -> dict:
    """min / median / max / n of a list of numbers; all None for an empty list."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"min": None, "median": None, "max": None, "n": 0}
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}


def run_throughput(run: dict, warmup: int) -> dict:
    """Throughput and mean per-step phase seconds of one run, over the steps after `warmup`.

    Each step row has wall_s, episodes, tokens and time/<phase> seconds; `other` is whatever of
    the wall time no named phase covers (clamped at 0 against timer rounding)."""
    steps = run["steps"][warmup:]
    if not steps:
        raise ValueError(f"run has {len(run['steps'])} steps, none left after {warmup} warm-up step(s)")
    wall = sum(s["wall_s"] for s in steps)
    if wall <= 0:
        raise ValueError(f"non-positive measured wall time {wall}")
    phases = {}
    for ph in PHASES[:-1]:
        phases[ph] = sum(s.get(f"time/{ph}", 0.0) for s in steps) / len(steps)
    phases["other"] = max(wall / len(steps) - sum(phases.values()), 0.0)
    # finer timers a runner adds inside a phase (e.g. TRL's gc.collect inside update)
    extra = sorted({k for s in steps for k in s if k.startswith("time/") and k[5:] not in PHASES})
    # throughput per CPU second of the run's own process: on a shared machine the wall clock
    # measures the other jobs too, the process's CPU time mostly its own work (runs older than
    # this field have none)
    cpu = sum(s["cpu_s"] for s in steps) if all("cpu_s" in s for s in steps) else None
    flops = {ph: sum(s.get(f"flops/{ph}", 0.0) for s in steps) for ph in MFU_PHASES}
    work = {"phase_flops": flops, "phase_seconds": {ph: sum(s.get(f"time/{ph}", 0.0) for s in steps) for ph in MFU_PHASES},
            "generate_bytes": sum(s.get("bytes/generate", 0.0) for s in steps)} if any(flops.values()) else {}
    return {
        **work,
        "detail_s": {k[5:]: sum(s.get(k, 0.0) for s in steps) / len(steps) for k in extra},
        "detail_cpu_s": {k[4:]: sum(s.get(k, 0.0) for s in steps) / len(steps)
                         for k in sorted({k for s in steps for k in s if k.startswith("cpu/")})},
        "episodes_per_cpu_s": sum(s["episodes"] for s in steps) / cpu if cpu else None,
        "cpu_step_s": cpu / len(steps) if cpu else None,
        "episodes_per_s": sum(s["episodes"] for s in steps) / wall,
        "tokens_per_s": sum(s["tokens"] for s in steps) / wall,
        "step_s": wall / len(steps),
        "phases_s": phases,
        "measured_steps": len(steps),
    }


def paired_ratios(num: dict[int, float], den: dict[int, float]) -> list[float]:
    """num[r] / den[r] for every round r present (and positive) in both, in round order."""
    return [num[r] / den[r] for r in sorted(set(num) & set(den)) if den[r] and num[r] is not None]


def variant_summary(runs: list[dict], warmup: int, roofline: dict | None = None) -> dict:
    """Aggregate the successful runs of one variant: min/median/max of throughput, the median of
    each phase's per-step seconds, peak RSS, and the per-run figures; with `roofline` (round -> the
    probe measured before it) each phase's utilisation of the measured peaks (median over runs)."""
    ok = [r for r in runs if r.get("ok")]
    per_run = [{"round": r["round"], "position": r.get("position"), **run_throughput(r["result"], warmup),
                "peak_rss_mb": r["result"].get("peak_rss_mb"), "startup_s": r["result"].get("startup_s"),
                "setup_s": r["result"].get("setup_s"), **({"startup_parts_s": r["result"]["startup_parts_s"]}
                                                          if r["result"].get("startup_parts_s") else {})} for r in ok]
    for p in per_run:
        probe = (roofline or {}).get(p["round"])
        if probe and p.get("phase_flops"):
            p.update(utilisation(p["phase_flops"], p["phase_seconds"], probe["matmul"]["flops_per_s"],
                                 p["generate_bytes"], probe["memory"]["bytes_per_s"]))
    eps = summarize([p["episodes_per_s"] for p in per_run])
    out = {
        "episodes_per_s": eps["median"],
        "episodes_per_s_stats": eps,
        "tokens_per_s": summarize([p["tokens_per_s"] for p in per_run])["median"],
        "tokens_per_s_stats": summarize([p["tokens_per_s"] for p in per_run]),
        "step_s": summarize([p["step_s"] for p in per_run])["median"],
        "phases_s": {ph: summarize([p["phases_s"][ph] for p in per_run])["median"] for ph in PHASES},
        "detail_s": {k: summarize([p["detail_s"].get(k) for p in per_run])["median"]
                     for k in sorted({k for p in per_run for k in p["detail_s"]})},
        "peak_rss_mb": summarize([p["peak_rss_mb"] for p in per_run]),
        "runs": per_run,
        "failed_runs": [{"round": r["round"], "error": r.get("error")} for r in runs if not r.get("ok")],
    }
    gc_runs = [p for p in per_run if p["detail_s"].get("update_gc_collect")]
    if gc_runs:
        # what TRL would do without its two per-step gc.collect() calls: shows how much of the
        # gap is that one habit (a counterfactual, not a measurement of a run)
        ex = [p["episodes_per_s"] * p["step_s"] / (p["step_s"] - p["detail_s"]["update_gc_collect"]) for p in gc_runs]
        out["episodes_per_s_excluding_gc_collect"] = summarize(ex)
        for p, x in zip(gc_runs, ex):
            p["episodes_per_s_excluding_gc_collect"] = x
    for p in per_run:  # the same counterfactual in CPU time
        gc_cpu = p["detail_cpu_s"].get("update_gc_collect")
        if p["cpu_step_s"] and gc_cpu is not None:
            p["episodes_per_cpu_s_excluding_gc_collect"] = p["episodes_per_cpu_s"] * p["cpu_step_s"] / (p["cpu_step_s"] - gc_cpu)
    cpu_runs = [p["episodes_per_cpu_s"] for p in per_run if p["episodes_per_cpu_s"]]
    out["episodes_per_cpu_s"] = summarize(cpu_runs)["median"] if cpu_runs else None
    with_mfu = [p for p in per_run if "mfu" in p]
    if with_mfu:
        out["mfu"] = {ph: summarize([p["mfu"].get(ph) for p in with_mfu])["median"] for ph in MFU_PHASES}
        out["flops_per_s"] = {ph: summarize([p["flops_per_s"].get(ph) for p in with_mfu])["median"] for ph in MFU_PHASES}
        out["generate_bandwidth_fraction"] = summarize([p.get("generate_bandwidth_fraction") for p in with_mfu])["median"]
        out["generate_bytes_per_s"] = summarize([p.get("generate_bytes_per_s") for p in with_mfu])["median"]
    # the rollout engine's start-up, not in the throughput (None where no run reported one)
    starts = [p["startup_s"] for p in per_run if p.get("startup_s") is not None]
    out["startup_s"] = summarize(starts)["median"]
    out["startup_s_stats"] = summarize(starts)
    # process start to the first step (imports, models, engines): what a run pays before training
    out["setup_s"] = summarize([p.get("setup_s") for p in per_run])["median"]
    if ok:
        res = ok[0]["result"]
        out["settings"] = res.get("settings")
        for key in ("optimizer_steps_per_ppo_step",):
            if key in res:
                out[key] = res[key]
    return out


def build_results(runs: list[dict], warmup: int, machine: dict, meta: dict, command: str,
                  roofline: dict | None = None) -> dict:
    """The results document: one summary per variant, paired ratios against TRL per round; with
    `roofline` (round -> benchmarks/roofline.py's probe before it), utilisation per phase."""
    res = {"command": command, "machine": machine, "size": meta["size"], "preset": meta["preset"],
           "n_params": meta.get("n_params"), "warmup_steps": warmup}
    if roofline:
        res["roofline"] = {"per_round": {str(k): v for k, v in sorted(roofline.items())},
                           "matmul_flops_per_s": summarize([v["matmul"]["flops_per_s"] for v in roofline.values()]),
                           "memory_bytes_per_s": summarize([v["memory"]["bytes_per_s"] for v in roofline.values()])}
    # every default variant (the contract's keys, None where it did not run); an opt-in one only if it ran
    shown = [v for v in VARIANTS if v in DEFAULT_VARIANTS or any(r["variant"] == v for r in runs)]
    for v in shown:
        res[v] = variant_summary([r for r in runs if r["variant"] == v], warmup, roofline)
    per_round = {v: {p["round"]: p["episodes_per_s"] for p in res[v]["runs"]} for v in shown}
    ratios = {}
    for v in shown:
        if v == "trl":
            continue
        rr = paired_ratios(per_round[v], per_round["trl"])
        ratios[f"{v}_vs_trl"] = {"per_round": rr, **summarize(rr)}
        res[v]["ratio_vs_trl"] = ratios[f"{v}_vs_trl"]["median"]
    va = paired_ratios(per_round["varpo_variance_aware"], per_round["varpo_vanilla"])
    ratios["variance_aware_vs_vanilla"] = {"per_round": va, **summarize(va)}
    if "varpo_shared_trunk" in shown:
        st = paired_ratios(per_round["varpo_shared_trunk"], per_round["varpo_vanilla"])
        ratios["shared_trunk_vs_vanilla"] = {"per_round": st, **summarize(st)}
    if "varpo_vllm" in shown:
        vv = paired_ratios(per_round["varpo_vllm"], per_round["varpo_vanilla"])
        ratios["vllm_vs_vanilla"] = {"per_round": vv, **summarize(vv)}
        res["varpo_vllm"]["breakeven_steps"] = breakeven_steps(res["varpo_vllm"]["runs"], res["varpo_vanilla"]["runs"])
    ex = {p["round"]: p.get("episodes_per_s_excluding_gc_collect") for p in res["trl"]["runs"]}
    ex = {r: x for r, x in ex.items() if x is not None}
    if ex:
        rr = paired_ratios(per_round["varpo_vanilla"], ex)
        ratios["varpo_vanilla_vs_trl_excluding_gc_collect"] = {"per_round": rr, **summarize(rr)}
    # the same pairings in throughput per process CPU second (robust on a shared machine)
    cpu_round = {v: {p["round"]: p["episodes_per_cpu_s"] for p in res[v]["runs"] if p.get("episodes_per_cpu_s")}
                 for v in VARIANTS if v in res}
    for name, num, den in (("varpo_vanilla_vs_trl", "varpo_vanilla", "trl"),
                           ("varpo_variance_aware_vs_trl", "varpo_variance_aware", "trl"),
                           ("variance_aware_vs_vanilla", "varpo_variance_aware", "varpo_vanilla"),
                           *((f"{v}_vs_vanilla", v, "varpo_vanilla") for v in VARIANTS
                             if v in res and v not in ("trl", "varpo_vanilla", "varpo_variance_aware"))):
        rr = paired_ratios(cpu_round.get(num, {}), cpu_round.get(den, {}))
        if rr:
            ratios[f"{name}_cpu_time"] = {"per_round": rr, **summarize(rr)}
    ex_cpu = {p["round"]: p.get("episodes_per_cpu_s_excluding_gc_collect") for p in res["trl"]["runs"]}
    ex_cpu = {r: x for r, x in ex_cpu.items() if x is not None}
    if ex_cpu:
        rr = paired_ratios(cpu_round.get("varpo_vanilla", {}), ex_cpu)
        ratios["varpo_vanilla_vs_trl_excluding_gc_collect_cpu_time"] = {"per_round": rr, **summarize(rr)}
    res["ratios"] = ratios
    res["position_effect"] = position_effect(res, shown)
    return add_headline(res)


def breakeven_steps(vllm_runs: list[dict], hf_runs: list[dict]) -> dict:
    """After how many steps vLLM's start-up has paid for itself: per round, the extra seconds before
    its first step / (HF step seconds − vLLM step seconds) against varpo_vanilla (HF rollouts, no
    engine to start) in the same round. The extra seconds are setup_s (process start to the first
    step) minus varpo_vanilla's where both runs recorded it, else the engine's startup_s (vLLM's
    import and engine). None for a round where vLLM's steps were not faster (never)."""
    hf = {p["round"]: p for p in hf_runs}
    per_round, cost = [], []
    for p in vllm_runs:
        h = hf.get(p["round"])
        if h is None or p.get("startup_s") is None:
            continue
        extra = p["setup_s"] - h["setup_s"] if p.get("setup_s") is not None and h.get("setup_s") is not None \
            else p["startup_s"]
        saved = h["step_s"] - p["step_s"]
        cost.append(extra)
        per_round.append(extra / saved if saved > 0 else None)
    finite = [x for x in per_round if x is not None]
    return {"per_round": per_round, **summarize(finite), "never": len(per_round) - len(finite),
            "extra_setup_s_per_round": cost}


def position_effect(res: dict, variants: list[str]) -> dict:
    """Per position within a round (0 = first run): the median over runs of a run's throughput
    divided by its variant's median throughput. With a rotating order every variant visits every
    position, so a value away from 1 is the order effect itself, not one variant's speed."""
    rel = {}
    for v in variants:
        med = res[v]["episodes_per_s"]
        for p in res[v]["runs"]:
            if med and p.get("position") is not None:
                rel.setdefault(p["position"], []).append(p["episodes_per_s"] / med)
    return {str(k): summarize(rel[k]) for k in sorted(rel)}


def add_headline(res: dict) -> dict:
    """The contract's top-level figures: ratio_vs_trl (median paired varpo_vanilla / trl),
    ratio_vs_trl_excluding_gc_collect (the same against TRL minus its per-step gc.collect time),
    variance_aware_vs_vanilla, and per variant `peak_memory_mb` (median peak RSS of its runs)."""
    ratios = res["ratios"]
    res["ratio_vs_trl"] = ratios["varpo_vanilla_vs_trl"]["median"]
    res["ratio_vs_trl_excluding_gc_collect"] = ratios.get("varpo_vanilla_vs_trl_excluding_gc_collect", {}).get("median")
    res["variance_aware_vs_vanilla"] = ratios["variance_aware_vs_vanilla"]["median"]
    # the same three in process CPU time (None for runs recorded before it was measured)
    for key, r in (("ratio_vs_trl_cpu_time", "varpo_vanilla_vs_trl_cpu_time"),
                   ("ratio_vs_trl_excluding_gc_collect_cpu_time", "varpo_vanilla_vs_trl_excluding_gc_collect_cpu_time"),
                   ("variance_aware_vs_vanilla_cpu_time", "variance_aware_vs_vanilla_cpu_time")):
        res[key] = ratios.get(r, {}).get("median")
    if "shared_trunk_vs_vanilla" in ratios:
        res["shared_trunk_vs_vanilla"] = ratios["shared_trunk_vs_vanilla"]["median"]
    for v in VARIANTS:
        if v in res:
            res[v]["peak_memory_mb"] = res[v]["peak_rss_mb"]["median"]
    return res


def validate_results(res: dict) -> None:
    """The external contract: these keys must be present (a value may be None if a side failed)."""
    missing = [k for k in REQUIRED_KEYS if k not in res]
    for v in ("trl", "varpo_vanilla", "varpo_variance_aware"):
        for k in ("episodes_per_s", "peak_memory_mb"):
            if v in res and k not in res[v]:
                missing.append(f"{v}.{k}")
    for k in ("cpu_model", "cores", "torch", "trl"):
        if "machine" in res and k not in res["machine"]:
            missing.append(f"machine.{k}")
    # issue 26's contract, per variant that ran: its paired ratio against TRL, its utilisation per
    # phase wherever the peaks were probed, and vLLM's start-up kept apart from its throughput
    for v in _shown(res):
        if not isinstance(res[v], dict) or res[v].get("episodes_per_s") is None:
            continue
        if v != "trl" and "ratio_vs_trl" not in res[v]:
            missing.append(f"{v}.ratio_vs_trl")
        if res.get("roofline") and res["roofline"]["matmul_flops_per_s"]["median"]:
            missing += [f"{v}.mfu.{ph}" for ph in MFU_PHASES if ph not in (res[v].get("mfu") or {})]
        if VARIANTS[v].get("backend") == "vllm":
            missing += [f"{v}.{k}" for k in ("startup_s", "breakeven_steps") if k not in res[v]]
    if missing:
        raise ValueError(f"results.json is missing {missing}")


# ---------------------------------------------------------------------------------------- reporting
def _fmt(x, spec=".3g"):
    return "—" if x is None else format(x, spec)


def _shown(res: dict) -> list[str]:
    """The variants the results document holds, in VARIANTS order."""
    return [v for v in VARIANTS if v in res]


def results_markdown(res: dict) -> str:
    m, p = res["machine"], res["preset"]
    lines = [
        "# PPO throughput: varpo vs TRL 1.12.0 PPOTrainer", "",
        f"Command: `{res['command']}`", "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores ({m['usable_cores']} usable), torch {m['torch']}, "
        f"transformers {m.get('transformers')}, deepspeed {m.get('deepspeed')}, trl {m['trl']}, "
        f"python {m['python']}, device {m['device']}, {m['threads']} torch thread(s) per run. "
        f"Load average before/after: {m.get('loadavg_before')} / {m.get('loadavg_after')}, 1-min load at run starts "
        f"{m.get('loadavg1_at_run_starts')}; cores kept busy by other processes during each run "
        f"{m.get('foreign_cores_per_run')}"
        + (" — **the machine was shared with other jobs: absolute figures are noisy; paired ratios are the "
           "robust figure.**" if m.get("shared_machine") else ""), "",
        f"Workload (`{res['size']}`, {res.get('n_params')} parameters per model): batch {p['batch_size']}, "
        f"minibatch {p['mini_batch_size']}, {p['ppo_epochs']} PPO epochs, prompts {p['prompt_len']} tokens, "
        f"responses exactly {p['response_len']} tokens, k1 KL, sampling T=1 top_k 0 top_p 1; "
        f"{res['warmup_steps']} warm-up step(s) dropped per run.", "",
        "| variant | episodes/s min / **median** / max | tokens/s median | s/step | peak RSS MB (median) | runs ok |",
        "|---|---|---|---|---|---|",
    ]
    for v in _shown(res):
        s = res[v]
        e = s["episodes_per_s_stats"]
        lines.append(f"| {v} | {_fmt(e['min'])} / **{_fmt(e['median'])}** / {_fmt(e['max'])} | "
                     f"{_fmt(s['tokens_per_s'])} | {_fmt(s['step_s'])} | {_fmt(s['peak_rss_mb']['median'], '.0f')} | "
                     f"{e['n']} of {e['n'] + len(s['failed_runs'])} |")
    lines += ["", "Paired ratios (same round), episodes/s:", "",
              "| ratio | per round | min / **median** / max |", "|---|---|---|"]
    for k, r in res["ratios"].items():
        lines.append(f"| {k} | {', '.join(format(x, '.3f') for x in r['per_round']) or '—'} | "
                     f"{_fmt(r['min'])} / **{_fmt(r['median'])}** / {_fmt(r['max'])} |")
    lines += ["", f"**ratio_vs_trl** (median varpo_vanilla / trl): {_fmt(res['ratio_vs_trl'])}; "
              f"**ratio_vs_trl_excluding_gc_collect**: {_fmt(res.get('ratio_vs_trl_excluding_gc_collect'))}; "
              f"variance-aware / vanilla: {_fmt(res.get('variance_aware_vs_vanilla'))}"
              + (f"; shared-trunk / vanilla: {_fmt(res['shared_trunk_vs_vanilla'])}" if "shared_trunk_vs_vanilla" in res
                 else ""), "",
              f"In process CPU time (episodes per CPU second of each run's own process, which other jobs on "
              f"the machine barely move): **ratio_vs_trl_cpu_time** {_fmt(res.get('ratio_vs_trl_cpu_time'))}; "
              f"**ratio_vs_trl_excluding_gc_collect_cpu_time** {_fmt(res.get('ratio_vs_trl_excluding_gc_collect_cpu_time'))}; "
              f"variance-aware / vanilla {_fmt(res.get('variance_aware_vs_vanilla_cpu_time'))}. "
              "Episodes per CPU second, median: "
              + ", ".join(f"{v} {_fmt(res[v].get('episodes_per_cpu_s'))}" for v in _shown(res)), ""]
    if res.get("position_effect"):
        lines += ["Order effect: a run's throughput / its variant's median, by position in the round "
                  "(median over runs): " + ", ".join(f"position {k}: {_fmt(e['median'])} (n={e['n']})"
                                                     for k, e in res["position_effect"].items()), ""]
    lines += ["Per-step phase seconds (median over runs):", "",
              "| variant | " + " | ".join(PHASES) + " |", "|---|" + "---|" * len(PHASES)]
    for v in _shown(res):
        lines.append(f"| {v} | " + " | ".join(_fmt(res[v]["phases_s"][ph]) for ph in PHASES) + " |")
    for v in _shown(res):
        for k, x in res[v].get("detail_s", {}).items():
            lines.append(f"\n{v}: of which {k} {_fmt(x)} s per step")
    lines += ["", "Phase definitions: see `notes` in results.json.", ""]
    roof = res.get("roofline")
    if roof and roof["matmul_flops_per_s"]["median"]:
        probe = next(iter(roof["per_round"].values()))
        lines += [f"Model FLOPs utilisation per phase (median over runs), against this machine's measured "
                  f"matrix-product peak {_fmt(roof['matmul_flops_per_s']['median'] / 1e9)} GFLOP/s "
                  f"({probe['matmul']['dtype']}, {probe['matmul']['threads']} thread(s), {probe['matmul']['device']}; "
                  f"median of the probes before each round) and copy bandwidth "
                  f"{_fmt(roof['memory_bytes_per_s']['median'] / 1e9)} GB/s:", "",
                  "| variant | " + " | ".join(f"{ph} MFU (GFLOP/s)" for ph in MFU_PHASES) + " | generate bytes/s of bandwidth |",
                  "|---|" + "---|" * (len(MFU_PHASES) + 1)]
        for v in _shown(res):
            mfu, rate = res[v].get("mfu"), res[v].get("flops_per_s")
            if not mfu:
                continue
            cells = [f"{_fmt(mfu[ph], '.1%') if mfu[ph] is not None else '—'} ({_fmt(rate[ph] / 1e9 if rate[ph] else None)})"
                     for ph in MFU_PHASES]
            bw = res[v].get("generate_bandwidth_fraction")
            lines.append(f"| {v} | " + " | ".join(cells) + f" | {_fmt(bw, '.1%') if bw is not None else '—'} |")
        lines.append("")
    if "varpo_vllm" in res and res["varpo_vllm"].get("startup_s") is not None:
        st, be = res["varpo_vllm"]["startup_s_stats"], res["varpo_vllm"].get("breakeven_steps", {})
        parts = [p["startup_parts_s"] for p in res["varpo_vllm"]["runs"] if p.get("startup_parts_s")]
        split = (f"; of which importing vLLM {_fmt(summarize([x.get('import_s') for x in parts])['median'])} s, building "
                 f"the engine {_fmt(summarize([x.get('engine_s') for x in parts])['median'])} s" if parts else "")
        extra = be.get("extra_setup_s_per_round") or []
        lines += [f"varpo_vllm: start-up **{_fmt(st['median'])} s** (min {_fmt(st['min'])}, max {_fmt(st['max'])}{split}; "
                  f"not in the steady-state throughput); process start to first step {_fmt(res['varpo_vllm'].get('setup_s'))} s "
                  f"against varpo_vanilla's {_fmt(res['varpo_vanilla'].get('setup_s'))} s (extra per round: "
                  f"{', '.join(format(x, '.0f') for x in extra) or '—'} s); "
                  f"paid for by its faster steps after **{_fmt(be.get('median'))}** "
                  f"steps (median over rounds against varpo_vanilla; per round "
                  f"{', '.join('never' if x is None else format(x, '.1f') for x in be.get('per_round', [])) or '—'}); "
                  f"vLLM / HF rollouts, paired: {_fmt(res['ratios'].get('vllm_vs_vanilla', {}).get('median'))}", ""]
    for v in _shown(res):
        for f in res[v]["failed_runs"]:
            lines.append(f"- {v} round {f['round']}: not run or failed: {str(f['error'])[-300:]}")
    if res.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v for v in _shown(res) if res[v]["episodes_per_s"] is not None]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    med = [res[v]["episodes_per_s"] for v in names]
    lo = [med[i] - res[v]["episodes_per_s_stats"]["min"] for i, v in enumerate(names)]
    hi = [res[v]["episodes_per_s_stats"]["max"] - med[i] for i, v in enumerate(names)]
    colors = ["#999999" if v == "trl" else "#2a6fbb" for v in names]
    a1.bar(names, med, yerr=[lo, hi], capsize=5, color=colors)
    a1.set_ylabel("episodes / s (median, min–max)")
    a1.set_title(f"PPO throughput ({res['size']}, ratio_vs_trl {_fmt(res['ratio_vs_trl'])})")
    a1.tick_params(axis="x", rotation=20)
    bottom = [0.0] * len(names)
    for ph in PHASES:
        vals = [res[v]["phases_s"][ph] or 0.0 for v in names]
        a2.bar(names, vals, bottom=bottom, label=ph)
        bottom = [b + x for b, x in zip(bottom, vals)]
    a2.set_ylabel("seconds per PPO step (median)")
    a2.set_title("where the time goes")
    a2.legend(fontsize=8)
    a2.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- environment
def machine_info(device: str, threads: int, trl_version: str | None, loadavg_before: list[float]) -> dict:
    """host.machine() plus this benchmark's own: TRL's version, the torch threads of each child run
    (`threads`; the parent's own count is `torch_threads`) and the load average before the runs."""
    return machine(device, trl=trl_version, threads=threads, loadavg_before=loadavg_before)


def ensure_trl_env(venv: Path, log=print) -> Path:
    """The isolated TRL environment: a venv that sees the project's packages (torch, transformers,
    accelerate, datasets) but installs TRL into itself only, under constraints pinning the
    project's versions, so the project's own environment is never changed. Idempotent: a marker
    file records what was verified; delete the venv to rebuild it."""
    import importlib.metadata as md

    py = venv / "bin" / "python"
    marker = venv / ".varpo-bench-trl.json"
    pins = {name: md.version(name) for name in ("torch", "transformers", "accelerate", "datasets")}
    want = {"trl": TRL_VERSION, **pins}
    if marker.exists() and py.exists():
        try:
            if json.loads(marker.read_text()) == want:
                return py
        except json.JSONDecodeError:
            pass
    if not py.exists():
        log(f"creating the TRL environment {venv} (system site packages visible, installs stay inside)")
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text("".join(f"{k}=={v}\n" for k, v in pins.items()))
    log(f"installing trl=={TRL_VERSION} into {venv} with {pins} pinned")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(constraints), f"trl=={TRL_VERSION}"], check=True)
    probe = subprocess.run(
        [str(py), "-c", "import json, torch, transformers, accelerate, datasets, trl;"
         "from trl.experimental.ppo import PPOTrainer;"
         "print(json.dumps({'trl': trl.__version__, 'torch': torch.__version__, 'transformers': transformers.__version__,"
         "'accelerate': accelerate.__version__, 'datasets': datasets.__version__}))"],
        capture_output=True, text=True)
    if probe.returncode:
        raise RuntimeError(f"the TRL environment {venv} does not import trl.experimental.ppo:\n{probe.stderr[-2000:]}")
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    got_norm = {k: got[k].split("+")[0] for k in got}
    want_norm = {k: v.split("+")[0] for k, v in want.items()}
    if got_norm != want_norm:
        raise RuntimeError(f"the TRL environment {venv} resolved {got}, expected {want}; delete it and retry")
    marker.write_text(json.dumps(want))
    return py


def vllm_python(venv: Path) -> Path:
    """The vLLM environment's interpreter, checked to import vLLM and this varpo."""
    py = venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"--variants varpo_vllm: no vLLM environment at {venv} (build it with "
                         "`bash scripts/setup_vllm_env.sh`, or point --vllm-venv / VARPO_VLLM_VENV at one)")
    probe = subprocess.run([str(py), "-c", "import vllm, varpo; print(vllm.__version__, varpo.__file__)"],
                           capture_output=True, text=True)
    if probe.returncode:
        raise SystemExit(f"--variants varpo_vllm: {py} does not import vllm and varpo:\n{probe.stderr[-1500:]}")
    here = str(HERE.parent / "varpo")
    if here not in probe.stdout:
        raise SystemExit(f"--variants varpo_vllm: {py} imports another varpo ({probe.stdout.strip()}), not {here}")
    return py


def run_probe(env: dict, device: str, threads: int, dtype: str = "float32") -> dict | None:
    """benchmarks/roofline.py in a child with the runs' environment (thread count, device)."""
    cmd = [sys.executable, str(HERE / "roofline.py"), "--dtype", dtype, "--device", device, "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        print(f"         roofline probe failed: {proc.stderr[-500:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def trl_step_flops(meta: dict) -> dict:
    """The useful matrix-product FLOPs of one TRL step on this workload, counted as varpo's own steps
    are (varpo.ppo.phase_flops): every response exactly response_len tokens after a prompt_len-token
    prompt; old log-probs read off generation (no actor forward at rollout); a value model of the
    policy's shape."""
    import torch
    from transformers import AutoConfig

    from varpo.models.flops import ModelShape
    from varpo.ppo.experience import Experience
    from varpo.ppo.phase_flops import RoleShapes, phase_flops

    p = meta["preset"]
    shape = ModelShape.from_config(AutoConfig.from_pretrained(meta["policy_path"]))
    B, P, T = p["batch_size"], p["prompt_len"], p["response_len"]
    ones = torch.ones
    exp = Experience(ones(B, P, dtype=torch.long), ones(B, P, dtype=torch.long), ones(B, T, dtype=torch.long),
                     ones(B, T, dtype=torch.long), torch.zeros(B, dtype=torch.bool))
    return phase_flops(RoleShapes(shape, shape, shape), exp, ppo_epochs=p["ppo_epochs"], actor_forward_at_rollout=False)


# ---------------------------------------------------------------------------------------- varpo side
def build_ensemble(policy_path: str, heads: int, out: Path, seed: int) -> Path:
    """A K-head reward ensemble on the policy's backbone weights (untrained heads: throughput
    does not depend on their values), saved where `reward.path` will point."""
    from transformers import AutoTokenizer

    from varpo.reward import EnsembleRewardModel

    if (out / ".complete").exists():
        return out
    model = EnsembleRewardModel.from_backbone(policy_path, num_heads=heads, head_seed=seed)
    model.save_pretrained(out, tokenizer=AutoTokenizer.from_pretrained(policy_path))
    (out / ".complete").write_text("")
    return out


def varpo_overrides(meta: dict, variant: str, reward_path: str, steps: int, seed: int, lr: float, kl_coef: float) -> dict:
    """The VarpoConfig overrides that mirror the TRL run's settings (see trl_side.py)."""
    p, spec = meta["preset"], VARIANTS[variant]
    critic = spec.get("critic", "separate")
    over = {
        "seed": seed,
        "model.policy_path": meta["policy_path"], "model.critic_path": meta["policy_path"],
        "reward.type": "ensemble", "reward.path": reward_path, "reward.aggregation": "mean",
        # the whole batch in one reward forward (as TRL), no text truncated
        "reward.batch_size": p["batch_size"], "reward.max_length": p["prompt_len"] + p["response_len"] + 8,
        "data.prompts_path": meta["prompts_path"],
        "ppo.steps": steps, "ppo.batch_size": p["batch_size"], "ppo.mini_batch_size": p["mini_batch_size"],
        "ppo.ppo_epochs": p["ppo_epochs"], "ppo.actor_lr": lr, "ppo.critic_lr": lr,
        "ppo.gamma": 1.0, "ppo.lam": 0.95, "ppo.clip_range": 0.2, "ppo.clip_range_value": 0.2, "ppo.vf_coef": 0.1,
        "ppo.entropy_coef": 0.0, "ppo.whiten_advantages": True, "ppo.whiten_rewards": False,
        "ppo.kl.estimator": "k1", "ppo.kl.beta": kl_coef, "ppo.kl.controller": "fixed",
        "ppo.variance.weighting": spec["weighting"], "ppo.checkpoint_every": 0,
        "generation.backend": spec.get("backend", "hf"), "generation.max_new_tokens": p["response_len"],
        "generation.min_new_tokens": p["response_len"], "generation.temperature": 1.0,
        "generation.top_k": 0, "generation.top_p": 1.0, "generation.max_prompt_len": p["prompt_len"] + 8,
        "deepspeed.zero_stage": 0, "model.critic": critic,
    }
    if critic == "shared_trunk":  # the value head on the actor's trunk: no critic backbone to load
        del over["model.critic_path"]
    return over


def override_strings(overrides: dict) -> list[str]:
    """`load_config` takes KEY=VALUE strings whose values are parsed as YAML; JSON is YAML, so
    json.dumps keeps every value's type (a path stays a string, 1e-5 a float)."""
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def varpo_run(argv: list[str]) -> int:
    """Child process: one timed varpo PPO run (called as `ppo_vs_trl.py _varpo_run ...`)."""
    import resource

    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--variant", required=True, choices=[v for v in VARIANTS if VARIANTS[v]["side"] == "varpo"])
    ap.add_argument("--reward-path", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--kl-coef", type=float, default=0.1)
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from varpo.config import load_config
    from varpo.outputs import read_jsonl
    from varpo.ppo import train_ppo
    from varpo.ppo.callbacks import TrainerCallback

    meta = json.loads((Path(a.inputs) / "inputs.json").read_text())
    cfg = load_config(None, override_strings(varpo_overrides(meta, a.variant, a.reward_path, a.steps, a.seed, a.lr, a.kl_coef)))
    run_dir = Path(a.out).with_suffix("")
    # step boundaries measured from outside the trainer's own timers, as for TRL: a step runs from
    # the end of the previous one (its logging included: varpo's loggers run before this callback)
    # to the end of its own
    class StepMarks(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []
            self.cpu_marks: list[float] = []  # process CPU seconds (all threads): barely moved by other jobs
            self.setup_s = self.startup_s = None
            self.parts: dict = {}

        def on_train_begin(self, trainer):
            self.setup_s = time.perf_counter() - t_start
            # the rollout engine's own start-up (vLLM: its engine; HF generate runs the actor: none)
            engine = trainer.rollout_engine
            self.startup_s = getattr(engine, "startup_s", 0.0)
            self.parts = {k: getattr(engine, k) for k in ("import_s", "engine_s") if hasattr(engine, k)}
            self.marks.append(time.perf_counter())
            self.cpu_marks.append(time.process_time())

        def on_step_end(self, metrics):
            self.marks.append(time.perf_counter())
            self.cpu_marks.append(time.process_time())

    timer = StepMarks()
    train_ppo(cfg, run_dir, callbacks=[timer])
    marks = timer.marks
    rows = read_jsonl(run_dir / "metrics.jsonl")
    if len(rows) != a.steps or len(marks) != a.steps + 1:
        raise RuntimeError(f"expected {a.steps} logged steps, got {len(rows)} rows and {len(marks) - 1} step marks")
    p = meta["preset"]
    steps = []
    for i, r in enumerate(rows):
        if r.get("skipped"):
            raise RuntimeError(f"varpo skipped step {i} (non-finite values): {r}")
        if abs(r["response_length"] - p["response_len"]) > 1e-9:
            raise RuntimeError(f"varpo generated {r['response_length']} tokens per response, expected {p['response_len']}")
        steps.append({"wall_s": marks[i + 1] - marks[i], "cpu_s": timer.cpu_marks[i + 1] - timer.cpu_marks[i],
                      "episodes": p["batch_size"],
                      "tokens": p["batch_size"] * p["response_len"],
                      "trainer_episodes_per_s": r["episodes_per_s"], "trainer_step_s": r["time/step"],
                      **{f"time/{k}": r[f"time/{k}"] for k in PHASES if f"time/{k}" in r},
                      # the work of each phase (varpo.ppo.phase_flops), for its utilisation
                      **{k: v for k, v in r.items() if k.startswith(("flops/", "bytes/"))}})
    import deepspeed
    import transformers

    result = {
        "side": "varpo", "variant": a.variant, "steps": steps, "setup_s": timer.setup_s, "startup_s": timer.startup_s,
        "startup_parts_s": timer.parts,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "deepspeed": deepspeed.__version__, "python": sys.version.split()[0]},
        "optimizer_steps_per_ppo_step": p["ppo_epochs"] * (p["batch_size"] // p["mini_batch_size"]),
        "settings": {"batch_size": p["batch_size"], "mini_batch_size": p["mini_batch_size"],
                     "ppo_epochs": p["ppo_epochs"], "response_len": p["response_len"], "prompt_len": p["prompt_len"],
                     "kl_estimator": "k1", "kl_coef": a.kl_coef, "lr": a.lr, "reward_heads": VARIANTS[a.variant]["heads"],
                     "variance_weighting": VARIANTS[a.variant]["weighting"],
                     "critic": VARIANTS[a.variant].get("critic", "separate"),
                     "generation_backend": VARIANTS[a.variant].get("backend", "hf")},
    }
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


# ---------------------------------------------------------------------------------------- driver
def child_env(device: str, threads: int) -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VARPO_NO_PROGRESS": "1",
                "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    if device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def foreign_env(env: dict) -> dict:
    """The environment for a child of another interpreter (the TRL or the vLLM environment): without
    this process's TORCH_EXTENSIONS_DIR, which its venv set for its own torch. Inherited, a vLLM child
    rebuilt DeepSpeed's CPU communication op into this venv's cache for its own torch paths (minutes of
    compiling in its start-up), and the next varpo run rebuilt it back; each venv sets its own."""
    return {k: v for k, v in env.items() if k != "TORCH_EXTENSIONS_DIR"}


def run_one(cmd: list[str], out_json: Path, env: dict, timeout: float) -> dict:
    """Run one child; its result JSON, or the reason it has none. stdout/stderr go to a log file.
    `foreign_cores`: the average number of cores other processes kept busy during the run (all
    busy CPU time minus the child's own), the direct measure of contention that a load average,
    which still carries the last minute's work, is not."""
    log = out_json.with_suffix(".log")
    watch = ForeignCpu()
    t0 = time.perf_counter()
    try:
        with open(log, "w") as f:
            f.write("$ " + shlex.join(cmd) + "\n")
            f.flush()
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    elapsed = time.perf_counter() - t0
    rec = {"process_s": elapsed, "log": str(log), "foreign_cores": watch.cores()}
    if rc == 0 and out_json.exists():
        return {"ok": True, "result": json.loads(out_json.read_text()), **rec}
    tail = log.read_text()[-3000:] if log.exists() else ""
    return {"ok": False, "error": f"exit {rc} after {elapsed:.0f}s; log {log}:\n{tail}", **rec}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_varpo_run":
        return varpo_run(argv[1:])
    if argv and argv[0] == "_resummarize":  # rewrite DIR/results.json and .md with the current headline keys
        out = Path(argv[1])
        res = add_headline(json.loads((out / "results.json").read_text()))
        validate_results(res)
        (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
        (out / "results.md").write_text(results_markdown(res))
        return 0
    ap = argparse.ArgumentParser(description="PPO throughput: varpo vs TRL 1.12.0 (see the module docstring)")
    ap.add_argument("--out", required=True, type=Path, help="results folder (results.json, results.md, throughput.png)")
    ap.add_argument("--quick", action="store_true", help=f"{MODES['quick']} (about 5 minutes on 2 cores)")
    ap.add_argument("--size", default="auto", choices=["auto", "tiny", "small", "gpt2-small"],
                    help="model/workload preset; auto: gpt2-small with CUDA, tiny otherwise")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds of (trl, varpo variants); default per mode (--size small: one per variant)")
    ap.add_argument("--steps", type=int, default=None, help="PPO steps per run; default per mode")
    ap.add_argument("--warmup", type=int, default=None, help="steps dropped at the start of each run")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma-separated, from {list(VARIANTS)} (trl must stay for ratios); default "
                         f"{','.join(DEFAULT_VARIANTS)}")
    ap.add_argument("--order", default="rotate", choices=["rotate", "fixed"],
                    help="variant order within a round: rotate by one place per round (default), or fixed")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 1 on CPU, all on GPU)")
    ap.add_argument("--work", type=Path, default=None, help="where shared inputs are built (default OUT/runs/work)")
    ap.add_argument("--trl-venv", type=Path, default=HERE / ".venv-trl")
    ap.add_argument("--vllm-venv", type=Path, default=Path(os.environ.get("VARPO_VLLM_VENV", HERE.parent / ".venv-vllm")),
                    help="the vLLM environment varpo_vllm runs in (bash scripts/setup_vllm_env.sh builds it; "
                         "default .venv-vllm in the repository or $VARPO_VLLM_VENV)")
    ap.add_argument("--no-roofline", action="store_true", help="skip the peak probes (no MFU figures)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before it is killed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-run-dirs", action="store_true", help="keep each run's trainer output folder")
    a = ap.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = a.size if a.size != "auto" else ("gpt2-small" if device == "cuda" else "tiny")
    mode = MODES["quick" if a.quick else "full"]
    rounds, steps, warmup = a.rounds or mode["rounds"], a.steps or mode["steps"], mode["warmup"] if a.warmup is None else a.warmup
    if steps <= warmup:
        ap.error(f"--steps ({steps}) must exceed the warm-up ({warmup})")
    # one thread on a CPU: the tiny models gain nothing from more, and on a shared machine extra
    # threads only add contention noise; both sides get the same count
    threads = a.threads or (1 if device == "cpu" else os.cpu_count())
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if a.rounds is None and size == "small" and not a.quick:
        # one full rotation (every variant in every position once): ~2 min per run on 2 cores, so the
        # default 4 variants take ~32 min, inside the 40 the contract allows; 5 rounds would not be
        rounds = max(3, len(variants))
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = (a.work or out / "runs" / "work").resolve()  # runs/ is gitignored: models stay out of git
    command = "python benchmarks/ppo_vs_trl.py " + shlex.join(argv)
    t_all = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]

    from bench_models import build_inputs

    trl_py = ensure_trl_env(a.trl_venv.resolve()) if "trl" in variants else None
    vllm_py = vllm_python(a.vllm_venv.resolve()) if "varpo_vllm" in variants else None
    meta = build_inputs(work, size, seed=a.seed)
    trl_flops = trl_step_flops(meta)
    reward_paths = {}
    for v in variants:
        if VARIANTS[v]["side"] == "varpo":
            k = VARIANTS[v]["heads"]
            reward_paths[v] = str(build_ensemble(meta["policy_path"], k, work / f"reward_k{k}", a.seed))

    env = child_env(device, threads)
    runs, roofline = [], {}
    runs_dir = out / "runs"
    runs_dir.mkdir(exist_ok=True)
    for r in range(rounds):
        if not a.no_roofline:  # this machine's peaks now, at the runs' thread count and dtype
            probe = run_probe(env, device, threads)
            if probe is not None:
                roofline[r] = probe
                print(f"[{time.perf_counter() - t_all:6.0f}s] peaks: {probe['matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s "
                      f"matmul, {probe['memory']['bytes_per_s'] / 1e9:.1f} GB/s copy", flush=True)
        for pos, v in enumerate(round_order(variants, r, a.order)):
            out_json = runs_dir / f"r{r}_{v}.json"
            out_json.unlink(missing_ok=True)
            common = ["--inputs", str(work), "--out", str(out_json), "--steps", str(steps),
                      "--threads", str(threads), "--seed", str(a.seed)]
            if v == "trl":
                cmd = [str(trl_py), str(HERE / "trl_side.py"), *common]
            else:
                py = vllm_py if VARIANTS[v].get("backend") == "vllm" else sys.executable
                cmd = [str(py), str(Path(__file__).resolve()), "_varpo_run", "--variant", v,
                       "--reward-path", reward_paths[v], *common]
            print(f"[{time.perf_counter() - t_all:6.0f}s] round {r + 1}/{rounds}: {v}", flush=True)
            load1 = os.getloadavg()[0]
            rec = run_one(cmd, out_json, env if cmd[0] == sys.executable else foreign_env(env), a.timeout)
            rec.update(round=r, variant=v, position=pos, loadavg1_at_start=round(load1, 2))
            if rec["ok"] and v == "trl":  # TRL's steps did the same useful work as varpo's: counted alike
                for step in rec["result"]["steps"]:
                    step.update(trl_flops)
            if rec["ok"]:
                thr = run_throughput(rec["result"], warmup)
                print(f"         {thr['episodes_per_s']:.2f} episodes/s, {thr['step_s']:.2f} s/step, "
                      f"process {rec['process_s']:.0f}s", flush=True)
            else:
                print(f"         FAILED: {rec['error'][-600:]}", flush=True)
            runs.append(rec)
            if not a.keep_run_dirs:  # the trainers' own outputs (exported policy, tensorboard): large, unused
                shutil.rmtree(out_json.with_suffix(""), ignore_errors=True)

        write_results(runs, r + 1, rounds, variants, warmup, meta, command, device, threads, load_before, size, t_all, out,
                      roofline)
    res = json.loads((out / "results.json").read_text())
    print((out / "results.md").read_text())
    return 0 if all(res[v]["episodes_per_s"] is not None for v in variants) else 1


def write_results(runs, done, rounds, variants, warmup, meta, command, device, threads, load_before, size, t_all, out,
                  roofline=None):
    """results.json/.md/.png from the runs so far: rewritten after every round, so that a run cut
    short (a shared machine, a deadline) still leaves the paired rounds it completed."""
    trl_version = next((r["result"]["versions"]["trl"] for r in runs if r["ok"] and r["variant"] == "trl"), None)
    machine = machine_info(device, threads, trl_version, load_before)
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    during = [r["loadavg1_at_start"] for r in runs if "loadavg1_at_start" in r]
    machine["loadavg1_at_run_starts"] = during
    foreign = [r["foreign_cores"] for r in runs if r.get("foreign_cores") is not None]
    machine["foreign_cores_per_run"] = foreign
    machine["shared_machine"] = bool(any(x > SHARED_CORES for x in foreign)) if foreign else bool(
        any(x > threads + 0.5 for x in during))
    runs = list(runs)
    for v in DEFAULT_VARIANTS:
        if v not in variants:
            runs.append({"variant": v, "round": -1, "ok": False, "error": "not selected (--variants)"})
    res = build_results(runs, warmup, machine, meta, command, roofline)
    res["notes"] = NOTES + [f"the {size} preset ran on {device}"] + (
        [] if device == "cuda" else ["gpt2-small (--size gpt2-small) is meant for a GPU and was not run here"])
    res["rounds_completed"], res["rounds_planned"] = done, rounds
    res["wall_s"] = time.perf_counter() - t_all
    validate_results(res)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "results.md").write_text(results_markdown(res))
    plot(res, out / "throughput.png")


NOTES = [
    "Phases. varpo: generate (tokenize + HF generate, with the old log-probs read off its logits), score "
    "(decode + ensemble forward with the fused head statistics), reference (the reference forward and the fused "
    "shaping pass over its logits: ref log-probs, KL, σ²-weighting), value (critic forward; varpo_shared_trunk: a "
    "forward of the actor's trunk feeding the value head, its LM head at one position only), shape (reward shaping, "
    "GAE, whitening; results recorded before the trainer timed it apart count it in update), update (PPO epochs; "
    "varpo_shared_trunk: one forward and one optimizer step per minibatch for policy and value), as timed by the "
    "trainer; other = logging/tensorboard and the rest of the step.",
    "Phases. TRL, timed from outside by wrapping its module-level helpers in the runner process: generate "
    "(batch_generation; TRL reuses generate's scores as the old log-probs, so it has no separate actor "
    "forward), reference (forward of the reference model), value (get_reward on the value model), score "
    "(get_reward on the reward model); update = the rest of the step (log-softmax of the generation "
    "scores, rewards, GAE, PPO epochs, logging, TRL's two gc.collect() per step); shape is 0 (inside update) "
    "and other is 0 by construction.",
    "Optimizer steps: varpo takes one per minibatch (epochs x batch/minibatch per PPO step); TRL with "
    "num_mini_batches=batch/minibatch and gradient_accumulation_steps=batch/minibatch steps only on "
    "accumulation boundaries (counted: see trl runs' optimizer_steps). Forward/backward work is equal.",
    "TRL's per-step gc.collect() time is measured separately (detail_s.update_gc_collect, inside update); "
    "ratios.varpo_vanilla_vs_trl_excluding_gc_collect is the counterfactual ratio against TRL with that time "
    "removed, to show how much of the gap that one habit explains.",
    "Old log-probs: both read them off generate's logits, with no extra actor forward (varpo_vllm: vLLM's raw "
    "log-probs of the sampled tokens, also no actor forward; results before that change ran one). varpo turns each "
    "decoding step's logits into the sampled token's log-prob as soon as it is known (B x V held at a time); "
    "TRL stacks every step's scores (B x T x V floats held through the rollout: about 20 GB at a 152k vocabulary, "
    "B=64, T=512) and log-softmaxes them afterwards.",
    "Work TRL does that varpo does not: the LM head over the prompt positions in the reference forward and in "
    "every training forward (varpo keeps only the T positions that predict response tokens), copies of the "
    "sliced and temperature-divided logits, and a full softmax per minibatch for its entropy statistic.",
    "Peak memory is the RSS high-water mark of each run's process (getrusage), Python and library "
    "imports included (varpo also imports DeepSpeed).",
]


if __name__ == "__main__":
    raise SystemExit(main())
