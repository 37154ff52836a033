"""`varpo score`: outputs, input errors, policies, and a run killed midway that resumes from the cache."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from varpo.cli import app
from varpo.config import ConfigError
from varpo.judge.local_server import JudgeServer

FAST = ["--set", "judge.backoff_base=0.01", "--set", "judge.timeout=0.5", "--set", "judge.max_retries=3"]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _score(server, inp, out, *extra):
    args = ["score", "--judge-base-url", server.base_url, "--judge-model", "m", "--input", str(inp), "--out", str(out),
            "--cache", str(out.parent / "cache.sqlite"), *FAST, *extra]
    return CliRunner().invoke(app, args)


def test_scores_in_order_with_summary(tmp_path):
    with JudgeServer(bounds=(-5.0, 5.0)) as server:
        _in_order(server, tmp_path)


def _in_order(server, tmp_path):
    rows = [{"prompt": f"p{i}", "response": f"r{i}" + (" [[fault:500:1]]" if i == 3 else "")} for i in range(7)]
    rows[2]["id"] = "abc"
    inp = _write(tmp_path / "in.jsonl", rows[:4] + [""] + rows[4:])  # a blank line is skipped
    res = _score(server, inp, tmp_path / "out", "--bounds", "-5,5", "--concurrency", "3")
    assert res.exit_code == 0, res.output
    out = [json.loads(x) for x in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert [r["index"] for r in out] == list(range(7)) and out[2]["id"] == "abc"
    for r in out:
        assert -5 <= r["low"] <= r["reward"] <= r["high"] <= 5
        assert r["variance"] == pytest.approx((r["high"] - r["low"]) ** 2 / 12)
        assert r["midpoint"] == pytest.approx((r["high"] + r["low"]) / 2)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n"] == 7 and summary["n_failed"] == 0 and summary["retries"] == 1 and summary["cache_hits"] == 0
    assert summary["judges"][0]["requests"] == 8
    cfg_text = (tmp_path / "out" / "config.yaml").read_text()
    assert "- -5.0" in cfg_text and "concurrency: 3" in cfg_text
    # the same command again is answered from the cache, with the same draws
    res = _score(server, inp, tmp_path / "out2", "--bounds", "-5,5")
    assert res.exit_code == 0 and server.requests == 8
    assert (tmp_path / "out2" / "scores.jsonl").read_text() == (tmp_path / "out" / "scores.jsonl").read_text()
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["cache_hits"] == 7


def test_drop_policy_writes_error_rows(server, tmp_path):
    rows = [{"prompt": "p", "response": "good"}, {"prompt": "p", "response": "bad [[fault:inverted:always]]"}]
    res = _score(server, _write(tmp_path / "in.jsonl", rows), tmp_path / "out", "--on-invalid", "drop")
    assert res.exit_code == 0, res.output
    out = [json.loads(x) for x in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert "reward" in out[0] and "error" not in out[0]
    assert set(out[1]) == {"index", "prompt", "response", "error"} and "in.jsonl:2" in out[1]["error"]
    assert (out[1]["prompt"], out[1]["response"]) == (rows[1]["prompt"], rows[1]["response"])  # kept as given
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_failed"] == 1


def test_fail_policy_names_the_row(server, tmp_path):
    rows = [{"prompt": "p", "response": "good"}, {"prompt": "p", "response": "bad [[fault:oob:always]]", "id": 42}]
    inp = _write(tmp_path / "in.jsonl", rows)
    res = _score(server, inp, tmp_path / "out", "--on-invalid", "fail")
    assert res.exit_code == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert f"row 1 ({inp}:2, id=42)" in summary["error"] and "within [0, 10]" in summary["error"]
    assert not (tmp_path / "out" / "scores.jsonl").exists()


@pytest.mark.parametrize("line,expect", [
    ('{"prompt": "p", "response": ', "in.jsonl, line 2: invalid JSON"),
    ('["p", "r"]', "in.jsonl, line 2: expected a JSON object"),
    ('{"prompt": "p"}', "in.jsonl, line 2, field 'response': missing"),
    ('{"prompt": 3, "response": "r"}', "in.jsonl, line 2, field 'prompt': expected a non-empty string or a list"),
])
def test_bad_input_line(server, tmp_path, line, expect):
    inp = _write(tmp_path / "in.jsonl", [{"prompt": "p", "response": "r"}, line])
    res = _score(server, inp, tmp_path / "out")
    assert isinstance(res.exception, ConfigError) and expect in str(res.exception)
    assert server.requests == 0  # nothing is sent before the whole input is checked


def test_bad_flags(server, tmp_path):
    inp = _write(tmp_path / "in.jsonl", [{"prompt": "p", "response": "r"}])
    res = _score(server, inp, tmp_path / "out", "--bounds", "0;10")
    assert isinstance(res.exception, ConfigError) and "--bounds" in str(res.exception)
    res = _score(server, inp, tmp_path / "out", "--bounds", "10,0")
    assert isinstance(res.exception, ConfigError) and "judge.bounds" in str(res.exception)
    res = _score(server, inp, tmp_path / "out", "--on-invalid", "ignore")
    assert isinstance(res.exception, ConfigError) and "fail or drop" in str(res.exception)


def test_several_judges_on_one_server(server, tmp_path):
    inp = _write(tmp_path / "in.jsonl", [{"prompt": "p", "response": f"r{i}"} for i in range(3)])
    res = CliRunner().invoke(app, ["score", "--judge-base-url", server.base_url, "--judge-model", "m1",
                                   "--judge-model", "m2", "--input", str(inp), "--out", str(tmp_path / "out"),
                                   "--cache", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    out = [json.loads(x) for x in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert [j["judge"].split("@")[0] for j in out[0]["judges"]] == ["m1", "m2"]
    assert server.requests == 6  # each sample by each judge; the cache keys include the model


@pytest.mark.slow
def test_killed_run_resumes_from_cache(tmp_path):
    n = 30
    inp = _write(tmp_path / "in.jsonl", [{"prompt": "p", "response": f"response {i}"} for i in range(n)])
    cache = tmp_path / "cache.sqlite"
    env = {**os.environ, "VARPO_NO_PROGRESS": "1"}
    env.pop("OPENAI_API_KEY", None)
    with JudgeServer(latency=0.15) as srv:
        cmd = [sys.executable, "-m", "varpo.cli", "score", "--judge-base-url", srv.base_url, "--judge-model", "m",
               "--input", str(inp), "--cache", str(cache), "--concurrency", "1"]
        proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "killed")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cached = 0
        deadline = time.monotonic() + 120
        while cached < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if cache.exists():
                try:
                    cached = sqlite3.connect(cache).execute("SELECT COUNT(*) FROM answers").fetchone()[0]
                except sqlite3.OperationalError:
                    pass  # table not created yet
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 5 <= cached < n, "the run should be killed midway"
        assert not (tmp_path / "killed" / "scores.jsonl").exists()
        after_kill = sqlite3.connect(cache).execute("SELECT COUNT(*) FROM answers").fetchone()[0]

        before = srv.requests
        done = subprocess.run(cmd + ["--out", str(tmp_path / "resumed")], env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
        assert summary["cache_hits"] == after_kill and summary["n"] == n
        assert srv.requests - before == n - after_kill  # only the rows the killed run never reached
        rows = [json.loads(x) for x in (tmp_path / "resumed" / "scores.jsonl").read_text().splitlines()]
        assert len(rows) == n and all("reward" in r for r in rows)
