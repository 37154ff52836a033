"""Preflight for a multi-node launch: every host of a DeepSpeed hostfile must answer over ssh
within a bounded time and import varpo from the same folder as this host, with the environment
the launcher will export to it. Run it on the first host, from the repository root, before `deepspeed`:

    python launch/check_hosts.py --hostfile HOSTS && \\
        deepspeed --hostfile HOSTS launch/train_ppo.py --config CONFIG --out OUT

Why: DeepSpeed's runner (0.19) checks ssh to the *first* host only. Any other host that cannot be
reached shows up as a single pdsh line ("ssh exited with exit code 255") while the ranks that did
start wait for the rendezvous until `deepspeed.timeout_minutes` (30 by default) runs out.

The remote command is built the way DeepSpeed's pdsh runner builds it: the same ssh options
(PDSH_SSH_ARGS_APPEND, --ssh_port), the variables it exports (PYTHON* from this shell with the
current folder prepended to PYTHONPATH, then every KEY=VALUE line of the .deepspeed_env files it
reads: ~/.deepspeed_env and ./.deepspeed_env, or the file named by DS_ENV_FILE), `cd` to the
current folder, then this Python interpreter by its absolute path."""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# DeepSpeed's hostfile grammar (deepspeed/launcher/runner.py: `^(\S+)\s+slots=(\d+)`)
_HOST_LINE = re.compile(r"^(\S+)\s+slots=(\d+)")
# DeepSpeed quotes an exported value unless it is made only of these characters
_PLAIN = re.compile(r"[^\w@%+=:,./-]")


class PreflightError(Exception):
    pass


def read_hostfile(path: Path) -> list[tuple[str, int, int]]:
    """(host, slots, line number) per host line; errors name the file and line."""
    if not path.is_file():
        raise PreflightError(f"{path}: hostfile not found")
    hosts: dict[str, tuple[str, int, int]] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _HOST_LINE.match(line)
        if m is None:
            raise PreflightError(f"{path}:{n}: expected 'HOSTNAME slots=N', got {line!r}")
        if m.group(1) in hosts:
            raise PreflightError(f"{path}:{n}: host {m.group(1)!r} already listed on line {hosts[m.group(1)][2]}")
        hosts[m.group(1)] = (m.group(1), int(m.group(2)), n)
    if not hosts:
        raise PreflightError(f"{path}: no 'HOSTNAME slots=N' line")
    return list(hosts.values())


def env_files() -> list[Path]:
    """The .deepspeed_env files DeepSpeed's runner reads, in its order (an absolute DS_ENV_FILE
    replaces both folders: os.path.join keeps the absolute part)."""
    name = os.environ.get("DS_ENV_FILE", ".deepspeed_env")
    seen: list[Path] = []
    for folder in (os.path.expanduser("~"), "."):
        path = Path(os.path.join(folder, name))
        if path.is_file() and path.resolve() not in [p.resolve() for p in seen]:
            seen.append(path)
    return seen


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE per line. DeepSpeed splits every line at the first '=' and has no comments or
    blank lines: such a line stops its runner with a bare unpacking error, so name it here."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if "=" not in line:
            raise PreflightError(f"{path}:{n}: expected KEY=VALUE (DeepSpeed allows no comments or blank lines), "
                                 f"got {line!r}")
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def launcher_exports() -> dict[str, str]:
    """What DeepSpeed's multi-node runner exports to every rank (runner.py: EXPORT_ENVS, then the
    env files; the CPU accelerator adds no prefixes of its own, CUDA adds NCCL*)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.abspath(".") + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    prefixes = ("MLFLOW", "PYTHON", "MV2", "UCX", "NCCL")
    exports = {k: v for k, v in env.items() if k.startswith(prefixes)}
    for path in env_files():
        exports.update(read_env_file(path))
    return exports


def _export_line(exports: dict[str, str]) -> str:
    return "".join(f'export {k}="{v}"; ' if _PLAIN.search(v) else f"export {k}={v}; " for k, v in exports.items())


_REMOTE_PY = (
    "import json, os, socket, sys; import deepspeed, varpo; "
    "print(json.dumps({'hostname': socket.gethostname(), 'varpo': os.path.dirname(varpo.__file__), "
    "'deepspeed': deepspeed.__version__, 'DS_ACCELERATOR': os.environ.get('DS_ACCELERATOR')}))"
)


def local_varpo() -> str | None:
    """Where this host's Python (with this PYTHONPATH) finds varpo, without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("varpo")
    return os.path.dirname(spec.origin) if spec and spec.origin else None


def check_host(host: str, ssh_args: list[str], remote: str, connect_timeout: int, timeout: int,
               expected_varpo: str | None = None) -> dict:
    cmd = ["ssh", *ssh_args, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}", host, remote]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"host": host, "ok": False, "seconds": round(time.monotonic() - t0, 2),
                "error": f"no answer within {timeout} s (ssh and the remote import check)"}
    seconds = round(time.monotonic() - t0, 2)
    if proc.returncode == 255:  # ssh's own failure: connection, authentication, host key
        return {"host": host, "ok": False, "seconds": seconds,
                "error": f"unreachable by ssh: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'exit 255'}"}
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"host": host, "ok": False, "seconds": seconds,
                "error": f"reachable, but the remote check failed (exit {proc.returncode}): {tail}"}
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    if expected_varpo is not None and info["varpo"] != expected_varpo:
        return {"host": host, "ok": False, "seconds": seconds, **info,
                "error": f"imports varpo from {info['varpo']}, this host from {expected_varpo} (another checkout or PYTHONPATH)"}
    return {"host": host, "ok": True, "seconds": seconds, **info}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hostfile", "-H", required=True, type=Path)
    parser.add_argument("--ssh_port", type=int, default=None, help="as deepspeed's --ssh_port")
    parser.add_argument("--connect-timeout", type=int, default=10, help="seconds for ssh to connect to a host")
    parser.add_argument("--timeout", type=int, default=120, help="seconds for a host's whole check")
    parser.add_argument("--no-import-check", action="store_true", help="only check that ssh reaches every host")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-host results here")
    args = parser.parse_args(argv)
    try:
        hosts = read_hostfile(args.hostfile)
        exports = launcher_exports()
    except PreflightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ssh_args = shlex.split(os.environ.get("PDSH_SSH_ARGS_APPEND", ""))
    if args.ssh_port is not None:
        ssh_args += ["-p", str(args.ssh_port)]
    remote = "true" if args.no_import_check else (
        f"{_export_line(exports)}cd {shlex.quote(os.path.abspath('.'))} && "
        f"{shlex.quote(sys.executable)} -c {shlex.quote(_REMOTE_PY)}")
    # the remote side runs with the exported PYTHONPATH (current folder first): compare like with like
    sys.path[:0] = [p for p in exports.get("PYTHONPATH", "").split(":") if p]
    expected = None if args.no_import_check else local_varpo()
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        results = list(pool.map(lambda h: check_host(h[0], ssh_args, remote, args.connect_timeout, args.timeout,
                                                     expected), hosts))
    for (host, slots, line), r in zip(hosts, results):
        r.update(slots=slots, line=line)
        if r["ok"]:
            print(f"ok    {host} ({r['seconds']} s): hostname {r.get('hostname', '?')}, varpo from {r.get('varpo', '?')}, "
                  f"DS_ACCELERATOR={r.get('DS_ACCELERATOR')}")
        else:
            print(f"error: host {host} ({args.hostfile}:{line}): {r['error']}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    bad = [r["host"] for r in results if not r["ok"]]
    if bad:
        print(f"error: {len(bad)} of {len(results)} hosts failed the preflight: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
