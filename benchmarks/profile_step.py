"""Where a varpo PPO step's time goes, on ppo_vs_trl.py's workload: the trainer's phase seconds per
step, the update split into its parts (actor forward, actor backward, actor optimizer step, critic
forward, backward, optimizer step; wall clock around each call, no profiler), and with --ops the
operators of one step's rollout phase and update (torch.profiler, self CPU time, by input shape).

    python benchmarks/profile_step.py --out DIR [--size small] [--variant varpo_vanilla] [--steps 6] [--ops]
    .venv-vllm/bin/python benchmarks/profile_step.py --variant varpo_vllm --out DIR   # vLLM rollouts

DIR/profile.json and DIR/profile.md (medians over the steps after the first); run it alone on the
machine (one torch thread, as ppo_vs_trl.py runs varpo)."""
from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

for k, v in {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "",
             "VARPO_NO_PROGRESS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}.items():
    os.environ.setdefault(k, v)

PARTS = ("actor_forward", "actor_backward", "actor_optimizer", "critic_forward", "critic_backward", "critic_optimizer")


def _timed_update_parts(parts: dict[str, float]):
    """Wrap the roles' calls in the update with wall-clock timers adding into `parts`."""
    import varpo.ppo.actor as actor_mod
    import varpo.ppo.critic as critic_mod

    def add(name, t0):
        parts[name] += time.perf_counter() - t0

    def timed_step(role):
        def step(self, loss):
            t0 = time.perf_counter()
            self.engine.backward(loss)
            add(f"{role}_backward", t0)
            t0 = time.perf_counter()
            self.engine.step()
            add(f"{role}_optimizer", t0)
        return step

    def timed(name, fn):
        def call(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            add(name, t0)
            return out
        return call

    actor_mod.Actor.step = timed_step("actor")
    critic_mod.SeparateCritic.step = timed_step("critic")
    actor_logprobs = actor_mod.CausalLMRole.logprobs
    critic_values = critic_mod.SeparateCritic.values
    return actor_logprobs, critic_values, timed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--variant", default="varpo_vanilla", choices=["varpo_vanilla", "varpo_variance_aware", "varpo_vllm"])
    ap.add_argument("--steps", type=int, default=6, help="PPO steps (the first is warm-up)")
    ap.add_argument("--ops", action="store_true", help="also torch.profiler tables of the last step's rollout and update")
    a = ap.parse_args(argv)
    if a.steps < 2:
        ap.error("--steps must be at least 2 (the first is warm-up)")

    import torch

    torch.set_num_threads(1)
    from bench_models import build_inputs
    from ppo_vs_trl import VARIANTS, build_ensemble, override_strings, varpo_overrides

    from varpo.config import load_config
    from varpo.ppo import train_ppo
    from varpo.ppo.experience_maker import ExperienceMaker
    from varpo.ppo.trainer import PPOTrainer

    out = a.out.resolve()
    work = out / "runs" / "work"
    meta = build_inputs(work, a.size)
    k = VARIANTS[a.variant]["heads"]
    reward = str(build_ensemble(meta["policy_path"], k, work / f"reward_k{k}", 0))
    cfg = load_config(None, override_strings(varpo_overrides(meta, a.variant, reward, a.steps, 0, 1e-5, 0.1)))

    parts: dict[str, float] = collections.defaultdict(float)
    actor_logprobs, critic_values, timed = _timed_update_parts(parts)
    import varpo.ppo.actor as actor_mod
    import varpo.ppo.critic as critic_mod

    actor_mod.CausalLMRole.logprobs = timed("actor_forward", actor_logprobs)  # the update's only caller with grad
    critic_mod.SeparateCritic.values = timed("critic_forward", critic_values)
    steps: list[dict] = []
    ops: dict[str, str] = {}
    last = a.steps
    update, make, train_step = PPOTrainer.update, ExperienceMaker.make, PPOTrainer.train_step

    def profiled(name, fn, *args):
        if not (a.ops and len(steps) + 1 == last):
            return fn(*args)
        with torch.profiler.profile(record_shapes=True) as prof:
            result = fn(*args)
        ops[name] = prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=48, max_shapes_column_width=70)
        return result

    def step(self):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        result = train_step(self)
        row = {k: v for k, v in self.timer.timings.items()}
        # pages the kernel mapped in during the step: large temporaries that arrive as untouched memory
        row["minor_page_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        # the rollout's forwards run under no_grad through the same logprobs method: keep the update's parts only
        row.update({f"update/{p}": parts.get(p, 0.0) for p in PARTS})
        steps.append(row)
        return result

    ExperienceMaker.make = lambda self, s: profiled("rollout", make, self, s)
    PPOTrainer.update = lambda self, exp: _update_parts(self, exp, update, parts, profiled)
    PPOTrainer.train_step = step
    train_ppo(cfg, out / "runs" / f"train_{a.variant}", overwrite=True)  # a rerun into the same --out measures again

    kept = steps[1:]
    keys = list(kept[0])
    res = {"command": "python benchmarks/profile_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "size": a.size, "variant": a.variant, "steps": steps,
           "median_s": {k: statistics.median(r[k] for r in kept) for k in keys},
           "threads": torch.get_num_threads(), "loadavg_end": [round(x, 2) for x in os.getloadavg()], "ops": ops,
           "commit": _commit()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "profile.md").write_text(_markdown(res))
    print(_markdown(res))
    return 0


def _commit() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        # results written beside it in the same session do not make the measured code dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                ":(top,exclude)benchmarks/results"], cwd=HERE,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) or "unknown"


def _update_parts(trainer, exp, update, parts, profiled):
    """The update with the parts' timers zeroed first (the rollout's no-grad forwards used them)."""
    for p in PARTS:
        parts[p] = 0.0
    return profiled("update", update, trainer, exp)


def _markdown(res: dict) -> str:
    m = res["median_s"]
    lines = [f"# Where a varpo step's time goes: {res['variant']}, `{res['size']}`", "",
             f"Command: `{res['command']}`; commit {res['commit']}; one torch thread; "
             f"load average at the end "
             f"{res['loadavg_end']}.", "",
             "| phase | s per step (median) |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in m.items() if not k.startswith("update/")]
    lines += ["", "The update, by part (wall clock around each call, summed over its minibatches):", "",
              "| part | s per step (median) |", "|---|---|"]
    lines += [f"| {k.split('/', 1)[1]} | {v:.3f} |" for k, v in m.items() if k.startswith("update/")]
    for name, table in res["ops"].items():
        lines += ["", f"Operators of the last step's {name} (torch.profiler, self CPU time):", "", "```", table, "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
