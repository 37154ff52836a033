"""launch/check_hosts.py, the multi-node preflight: bad hostfiles and env files are named with
their line, an unreachable host fails within the connect timeout, naming the host. (A reachable
host, with the environment really exported, is covered by tests/ppo/test_multinode.py.)"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch/check_hosts.py"


def _run(tmp_path: Path, hostfile: str, env_file: str | None = None, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "hosts").write_text(hostfile)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PDSH_SSH_ARGS_APPEND": "-F /dev/null"}
    if env_file is not None:
        (tmp_path / ".deepspeed_env").write_text(env_file)
    return subprocess.run([sys.executable, str(SCRIPT), "--hostfile", str(tmp_path / "hosts"), "--connect-timeout", "5",
                           "--timeout", "60", *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


def test_bad_hostfile_line_is_named(tmp_path):
    r = _run(tmp_path, "# nodes\nnode-a slots=2\nnode-b gpus=2\n")
    assert r.returncode == 2 and f"{tmp_path / 'hosts'}:3: expected 'HOSTNAME slots=N', got 'node-b gpus=2'" in r.stderr


def test_duplicate_and_empty_hostfiles(tmp_path):
    r = _run(tmp_path, "node-a slots=2\n\nnode-a slots=1\n")
    assert r.returncode == 2 and ":3: host 'node-a' already listed on line 1" in r.stderr
    r = _run(tmp_path, "# only a comment\n")
    assert r.returncode == 2 and "no 'HOSTNAME slots=N' line" in r.stderr


def test_env_file_comment_is_named(tmp_path):
    """DeepSpeed's runner splits every .deepspeed_env line at '=' (no comments): say which line."""
    r = _run(tmp_path, "127.0.0.9 slots=1\n", env_file="DS_ACCELERATOR=cpu\n# cache\nVARPO_CACHE=/x\n")
    assert r.returncode == 2 and f"{tmp_path / '.deepspeed_env'}:2: expected KEY=VALUE" in r.stderr


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client on this machine")
def test_unreachable_host_fails_naming_it(tmp_path):
    # 127.0.0.9:22 has no server (nothing in this suite listens there): ssh is refused at once
    r = _run(tmp_path, "127.0.0.9 slots=1\n", "DS_ACCELERATOR=cpu\n", "--json", str(tmp_path / "r.json"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"error: host 127.0.0.9 ({tmp_path / 'hosts'}:1): unreachable by ssh: ssh: connect to host 127.0.0.9" in r.stderr
    assert "1 of 1 hosts failed the preflight: 127.0.0.9" in r.stderr
    import json

    (res,) = json.loads((tmp_path / "r.json").read_text())
    assert res["host"] == "127.0.0.9" and res["ok"] is False and res["line"] == 1
