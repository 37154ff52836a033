"""Crash safety, measured: kill -9 PPO runs at random moments, restart them, compare.

    python benchmarks/crash_resume.py --out DIR                 # the full run (about 20 min on 2 cores)
    python benchmarks/crash_resume.py --out DIR --trials 6 --steps 6 --long-steps 40   # a quick one

Each trial starts a variance-aware PPO run (tiny GPT-2 actor and critic, a 4-head reward ensemble,
adaptive KL, running-mean σ² weights, a checkpoint every 2 steps) and kills it with SIGKILL:
- `timed`:  1 rank, at a uniformly random moment of the run (start-up included);
- `save`:   1 rank, inside a checkpoint write: a random phase of a random save (the
            VARPO_FAULT_POINT hook of varpo.checkpoint sends the SIGKILL at that point);
- `rank`:   2 ranks under the `deepspeed` launcher, one random rank at a random moment;
- `rank_save`: 2 ranks under the launcher, one rank inside a checkpoint write;
- `bare`:   2 ranks started without a launcher (as on two nodes), one killed: only varpo's
            watchdog can stop the survivor, which must exit naming the lost rank.
Then the same command is rerun to the end. A trial resumed OK if the rerun finishes; its metrics
match if every non-timing metric of every step equals (==, bit for bit) the uninterrupted run's
with the same seed; lost steps are the steps done before the kill minus the step resumed from;
a rank still alive `--hang-bound` seconds after the kill is counted hung (then killed).

Finally a long 1-rank run (`--long-steps`, 300 by default) samples its resident memory (VmRSS)
every second: growth after warm-up (step 50, or a sixth of the run) and the ratio of the median
step time of the last 50 steps to that of steps 50–100 tell whether memory and speed stay flat.
The ratio is taken for the wall time (`time/step`) and for the process's own CPU time
(`time/step_cpu`, which other jobs on a shared machine barely move); the stated bound is 1.10.

Writes DIR/crash.json and DIR/crash.md."""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from varpo.outputs import without_timings

ROOT = Path(__file__).resolve().parents[1]

PHASES = ("engines_written", "state_written", "before_rename", "before_latest", "before_prune")
WORDS = "the a cat dog sat ran on under mat log good bad very quite happy sad day night is was".split()


