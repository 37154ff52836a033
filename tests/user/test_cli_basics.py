"""What every CLI user tries first: --version, -h on any command, the configuration with each
field's description (`varpo config show --doc`), and `varpo score` on the formats training reads,
with its output kept unless --overwrite."""
from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from varpo import __version__
from varpo.cli import app
from varpo.config import ConfigError, VarpoConfig, load_config, redacted_dict


def test_version_and_short_help():
    for flag in ("--version", "-V"):
        res = CliRunner().invoke(app, [flag])
        assert res.exit_code == 0 and res.stdout.strip() == f"varpo {__version__}"
    for args in (["-h"], ["train-ppo", "-h"], ["config", "show", "-h"], ["estimate-memory", "-h"]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0 and "Usage: " in res.stdout, args
    assert "--find-min-gpus" in CliRunner().invoke(app, ["estimate-memory", "-h"]).stdout


def _comment_above(lines: list[str], i: int) -> str:
    """The comment lines directly above line i, joined back into one sentence."""
    out = []
    j = i - 1
    while j >= 0 and lines[j].lstrip().startswith("# "):
        out.insert(0, lines[j].strip()[2:])
        j -= 1
    return " ".join(out)


def test_config_show_doc_describes_every_field_and_loads_back():
    from varpo.config import PPOConfig, RewardConfig
    from varpo.defaults import EMBEDDED

    res = CliRunner().invoke(app, ["config", "show", "--doc", "--set", "ppo.kl.beta=0.3"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    at = {ln.strip().split(":")[0]: i for i, ln in enumerate(lines) if ln.startswith("  ") and not ln.lstrip()
          .startswith("#")}
    assert _comment_above(lines, at["actor_lr"]) == PPOConfig.model_fields["actor_lr"].description
    assert lines[at["beta"]].strip() == "beta: 0.3" and _comment_above(lines, at["beta"]) == "initial KL coefficient (β)"
    rtype = next(i for i, ln in enumerate(lines) if ln.startswith("  type: ") and "ensemble" in ln)
    assert _comment_above(lines, rtype) == (" ".join(RewardConfig.model_fields["type"].description.split())
                                            + "; one of ensemble, judge, gold, oracle, sequence_classifier, remote")
    # the same configuration, read back
    back = VarpoConfig.model_validate(yaml.safe_load(res.stdout))
    assert redacted_dict(back) == redacted_dict(load_config(EMBEDDED, ["ppo.kl.beta=0.3"]))
    # every described field carries its comment
    assert sum(1 for ln in lines if ln.lstrip().startswith("# ")) >= sum(1 for _ in _described_fields(VarpoConfig))


def _described_fields(cls):
    from pydantic import BaseModel

    for name, f in cls.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _described_fields(ann)
        elif f.description:
            yield name


@pytest.fixture
def rows_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"question": ["what colour is the sky", "the cat"], "answer": ["blue", "sat on a mat"],
                             "id": ["x", "y"]}), path)
    return path


def test_score_with_a_reward_model_keeps_rows_and_refuses_to_overwrite(user_models, rows_file, tmp_path):
    out = tmp_path / "scores"
    args = ["score", "--input", str(rows_file), "--out", str(out), "--response-column", "answer",
            "--set", "data.prompt_column=question", "--set", "reward.type=sequence_classifier",
            "--set", f"reward.path={user_models['reward_model']}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert [(r["index"], r["id"], r["prompt"], r["response"]) for r in rows] == [
        (0, "x", "what colour is the sky", "blue"), (1, "y", "the cat", "sat on a mat")]
    assert all(r["variance"] == 0.0 and r["reward"] == r["score"] for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reward"]["type"] == "sequence_classifier" and summary["n"] == 2
    from varpo.reward.sequence_classifier import load_sequence_classifier

    want = load_sequence_classifier(user_models["reward_model"]).score(
        ["what colour is the sky", "the cat"], ["blue", "sat on a mat"]).score
    assert [r["reward"] for r in rows] == pytest.approx(want.tolist(), rel=1e-6)
    before = (out / "scores.jsonl").read_bytes()
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, ConfigError) and "holds the scores of an earlier run" in str(res.exception)
    assert (out / "scores.jsonl").read_bytes() == before
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_score_needs_a_named_reward(rows_file, tmp_path):
    res = CliRunner().invoke(app, ["score", "--input", str(rows_file), "--out", str(tmp_path / "o"),
                                   "--response-column", "answer", "--set", "data.prompt_column=question"])
    assert isinstance(res.exception, ConfigError)
    assert str(res.exception).startswith("varpo score: name what scores the rows")
    assert not (tmp_path / "o").exists()
