"""Helpers of benchmarks/multinode_localhost.sh that look at the two "nodes" from outside.

- `watch`: while a multi-node job runs, record every rank process started inside each node
  (its RANK, the variables that reached it, where it imported from) and the TCP connections the
  ranks hold between the nodes' addresses; writes one JSON when the job's runner exits.
- `kill-rank`: SIGKILL the process of one global rank inside one node (by its pid).
- `report`: compare the runs and write DIR/multinode.json.

A node is an ssh server in its own PID/mount/UTS namespaces; `--node-pid` is that server's pid
(the namespace's init) as this machine sees it, so a node's processes are its descendants."""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import psutil

# what a remote rank needs and only gets through .deepspeed_env / the launcher's exports
ENV_KEYS = ("DS_ACCELERATOR", "VARPO_CACHE", "VARPO_NO_PROGRESS", "OMP_NUM_THREADS", "PYTHONPATH", "PATH",
            "HF_HUB_OFFLINE", "VARPO_MULTINODE_RUN", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK",
            "CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE", "GLOO_SOCKET_IFNAME")
COMPARED = ("score_mean", "variance_mean", "weight_std", "kl_mean", "weighted_kl_mean", "policy_loss",
            "value_loss", "returns_mean", "entropy")
# tests/ppo/test_multirank.py's tolerance between world sizes
REL, ABS = 1e-4, 1e-6