# ------------------------------------------------------------------------------------ assets
def build_assets(folder: Path) -> dict:
    """A tiny GPT-2 policy with a word-level tokenizer, a 4-head reward ensemble on it, prompts."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from varpo.reward.model import EnsembleRewardModel

    folder.mkdir(parents=True, exist_ok=True)
    policy, reward, prompts = folder / "policy", folder / "reward", folder / "prompts.jsonl"
    if not (reward / "heads.safetensors").exists():
        vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *WORDS])}
        tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                      unk_token="<unk>")
        tok.save_pretrained(policy)
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=64, n_layer=2, n_head=2,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)).save_pretrained(policy)
        torch.manual_seed(5)
        EnsembleRewardModel.from_backbone(str(policy), 4).save_pretrained(reward, tokenizer=tok)
        g = random.Random(1)
        prompts.write_text("".join(json.dumps({"prompt": " ".join(g.choice(WORDS) for _ in range(g.randint(2, 6)))}) + "\n"
                                   for _ in range(64)))
    return {"policy": policy, "reward": reward, "prompts": prompts}


def overrides(assets: dict, steps: int, every: int, peer_timeout: float, rendezvous_timeout: float = 600.0) -> list[str]:
    return [
        f"model.policy_path={assets['policy']}", f"data.prompts_path={assets['prompts']}", "reward.type=ensemble",
        f"reward.path={assets['reward']}", f"ppo.steps={steps}", f"ppo.checkpoint_every={every}",
        "checkpoint.keep_last=2", "ppo.batch_size=8", "ppo.mini_batch_size=4", "ppo.ppo_epochs=2",
        "ppo.actor_lr=1e-3", "ppo.critic_lr=1e-3", "ppo.variance.weighting=running_mean", "ppo.kl.controller=adaptive",
        "generation.max_new_tokens=8", "generation.max_prompt_len=8", f"deepspeed.peer_timeout_s={peer_timeout}",
        f"deepspeed.rendezvous_timeout_s={rendezvous_timeout}", "seed=3",
    ]


# ------------------------------------------------------------------------------------ processes
def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", "VARPO_FAULT_POINT")}
    env.update(DS_ACCELERATOR="cpu", VARPO_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               COLUMNS="400")  # rich wraps console lines at the terminal width otherwise
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "kernels"), env.get("PYTHONPATH")) if p)
    return {**env, **(extra or {})}


class Run:
    """One PPO job: `n` ranks under the deepspeed launcher, or bare (one process per rank, no
    launcher), or a single process. Output goes to out/log_<k>.txt."""

    def __init__(self, out: Path, n: int, sets: list[str], mode: str, log: Path, fault: str | None = None):
        from varpo.dist import free_port

        self.out, self.n, self.mode, self.log = out, n, mode, log
        self.port = free_port()
        script = [str(ROOT / "launch" / "train_ppo.py"), "--out", str(out), *[x for s in sets for x in ("--set", s)]]
        extra = {"VARPO_FAULT_POINT": fault} if fault else {}
        self.fh = open(log, "w")
        self.t0 = time.monotonic()
        if n == 1:
            self.procs = [subprocess.Popen([sys.executable, *script], env=_env(extra), stdout=self.fh,
                                           stderr=subprocess.STDOUT, start_new_session=True)]
        elif mode == "launcher":
            cmd = ["deepspeed", "--num_nodes", "1", "--num_accelerators", str(n), "--master_port", str(self.port), *script]
            self.procs = [subprocess.Popen(cmd, env=_env(extra), stdout=self.fh, stderr=subprocess.STDOUT,
                                           start_new_session=True)]
        else:  # bare: what two nodes would run, each rank its own process, no common parent watching
            self.procs = [subprocess.Popen([sys.executable, *script], stdout=self.fh, stderr=subprocess.STDOUT,
                                           start_new_session=True, env=_env({
                                               **extra, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(n),
                                               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(self.port)}))
                          for r in range(n)]

    def rank_pids(self) -> dict[int, int]:
        """rank -> pid of the processes running a rank (found among the launcher's descendants)."""
        import psutil

        if self.n == 1 or self.mode == "bare":
            return {r: p.pid for r, p in enumerate(self.procs) if p.poll() is None}
        found = {}
        try:
            for c in psutil.Process(self.procs[0].pid).children(recursive=True):
                m = re.search(r"--local_rank=(\d+)", " ".join(c.cmdline()))
                if m and "train_ppo.py" in " ".join(c.cmdline()):
                    found[int(m.group(1))] = c.pid
        except psutil.Error:
            pass
        return found

    def alive(self) -> list[int]:
        import psutil

        pids = {p.pid for p in self.procs if p.poll() is None}
        for pid in list(pids):
            try:
                pids |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
            except psutil.Error:
                pass
        return sorted(pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)

    def wait(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(p.poll() is not None for p in self.procs) and not self.alive():
                return True
            time.sleep(0.25)
        return False

    def kill_all(self) -> None:
        for pid in self.alive():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs:
            p.wait()

    def close(self) -> str:
        self.fh.close()
        for seg in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{self.port}_*"):
            seg.unlink(missing_ok=True)  # a killed rank cannot remove its own
        return self.log.read_text(errors="replace")


def warm_ops(log: Path) -> None:
    """Build (or load) DeepSpeed's CPU communication op once, before anything is timed or killed:
    the first build takes minutes, which would stretch the reference run (whose duration sets the
    random kill moments) and widen the window in which a kill leaves a JIT lock behind."""
    code = ("from varpo.dist import import_deepspeed; import_deepspeed(); from varpo import jit_lock; "
            "from deepspeed.comm.torch import build_shm_op\nwith jit_lock.watch(): build_shm_op()")
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-c", code], env=_env(), stdout=fh, stderr=subprocess.STDOUT, check=True)


def rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    good = []
    for line in path.read_text().splitlines():
        try:
            good.append(json.loads(line))
        except ValueError:  # a row cut by the kill
            pass
    return good


def run_to_end(out: Path, n: int, sets: list[str], mode: str, log: Path, timeout: float) -> tuple[int | None, str, float]:
    t0 = time.monotonic()
    r = Run(out, n, sets, mode, log)
    ok = r.wait(timeout)
    if not ok:
        r.kill_all()
    text = r.close()
    codes = [p.returncode for p in r.procs]
    return (max(codes, key=abs) if ok else None), text, time.monotonic() - t0


# ------------------------------------------------------------------------------------ trials
def trial(k: int, kind: str, rng: random.Random, base: Path, sets: list[str], reference: dict, args) -> dict:
    n = 1 if kind in ("timed", "save") else 2
    mode = "bare" if kind == "bare" else "launcher"
    out = base / f"trial_{k:02d}_{kind}"
    res = {"trial": k, "kind": kind, "ranks": n}
    fault = None
    n_saves = args.steps // args.every
    if kind in ("save", "rank_save"):
        phase, nth = rng.choice(PHASES), rng.randint(1, max(1, n_saves - 1))
        on_rank = rng.randrange(n) if phase == "engines_written" else 0  # later phases run on rank 0 only
        fault = f"{phase}:{nth}" + (f"@{on_rank}" if n > 1 else "")
        res["fault"] = fault
    out.mkdir(parents=True)
    run = Run(out, n, sets, mode, base / f"{out.name}_killed.txt", fault)
    if fault is None:
        # a uniformly random moment of the run (its reference duration at this world size)
        delay = rng.uniform(0.05, 0.95) * reference[n]["seconds"]
        victim = rng.randrange(n)
        res["kill_after_s"] = round(delay, 2)
        while time.monotonic() - run.t0 < delay and all(p.poll() is None for p in run.procs):
            time.sleep(0.05)
        while all(p.poll() is None for p in run.procs):  # the ranks may not be started yet
            pids = run.rank_pids()
            if victim in pids:
                os.kill(pids[victim], signal.SIGKILL)
                res["killed_rank"] = victim
                break
            time.sleep(0.05)
    else:
        while all(p.poll() is None for p in run.procs):  # the hook kills its rank; the launcher follows
            time.sleep(0.05)
        res["killed_rank"] = int(fault.split("@")[1]) if "@" in fault else 0
    t_kill = time.monotonic()
    done_before = len(rows(out))
    finished = run.wait(args.hang_bound if "killed_rank" in res else args.run_timeout)
    res["survivors_exit_s"] = round(time.monotonic() - t_kill, 2) if finished else None
    res["hung_ranks"] = 0 if finished else len(run.alive())
    if not finished:
        run.kill_all()
    text = run.close()
    codes = [p.returncode for p in run.procs]
    res["killed_run_exit"] = codes
    res["killed_before_end"] = any(c not in (0, None) for c in codes)
    if n > 1 and "killed_rank" in res and res["killed_before_end"]:
        lost = res["killed_rank"]
        # by the watchdog, or (a rank killed before the process group existed) by the rendezvous
        res["lost_rank_named"] = f"rank {lost} of {n} is lost" in text or bool(re.search(
            rf"RendezvousError: .*(rank\(s\) {lost} did not reach|hosted by rank {lost}\))", text))
    res["steps_before_kill"] = done_before
    code, text, secs = run_to_end(out, n, sets, mode, out.parent / f"{out.name}_rerun.txt", args.run_timeout)
    m = re.search(r"resumed from\s+\S+\s+at\s+step\s+(\d+)", text)
    res["resumed_from_step"] = int(m.group(1)) if m else 0
    res["lost_steps"] = max(0, done_before - res["resumed_from_step"])
    got = [without_timings(r) for r in rows(out)]
    res["resumed_ok"] = code == 0 and [r["step"] for r in got] == list(range(args.steps))
    res["metrics_match"] = res["resumed_ok"] and got == reference[n]["rows"]
    if res["resumed_ok"] and not res["metrics_match"]:
        res["first_mismatch"] = next(
            (a["step"], k) for a, b in zip(got, reference[n]["rows"]) for k in a if a.get(k) != b.get(k))
    res["skipped_checkpoint_warnings"] = text.count("is skipped:")
    res["stale_jit_locks_removed"] = text.count("removed the stale DeepSpeed JIT lock")
    print(json.dumps(res), flush=True)
    return res


# ------------------------------------------------------------------------------------ long run
def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def long_run(base: Path, assets: dict, steps: int, peer_timeout: float, timeout: float) -> dict:
    out = base / "long"
    sets = overrides(assets, steps, 50, peer_timeout)
    run = Run(out, 1, sets, "launcher", base / "long_log.txt")
    samples = []  # (steps done, rss MB)
    while run.procs[0].poll() is None and time.monotonic() - run.t0 < timeout:
        r = rss_mb(run.procs[0].pid)
        if r is not None:
            samples.append((len(rows(out)), r))
        time.sleep(1.0)
    if run.procs[0].poll() is None:
        run.kill_all()
    run.close()
    got = rows(out)
    warm = min(50, steps // 6)
    at = {}
    for done, r in samples:
        at.setdefault(done, []).append(r)
    after = [statistics.median(v) for d, v in sorted(at.items()) if d >= warm]
    late_over_early = {}
    for key in ("time/step", "time/step_cpu"):  # wall time, and the process's own CPU time
        times = [r[key] for r in got if key in r]
        early, late = times[warm: warm + 50], times[-50:]
        if early and late and len(times) >= warm + 100:  # two windows that do not overlap
            late_over_early[key] = (statistics.median(early), statistics.median(late))
    ratio = {k: round(b / a, 3) for k, (a, b) in late_over_early.items()}
    return {
        "steps": len(got), "returncode": run.procs[0].returncode, "warmup_steps": warm,
        "rss_mb_at_warmup": round(after[0], 1) if after else None, "rss_mb_end": round(after[-1], 1) if after else None,
        "rss_mb_max_after_warmup": round(max(after), 1) if after else None,
        "rss_growth_mb": round(max(after) - after[0], 1) if after else None,
        **{f"{name}_s_{w}_median": round(v[i], 4) for k, v in late_over_early.items()
           for name in [k.split("/")[1]] for i, w in enumerate(("early", "late"))},
        "step_time_late_over_early": ratio.get("time/step"),
        "step_cpu_late_over_early": ratio.get("time/step_cpu"),
        "rss_trace": [(d, round(statistics.median(v), 1)) for d, v in sorted(at.items())],
    }


# ------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--trials", type=int, default=24,
                    help="kills (at least 20 for the full figure): trials run until this many killed a run "
                    "(at most twice as many trials)")
    ap.add_argument("--steps", type=int, default=8, help="PPO steps per trial run")
    ap.add_argument("--every", type=int, default=2, help="checkpoint every N steps")
    ap.add_argument("--long-steps", type=int, default=300, help="steps of the memory/step-time run (0: skip)")
    ap.add_argument("--rss-bound-mb", type=float, default=20.0, help="the stated bound on the long run's RSS growth")
    ap.add_argument("--step-time-bound", type=float, default=1.10,
                    help="the stated bound on the long run's median step time, last 50 steps / steps warm-up..+50")
    ap.add_argument("--kinds", default="timed,save,rank,rank_save,bare", help="trial kinds, drawn in turn")
    ap.add_argument("--peer-timeout", type=float, default=20.0, help="deepspeed.peer_timeout_s of the runs")
    ap.add_argument("--rendezvous-timeout", type=float, default=30.0,
                    help="deepspeed.rendezvous_timeout_s of the runs (a `bare` rank whose peer died before the "
                    "process group existed waits this long at the rendezvous)")
    ap.add_argument("--hang-bound", type=float, default=90.0, help="seconds after a kill before live ranks count as hung")
    ap.add_argument("--run-timeout", type=float, default=900.0)
    ap.add_argument("--extensions-dir", default=str(Path.home() / ".cache" / "varpo_crash_resume" / "torch_extensions"),
                    help="TORCH_EXTENSIONS_DIR of the runs ('' = the shared default). A folder of its own: a rank "
                    "killed while DeepSpeed builds or loads its op leaves a lock there (varpo.jit_lock removes it), "
                    "and other environments on the machine, which build the op with other flags, do not rebuild ours")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.extensions_dir:
        os.environ["TORCH_EXTENSIONS_DIR"] = args.extensions_dir  # the runs inherit it (_env)
    from host import ForeignCpu

    watch, t_start = ForeignCpu(), time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    assets = build_assets(args.out / "assets")
    sets = overrides(assets, args.steps, args.every, args.peer_timeout, args.rendezvous_timeout)
    kinds = args.kinds.split(",")
    warm_ops(args.out / "warm_ops.txt")
    reference = {}
    for n in sorted({1 if k in ("timed", "save") else 2 for k in kinds}):
        out = args.out / f"reference_{n}rank"
        code, text, secs = run_to_end(out, n, sets, "launcher", args.out / f"reference_{n}rank.txt", args.run_timeout)
        if code != 0:
            sys.exit(f"the uninterrupted {n}-rank run failed:\n{text[-3000:]}")
        reference[n] = {"rows": [without_timings(r) for r in rows(out)], "seconds": secs}
        print(f"reference {n} rank(s): {secs:.1f} s", flush=True)
    # the long run first: its memory figure matters even if the trials are cut short
    long = long_run(args.out, assets, args.long_steps, args.peer_timeout, args.run_timeout * 4) if args.long_steps else None
    rng = random.Random(args.seed)
    results: list[dict] = []
    write_report(args, results, reference, long, watch, t_start, complete=args.trials == 0)
    # a kill drawn at a random moment can fall after the run's end (it was faster than the
    # reference): that trial killed nothing, is kept in the report, and one more is run
    k = 0
    while sum(r["killed_before_end"] for r in results) < args.trials and k < 2 * args.trials:
        results.append(trial(k, kinds[k % len(kinds)], rng, args.out / "trials", sets, reference, args))
        k += 1
        done = sum(r["killed_before_end"] for r in results) >= args.trials or k == 2 * args.trials
        write_report(args, results, reference, long, watch, t_start, complete=done)
    print((args.out / "crash.md").read_text())


def write_report(args, results: list[dict], reference: dict, long: dict | None, watch, t_start: float,
                 complete: bool) -> dict:
    """crash.json and crash.md from the trials so far (rewritten after each: a cut run keeps them)."""
    from host import cpu_model, describe, machine

    killed = [r for r in results if r["killed_before_end"]]
    summary = {
        "complete": complete, "trials": len(results), "kills": len(killed),
        "resumed_ok": sum(r["resumed_ok"] for r in killed), "metrics_match": sum(r["metrics_match"] for r in killed),
        "max_lost_steps": max((r["lost_steps"] for r in killed), default=0),
        "hung_ranks": sum(r["hung_ranks"] for r in results),
        "kills_inside_checkpoint_writes": sum("fault" in r for r in killed),
        "kills_of_one_rank_of_two": sum(r["ranks"] == 2 for r in killed),
        "stale_jit_locks_removed": sum(r.get("stale_jit_locks_removed", 0) for r in results),
        "lost_rank_named": sum(bool(r.get("lost_rank_named")) for r in killed),
        "max_survivor_exit_s": max((r["survivors_exit_s"] or 0 for r in killed if r["ranks"] == 2), default=None),
        "checkpoint_every": args.every, "steps": args.steps, "peer_timeout_s": args.peer_timeout,
        "rendezvous_timeout_s": args.rendezvous_timeout,
        "hang_bound_s": args.hang_bound, "reference_seconds": {n: round(v["seconds"], 1) for n, v in reference.items()},
    }
    if long:
        summary["rss_growth_mb"] = long["rss_growth_mb"]
        summary["rss_bound_mb"] = args.rss_bound_mb
        summary["rss_within_bound"] = long["rss_growth_mb"] is not None and long["rss_growth_mb"] < args.rss_bound_mb
        summary["step_time_late_over_early"] = long["step_time_late_over_early"]
        summary["step_cpu_late_over_early"] = long["step_cpu_late_over_early"]
        summary["step_time_bound"] = args.step_time_bound
        for key in ("step_time", "step_cpu"):
            r = long[f"{key}_late_over_early"]
            summary[f"{key}_within_bound"] = r is not None and r <= args.step_time_bound
    cores = watch.cores()
    report = {**summary, "long_run": long, "per_trial": results, "command": " ".join(sys.argv),
              "machine": machine(other_processes_cores=cores, contention=describe(cores)), "wall_s": round(time.monotonic() - t_start, 1)}
    (args.out / "crash.json").write_text(json.dumps(report, indent=1))
    lines = ["# crash_resume", "", f"`{report['command']}` — {cpu_model()}, {os.cpu_count()} cores; {describe(cores)}; "
             f"{report['wall_s']:.0f} s", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    if long:
        lines += [f"| long run: {k} | {v} |" for k, v in long.items() if k != "rss_trace"]
    (args.out / "crash.md").write_text("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
