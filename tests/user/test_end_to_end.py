"""The contract from outside, through the `varpo` command: `train-rm` and `train-ppo` take
--set data.pairs_path=FILE with conversational rows (chosen/rejected as message lists) and with
HH-RLHF rows; a sequence-classification reward-model folder trains PPO end to end, and backs a
multi-head ensemble (frozen trunk, head 0 from its score head) that variance-aware PPO then uses;
`varpo score` reads conversational rows and keeps them in its output."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from varpo.outputs import read_jsonl


def varpo(*args, timeout=900):
    env = {**os.environ, "VARPO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "varpo.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def sets(*overrides):
    return [x for o in overrides for x in ("--set", o)]


RM = ["reward_training.num_heads=4", "reward_training.lora.enabled=false", "reward_training.batch_size=8",
      "reward_training.epochs=3", "reward_training.max_length=48", "reward_training.lr=0.05",
      "reward_training.eval_every=5"]
PPO = ["ppo.steps=2", "ppo.batch_size=4", "ppo.mini_batch_size=2", "ppo.ppo_epochs=1", "generation.max_new_tokens=4",
       "generation.max_prompt_len=32", "ppo.log_samples_every=1"]


@pytest.mark.slow
def test_reward_model_folder_backs_an_ensemble_and_trains_ppo_on_conversations(user_models, user_data, tmp_path):
    rm_folder = user_models["reward_model"]
    # heads on the reward model's frozen trunk, trained on conversational pairs (UltraFeedback's layout)
    varpo("train-rm", "--out", str(tmp_path / "rm"), *sets(
        f"reward_training.backbone_path={rm_folder}", "reward_training.pooling=last",
        f"data.pairs_path={user_data['conv_pairs']}", f"data.eval_pairs_path={user_data['conv_eval_pairs']}", *RM))
    report = json.loads((tmp_path / "rm" / "rm_report.json").read_text())
    assert report["head0_from"] == f"score head of {rm_folder}" and report["num_heads"] == 4
    assert report["ensemble_accuracy"] >= 0.75  # 12 held-out pairs: the words say which reply is good
    assert report["eval_source"] == user_data["conv_eval_pairs"]
    ensemble = report["model_path"]

    # variance-aware PPO on the ensemble, prompts from the same conversations, evaluated as it trains
    out = tmp_path / "ppo"
    proc = varpo("train-ppo", "--out", str(out), *sets(
        f"model.policy_path={user_models['policy']}", f"reward.path={ensemble}", "ppo.variance.weighting=batch_mean",
        f"data.pairs_path={user_data['conv_pairs']}", f"data.eval_pairs_path={user_data['conv_eval_pairs']}",
        "ppo.eval_every=1", "ppo.eval_prompts=4", *PPO))
    assert "old log-probs: read off HF generate's logits" in proc.stderr  # said once, before training
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["reward"] == {
        "type": "ensemble", "path": ensemble, "default": False, "num_heads": 4,
        "sigma2": "variance over the 4 members (ddof 1)"}
    rows = read_jsonl(out / "metrics.jsonl")
    assert all(r["variance_mean"] > 0 and r["eval/variance_mean"] > 0 and r["eval/samples"] == 4 for r in rows)
    samples = read_jsonl(out / "samples.jsonl")
    # the prompts went through the policy's chat template, multi-turn ones included
    assert all(s["prompt"].startswith("<s><|user|> ") and s["prompt"].endswith("<|assistant|> ") for s in samples)

    # the reward model itself as the reward (σ² = 0), on HH-RLHF pairs' prompts
    out2 = tmp_path / "ppo_rm"
    varpo("train-ppo", "--out", str(out2), *sets(
        f"model.policy_path={user_models['policy']}", "reward.type=sequence_classifier", f"reward.path={rm_folder}",
        f"data.pairs_path={user_data['hh_pairs']}", *PPO))
    s2 = json.loads((out2 / "summary.json").read_text())
    assert s2["reward"]["type"] == "sequence_classifier" and s2["reward"]["sigma2"].startswith("0")
    first = read_jsonl(out2 / "samples.jsonl")[0]
    assert first["prompt"].startswith("\n\nHuman: ") and first["prompt"].endswith("\n\nAssistant:")
    assert all(r["variance_mean"] == 0.0 for r in read_jsonl(out2 / "metrics.jsonl"))

    # varpo score: the ensemble on conversational rows, prompt and response kept as given
    rows_in = tmp_path / "to_score.jsonl"
    given = [{"prompt": [{"role": "user", "content": "what colour is the sky"}],
              "response": [{"role": "assistant", "content": "good happy day"}], "id": "a"},
             {"prompt": [{"role": "user", "content": "what colour is the sky"}],
              "response": [{"role": "assistant", "content": "bad sad night"}], "id": "b"}]
    rows_in.write_text("".join(json.dumps(r) + "\n" for r in given))
    varpo("score", "--input", str(rows_in), "--out", str(tmp_path / "scores"), *sets(f"reward.path={ensemble}"))
    scored = read_jsonl(tmp_path / "scores" / "scores.jsonl")
    assert [(r["id"], r["prompt"], r["response"]) for r in scored] == [(g["id"], g["prompt"], g["response"])
                                                                         for g in given]
    assert all(len(r["per_head"]) == 4 and r["variance"] > 0 for r in scored)
    assert scored[0]["reward"] > scored[1]["reward"]  # the trained ensemble prefers the good reply


@pytest.mark.slow
def test_train_rm_on_hh_rlhf_rows(user_models, user_data, tmp_path):
    varpo("train-rm", "--out", str(tmp_path / "rm"), *sets(
        f"reward_training.backbone_path={user_models['policy']}", f"data.pairs_path={user_data['hh_pairs']}", *RM))
    report = json.loads((tmp_path / "rm" / "rm_report.json").read_text())
    assert report["train_pairs"] == 44 and report["eval_source"].startswith("last 10% of")  # 48 pairs, 4 held out
    assert report["head0_from"] is None  # a causal LM backbone has no score head