def _rank_procs(node_pid: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(node_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if any(c.endswith("train_ppo.py") for c in cmd) and any(c.startswith("--local_rank") for c in cmd):
            out.append(p)
    return out


def _ip(addr) -> str:
    return addr.ip.removeprefix("::ffff:")  # the TCPStore listens dual-stack: IPv4 peers come IPv6-mapped


def _env(p: psutil.Process) -> dict:
    try:
        return p.environ()
    except psutil.Error:
        return {}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watch(args) -> None:
    """Per rank: node, pid, environment, the addresses it listens on (gloo binds the address its
    node's hostname resolves to) and its connections to the other node's address."""
    ranks: dict[str, dict] = {}
    while _alive(args.until_pid):
        for node, pid in enumerate(args.node_pid):
            others = {a for i, a in enumerate(args.addr) if i != node}
            for p in _rank_procs(pid):
                env = _env(p)
                if "RANK" not in env:
                    continue
                rec = ranks.setdefault(env["RANK"], {"node": node, "node_addr": args.addr[node], "pid": p.pid,
                                                     "env": {k: env.get(k) for k in ENV_KEYS}, "listen": [],
                                                     "to_other_node": []})
                try:
                    conns = p.net_connections(kind="tcp")
                except psutil.Error:
                    conns = []
                for c in conns:
                    if c.status == psutil.CONN_LISTEN:
                        rec["listen"] = sorted({*rec["listen"], f"{_ip(c.laddr)}:{c.laddr.port}"})
                    elif c.raddr and _ip(c.raddr) in others:
                        rec["to_other_node"] = sorted({*rec["to_other_node"], f"{_ip(c.laddr)} -> {_ip(c.raddr)}:{c.raddr.port}"})
        time.sleep(1)
    Path(args.out).write_text(json.dumps({"ranks": ranks}, indent=2))


def _rank_steps(metrics: Path | None) -> int:
    try:
        return len(metrics.read_text().splitlines()) if metrics else 0
    except OSError:
        return 0


def kill_rank(args) -> None:
    """SIGKILL the rank once it is really mid-run: its process exists in the node and the job has
    finished `--after-steps` steps (rows in `--metrics`). Waits for both, not for a fixed time, so a
    slow start on a loaded host kills the same moment of the run as on a quiet one; exits non-zero,
    saying which of the two never came, if the job ends first or `--timeout` passes."""
    deadline = time.monotonic() + args.timeout
    seen: list[str] = []
    while True:
        procs = _rank_procs(args.node_pid)
        seen = sorted({f"pid {p.pid} RANK={_env(p).get('RANK')}" for p in procs} | set(seen))
        target = [p for p in procs if _env(p).get("RANK") == str(args.rank)]
        steps = _rank_steps(args.metrics)
        if target and steps >= args.after_steps:
            os.kill(target[0].pid, signal.SIGKILL)
            print(target[0].pid)
            return
        ended = args.until_pid is not None and not _alive(args.until_pid)
        if ended or time.monotonic() > deadline:
            why = f"the job (runner pid {args.until_pid}) ended" if ended else f"{args.timeout:.0f} s passed"
            sys.exit(f"no process of rank {args.rank} to kill under node pid {args.node_pid}: {why} with "
                     f"{steps} of {args.after_steps} steps done and rank {args.rank} "
                     f"{'running' if target else 'not running'} (rank processes seen: {', '.join(seen) or 'none'})")
        time.sleep(0.5)


def node_leftovers(args) -> None:
    """Processes still alive inside the nodes other than their ssh servers."""
    left = []
    for pid in args.node_pid:
        try:
            left += [" ".join(p.cmdline())[:160] for p in psutil.Process(pid).children(recursive=True)
                     if "sshd" not in p.name()]
        except psutil.Error:
            pass
    print(json.dumps(left))


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def report(args) -> None:
    from varpo.checkpoint import name_of  # the checkpoint folders' names, as varpo writes them

    d = Path(args.dir)
    two, one, resumed = _rows(d / "two_nodes/metrics.jsonl"), _rows(d / "one_node/metrics.jsonl"), _rows(d / "resumed_one_rank/metrics.jsonl")
    diffs = {k: max((abs(a[k] - b[k]) for a, b in zip(two, one) if k in a and k in b), default=None) for k in COMPARED}
    match = (len(two) == len(one) > 0 and all(a["step"] == b["step"] for a, b in zip(two, one))
             and all(abs(a[k] - b[k]) <= ABS + REL * abs(b[k]) for a, b in zip(two, one) for k in COMPARED))
    steps = len(two)
    resume_log = (d / "logs/resume.log").read_text() if (d / "logs/resume.log").exists() else ""
    ckpt = d / "resumed_one_rank/checkpoints"
    universal = sorted(p.name for p in ckpt.glob("step_*/*_universal")) if ckpt.exists() else []
    resumed_ok = (
        [r["step"] for r in resumed] == [*range(steps + 1)]
        and [r["world_size"] for r in resumed] == [2] * steps + [1]
        and resumed[:steps] == two  # the 2-node rows kept as they were
        # the console wraps long lines anywhere, even inside the path: compare without whitespace
        and f"{name_of(steps)}atstep{steps}" in "".join(resume_log.split())
        and bool(universal) and (_load(ckpt / name_of(steps + 1) / "trainer_state.json") or {}).get("world_size") == 1
        and (d / "resumed_one_rank/policy/model.safetensors").exists()
    )
    last = sorted((d / "two_nodes/checkpoints").glob("step_*"))[-1:]
    shards = sorted(p.name for p in last[0].glob("actor/*")) if last else []
    probe = _load(d / "probe_two_nodes.json") or {}
    timing = _load(d / "timings.json") or {}
    out = {
        "max_abs_diff_score_mean": diffs["score_mean"],
        "max_abs_diff_kl_mean": diffs["kl_mean"],
        "resumed_on_one_rank": resumed_ok,
        "two_nodes_match_one_node": match,
        "tolerance": {"rel": REL, "abs": ABS, "keys": list(COMPARED)},
        "max_abs_diff": diffs,
        "steps_compared": steps,
        "world_sizes": {"two_nodes": sorted({r["world_size"] for r in two}), "one_node": sorted({r["world_size"] for r in one}),
                        "resumed_one_rank": [r["world_size"] for r in resumed]},
        "resume": {"universal_checkpoints": universal,
                   "log": re.findall(r"resumedfrom\S+atstep\d+", "".join(resume_log.split()))},
        "two_nodes_checkpoint_actor_files": shards,
        "ranks_seen": probe.get("ranks", {}),
        "ssh_session_env": _load(d / "ssh_session_env.json"),
        "preflight": _load(d / "preflight_ok.json"),
        "failures": {
            "unreachable_host_preflight": _load(d / "failure_unreachable_preflight.json"),
            "unreachable_host_deepspeed_alone": timing.get("unreachable_deepspeed_alone"),
            "rank_killed": timing.get("rank_killed"),
        },
        "seconds": {k: v for k, v in timing.items() if isinstance(v, (int, float))},
        "machine": _machine(mem_gib=round(psutil.virtual_memory().total / 2**30, 1)),
    }
    (d / "multinode.json").write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("max_abs_diff_score_mean", "max_abs_diff_kl_mean", "two_nodes_match_one_node",
                                          "resumed_on_one_rank")}))


def _machine(**extra) -> dict:
    from host import machine

    return machine(**extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("watch")
    w.add_argument("--node-pid", type=int, action="append", required=True)
    w.add_argument("--addr", action="append", required=True)
    w.add_argument("--until-pid", type=int, required=True)
    w.add_argument("--out", required=True)
    k = sub.add_parser("kill-rank")
    k.add_argument("--node-pid", type=int, required=True)
    k.add_argument("--rank", type=int, required=True)
    k.add_argument("--metrics", type=Path, default=None, help="the job's metrics.jsonl (rank 0 appends a row per step)")
    k.add_argument("--after-steps", type=int, default=0, help="kill once this many steps are done")
    k.add_argument("--until-pid", type=int, default=None, help="the job's runner: give up when it exits")
    k.add_argument("--timeout", type=float, default=1500.0, help="give up after this many seconds")
    n = sub.add_parser("leftovers")
    n.add_argument("--node-pid", type=int, action="append", required=True)
    r = sub.add_parser("report")
    r.add_argument("dir")
    args = ap.parse_args()
    {"watch": watch, "kill-rank": kill_rank, "leftovers": node_leftovers, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
