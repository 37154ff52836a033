"""The cached testbed build on a tiny config: outputs, cache reuse, rebuild on change, concurrency."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from varpo.config import TestbedConfig
from varpo.data import load_pairs, load_prompts
from varpo.testbed import build_testbed, cache_key, gold_reward

TINY = {"corpus_size": 300, "heldout_size": 20, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
        "intermediate_size": 64, "train_steps": 15, "batch_size": 8, "warmup_steps": 2, "num_train_prompts": 30,
        "num_eval_prompts": 10, "num_train_pairs": 24, "num_eval_pairs": 6, "gen_batch_size": 32,
        "sample_max_new_tokens": 12}


def tiny(tmp_path, **kw) -> TestbedConfig:
    return TestbedConfig(cache_dir=str(tmp_path), **{**TINY, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tbcache")
    return root, build_testbed(tiny(root, bt_temperature=0.0), progress=False)


def test_outputs(built):
    root, tb = built
    assert not tb.cache_hit and tb.dir.parent == root and tb.dir.name == cache_key(tb.config)
    assert (tb.model_path / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(tb.model_path)
    model = AutoModelForCausalLM.from_pretrained(tb.model_path)
    c = model.config
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert c.vocab_size == len(tok)
    out = model(**tok(["we spent a day at the park ."], return_tensors="pt"))
    assert torch.isfinite(out.logits).all()

    assert len(tb.train_prompts) == 30 and len(tb.eval_prompts) == 10
    assert not set(tb.train_prompts) & set(tb.eval_prompts)
    assert load_prompts(tb.dir / "prompts_train.jsonl").rows == tb.train_prompts
    for split, n in (("train", 24), ("eval", 6)):
        pairs = tb.pairs(split)
        assert len(pairs) == tb.stats[f"n_{split}_pairs"] and n - tb.stats["pairs_dropped"] <= len(pairs) <= n
        prompts = set(tb.train_prompts if split == "train" else tb.eval_prompts)
        for r in pairs:
            assert r["prompt"] in prompts
            assert r["chosen_gold"] == pytest.approx(gold_reward([r["prompt"]], [r["chosen"]])[0])
            assert r["rejected_gold"] == pytest.approx(gold_reward([r["prompt"]], [r["rejected"]])[0])
            # temperature 0: the label is the gold ordering (ties by a coin)
            assert r["chosen_gold"] >= r["rejected_gold"]
        assert load_pairs(tb.pairs_path(split)).rows == [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pairs]
    for key in ("heldout_perplexity", "unigram_perplexity", "sample_gold_reward_mean", "sample_gold_reward_std", "seconds"):
        assert isinstance(tb.stats[key], float)
    assert json.loads((tb.dir / "testbed.json").read_text()) == tb.stats


def test_cache_reuse_and_rebuild_on_change(built, tmp_path):
    root, tb = built
    again = build_testbed(tiny(root, bt_temperature=0.0), progress=False)
    assert again.cache_hit and again.dir == tb.dir and again.stats == tb.stats
    # a different knob is a different testbed
    stale = root / f"{cache_key(tiny(root, bt_temperature=0.5))}.tmp-killed"  # as left by a killed build
    (stale / "model").mkdir(parents=True)
    other = build_testbed(tiny(root, bt_temperature=0.5), progress=False)
    assert not stale.exists()
    assert not other.cache_hit and other.dir != tb.dir
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted([tb.dir.name, other.dir.name])
    # where the cache lives is not part of the key, and a rebuild elsewhere is identical
    moved = build_testbed(tiny(tmp_path, bt_temperature=0.0), progress=False)
    assert not moved.cache_hit and moved.dir.name == tb.dir.name
    assert moved.train_prompts == tb.train_prompts and moved.pairs("train") == tb.pairs("train")
    assert moved.stats["heldout_perplexity"] == pytest.approx(tb.stats["heldout_perplexity"], rel=1e-5)


def test_cache_root_from_environment(tmp_path, monkeypatch):
    from varpo.testbed import cache_root

    monkeypatch.setenv("VARPO_CACHE", str(tmp_path / "env"))
    assert cache_root(TestbedConfig()) == tmp_path / "env"
    assert cache_root(TestbedConfig(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    monkeypatch.delenv("VARPO_CACHE")
    assert cache_root(TestbedConfig()) == __import__("pathlib").Path.home() / ".cache" / "varpo"


def test_concurrent_builds_build_once(tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        from varpo.config import TestbedConfig
        from varpo.testbed import build_testbed
        tb = build_testbed(TestbedConfig(cache_dir=sys.argv[1], seed=5, **{TINY!r}), progress=False)
        print(json.dumps({{"dir": str(tb.dir), "hit": tb.cache_hit, "n": len(tb.pairs())}}))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["dir"] == results[1]["dir"]
    assert sorted(r["hit"] for r in results) == [False, True]  # exactly one process built it
    assert results[0]["n"] == results[1]["n"] > 0
    # no temporary folders left behind, one testbed
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [os.path.basename(results[0]["dir"])]


@pytest.mark.parametrize("bad,match", [
    ({"hidden_size": 30, "num_heads": 4}, "must divide hidden_size"),
    ({"min_response_tokens": 30}, "exceeds max_response_tokens"),
    ({"bt_temperature": -1.0}, "greater than or equal to 0"),
    ({"max_length": 30}, "max_length"),
])
def test_config_validation(bad, match):
    from varpo.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=match):
        build_config(TestbedConfig, overrides=[f"{k}={v}" for k, v in bad.items()])


def test_cli_build_writes_report_and_config(built, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from varpo.cli import app

    root, tb = built
    sets = [f"testbed.{k}={v}" for k, v in {**TINY, "bt_temperature": 0.0, "cache_dir": str(root)}.items()]
    args = ["testbed", "build", "--out", str(tmp_path / "run")]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "testbed.json").read_text())
    assert report["cache_hit"] is True and report["testbed_dir"] == str(tb.dir)
    for key in ("heldout_perplexity", "unigram_perplexity", "sample_gold_reward_mean", "sample_gold_reward_std",
                "seconds", "build_seconds", "model_path"):
        assert key in report
    assert report["build_seconds"] == tb.stats["seconds"]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["testbed"]["train_steps"] == TINY["train_steps"]
    # a wrong key fails before any work, naming the field
    res = CliRunner().invoke(app, ["testbed", "build", "--out", str(tmp_path / "x"), "--set", "testbed.train_step=3"])
    assert res.exit_code != 0 and not (tmp_path / "x").exists()
    assert "testbed.train_step" in str(res.exception) and "unknown key" in str(res.exception)
