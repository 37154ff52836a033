"""The API key comes from the environment and reaches no log, saved config, error message or cache."""
import json
import logging

import pytest
from typer.testing import CliRunner

from varpo.cli import app
from varpo.config import load_config, save_resolved
from varpo.judge import JudgeError, JudgeScorer
from varpo.judge.local_server import JudgeServer

SECRET = "sk-test-Zq8v3SECRETvalue91"


def _all_text(folder):
    return "".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


def test_key_is_sent_from_named_env_var_and_stored_nowhere(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"prompt": "p", "response": f"r{i} [[fault:500:1]]"}) + "\n" for i in range(3)))
    with JudgeServer(require_key=SECRET) as srv:  # answers 401 unless the key arrives
        res = CliRunner().invoke(app, [
            "score", "--judge-base-url", srv.base_url, "--judge-model", "m", "--input", str(inp),
            "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache" / "c.sqlite"),
            "--api-key-env", "MY_JUDGE_KEY", "--set", "judge.backoff_base=0.01"])
        assert res.exit_code == 0, res.output
        assert srv.auth_headers and all(h == f"Bearer {SECRET}" for h in srv.auth_headers)
    assert "MY_JUDGE_KEY" in (tmp_path / "out" / "config.yaml").read_text()
    for text in (_all_text(tmp_path / "out"), _all_text(tmp_path / "cache"), res.output, caplog.text):
        assert SECRET not in text
    assert "Bearer" not in caplog.text


def test_error_messages_scrub_the_key(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with JudgeServer() as srv:
        cfg = load_config(None, [f"judge.judges=[{{base_url: '{srv.base_url}', model: m}}]",
                                 f"judge.cache={tmp_path / 'c.sqlite'}"]).judge
        scorer = JudgeScorer(cfg)
        # a leaky server echoes the Authorization header in its error body
        with pytest.raises(JudgeError) as info:
            scorer.score(["p"], ["r [[fault:echo_auth:always]]"])
        scorer.close()
        assert srv.auth_headers == [f"Bearer {SECRET}"]
    msg = str(info.value)
    assert "BadRequestError" in msg and "Authorization: Bearer ***" in msg and SECRET not in msg
    chain, e = [], info.value
    while e is not None:  # tracebacks print the whole chain of causes and contexts
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert all(SECRET not in str(x) for x in chain)
    assert SECRET not in repr(info.value)
    assert SECRET not in caplog.text
    save_resolved(load_config(None, []), tmp_path / "cfg")
    assert SECRET not in (tmp_path / "cfg" / "config.yaml").read_text()


def test_unset_key_uses_placeholder_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with JudgeServer() as srv:
        cfg = load_config(None, [f"judge.judges=[{{base_url: '{srv.base_url}', model: m}}]",
                                 "judge.api_key_env=NO_SUCH_KEY_VAR", f"judge.cache={tmp_path / 'c.sqlite'}"]).judge
        with caplog.at_level(logging.WARNING, logger="varpo.judge"):
            scorer = JudgeScorer(cfg)
        s = scorer.score(["p"], ["r"])
        scorer.close()
        assert bool(s.valid.all()) and srv.auth_headers == ["Bearer EMPTY"]
    assert "NO_SUCH_KEY_VAR is not set" in caplog.text and "placeholder" in caplog.text
