"""The default testbed (built once per machine in the normal cache by the `testbed` fixture):
the LM beats a unigram model, its samples have a real spread of gold reward, pairs follow BT."""
import json
import math
import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from varpo.testbed import gold_reward
from varpo.testbed.corpus import generate_corpus

pytestmark = pytest.mark.slow  # the first use builds the default testbed (~1 min on 2 cores)


def test_lm_beats_unigram_in_stats(testbed):
    s = testbed.stats
    assert s["heldout_perplexity"] < 0.2 * s["unigram_perplexity"]
    assert s["final_train_loss"] < math.log(s["unigram_perplexity"])


def test_lm_beats_unigram_independently(testbed):
    """Recompute both perplexities on fresh texts with separate float64 code."""
    tok = AutoTokenizer.from_pretrained(testbed.model_path)
    model = AutoModelForCausalLM.from_pretrained(testbed.model_path).eval()
    train = [t.full for t in generate_corpus(2000, seed=testbed.config.seed)]
    fresh = [t.full for t in generate_corpus(60, seed=123_456)]
    counts = np.ones(len(tok))
    for text in train:
        for i in tok(text)["input_ids"][1:] + [tok.eos_token_id]:
            counts[i] += 1
    logp_uni = np.log(counts / counts.sum())
    nll_lm = nll_uni = 0.0
    n = 0
    for text in fresh:
        ids = tok(text)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, -1).numpy()
        for t in range(1, len(ids)):
            nll_lm -= logp[t - 1, ids[t]]
            nll_uni -= logp_uni[ids[t]]
            n += 1
    ppl_lm, ppl_uni = math.exp(nll_lm / n), math.exp(nll_uni / n)
    assert ppl_lm < 0.2 * ppl_uni
    assert ppl_lm == pytest.approx(testbed.stats["heldout_perplexity"], rel=0.25)


def test_samples_are_fluent_with_a_spread_of_gold(testbed):
    s = testbed.stats
    assert s["sample_gold_reward_std"] > 0.1
    assert 0.2 < s["sample_gold_reward_mean"] < 0.8
    assert 10 <= s["sample_tokens_mean"] <= 24
    assert s["sample_truncated_rate"] < 0.05  # the LM learnt to stop (EOS)


def test_default_pairs(testbed):
    cfg = testbed.config
    train, ev = testbed.pairs("train"), testbed.pairs("eval")
    assert len(train) + len(ev) + testbed.stats["pairs_dropped"] == cfg.num_train_pairs + cfg.num_eval_pairs
    assert len(train) >= 0.98 * cfg.num_train_pairs
    assert len(testbed.train_prompts) == cfg.num_train_prompts and len(testbed.eval_prompts) == cfg.num_eval_prompts
    rows = train + ev
    assert all(r["chosen"] != r["rejected"] and r["chosen"] and r["rejected"] for r in rows)
    # BT consistency: the label agrees with the gold order at the rate the model predicts
    decided = [r for r in rows if r["chosen_gold"] != r["rejected_gold"]]
    agree = sum(r["chosen_gold"] > r["rejected_gold"] for r in decided)
    t = cfg.bt_temperature
    expected = sum(1 / (1 + math.exp(-abs(r["chosen_gold"] - r["rejected_gold"]) / t)) for r in decided)
    var = sum((p := 1 / (1 + math.exp(-abs(r["chosen_gold"] - r["rejected_gold"]) / t))) * (1 - p) for r in decided)
    assert abs(agree - expected) < 5 * math.sqrt(var)
    sample = random.Random(0).sample(rows, 50)
    assert [r["chosen_gold"] for r in sample] == gold_reward([r["prompt"] for r in sample], [r["chosen"] for r in sample])


def test_cli_build_reuses_the_cache(testbed, tmp_path):
    from varpo.cli import app

    res = CliRunner().invoke(app, ["testbed", "build", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "testbed.json").read_text())
    assert report["cache_hit"] is True and report["model_path"] == str(testbed.model_path)
    for key in ("heldout_perplexity", "unigram_perplexity", "sample_gold_reward_mean", "sample_gold_reward_std"):
        assert report[key] == testbed.stats[key]
    assert (tmp_path / "config.yaml").is_file()
