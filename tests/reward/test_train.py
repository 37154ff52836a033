"""Reward-ensemble training on a real (tiny) DeepSpeed engine: learning, report, save/load,
bad-input paths (non-finite loss, truncation), checkpoint resume, early stopping, LoRA."""
import json
import math

import pytest
import torch

from varpo.config import load_config
from varpo.defaults import EMBEDDED
from varpo.outputs import read_jsonl
from varpo.reward.report import pair_accuracy
from varpo.reward.train import NonFiniteLossError, train_reward_model


def _train(out, overrides, extra=()):
    return train_reward_model(load_config(EMBEDDED, [*overrides, *extra]), out)


def test_training_learns_and_report_matches_saved_model(tmp_path, rm_overrides, pair_files):
    from varpo.reward.scorer import load_scorer

    r = _train(tmp_path, rm_overrides)
    on_disk = json.loads((tmp_path / "rm_report.json").read_text())
    assert on_disk == json.loads(json.dumps(r))
    for key in ("num_heads", "head_accuracy", "ensemble_accuracy", "variance_quantiles", "diff_variance_quantiles",
                "seconds", "model_path"):
        assert key in r
    assert r["num_heads"] == 4 and len(r["head_accuracy"]) == 4
    assert set(r["variance_quantiles"]) >= {"p10", "p50", "p90"}
    assert r["ensemble_accuracy"] > 0.75  # the good/bad words decide every synthetic pair
    assert r["variance_quantiles"]["p50"] > 0  # the heads disagree
    assert (tmp_path / "disagreement.png").stat().st_size > 0
    assert r["steps"] == 2 * (96 // 16) and r["truncated_train_pairs"] == 0
    log = read_jsonl(tmp_path / "train_log.jsonl")
    assert [row["step"] for row in log if row["kind"] == "train"] == list(range(1, 13))
    assert [row["step"] for row in log if row["kind"] == "eval"] == [3, 6, 9, 12]
    # the saved folder reproduces the report's held-out accuracies
    pairs = read_jsonl(pair_files[1])
    sc = load_scorer(r["model_path"])
    rc = sc.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs]).extras["per_head"]
    rr = sc.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs]).extras["per_head"]
    assert pair_accuracy(rc - rr).tolist() == pytest.approx(r["head_accuracy"])
    assert float(pair_accuracy(rc.mean(-1) - rr.mean(-1))) == pytest.approx(r["ensemble_accuracy"])


def test_non_finite_rewards_stop_with_step_batch_and_pairs(tmp_path, rm_overrides, tiny_backbone, pair_files):
    """A corrupted backbone (NaN embedding of [UNK]) poisons exactly the pairs with an unknown
    word: training stops at the first batch holding one and names step, batch and pair."""
    from transformers import LlamaForCausalLM

    from .conftest import make_tokenizer

    bad = tmp_path / "nan_backbone"
    model = LlamaForCausalLM.from_pretrained(tiny_backbone)
    with torch.no_grad():
        model.model.embed_tokens.weight[make_tokenizer().unk_token_id] = float("nan")
    model.save_pretrained(bad)
    make_tokenizer().save_pretrained(bad)
    pairs = read_jsonl(pair_files[0])
    pairs[37]["rejected"] = "the zzzunknown view was awful ."
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    with pytest.raises(NonFiniteLossError) as err:
        _train(tmp_path / "out", rm_overrides, [f"reward_training.backbone_path={bad}",
                                               f"data.pairs_path={tmp_path / 'pairs.jsonl'}"])
    msg = str(err.value)
    steps_done = sum(row["kind"] == "train" for row in read_jsonl(tmp_path / "out" / "train_log.jsonl"))
    assert f"non-finite rewards for training pairs [37] at step {steps_done} (epoch 0, batch {steps_done} of 6" in msg
    assert not (tmp_path / "out" / "rm_report.json").exists()


def test_over_long_pairs_are_truncated_and_counted(tmp_path, rm_overrides, pair_files, tiny_backbone):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    pairs = read_jsonl(pair_files[0])

    def n_tokens(p, side):  # BOS + words + EOS
        return len(tok(p["prompt"] + " " + p[side])["input_ids"]) + 1

    want_pairs = sum(max(n_tokens(p, "chosen"), n_tokens(p, "rejected")) > 9 for p in pairs)
    want_texts = sum((n_tokens(p, "chosen") > 9) + (n_tokens(p, "rejected") > 9) for p in pairs)
    assert 0 < want_pairs < len(pairs)
    r = _train(tmp_path, rm_overrides, ["reward_training.max_length=9", "reward_training.epochs=1"])
    assert r["truncated_train_pairs"] == want_pairs and r["truncated_train_texts"] == want_texts
    assert r["max_length"] == 9


def _heads(path):
    from safetensors.torch import load_file

    return load_file(str(path / "reward_model" / "heads.safetensors"))


def test_resumed_training_equals_uninterrupted(tmp_path, rm_overrides):
    """Resume continues exactly; with its newest checkpoint damaged it falls back, with a warning,
    to the previous one (steps 4-6 are redone, their log rows replaced)."""
    from varpo import checkpoint as ckpt

    straight = _train(tmp_path / "straight", rm_overrides)
    first = _train(tmp_path / "resumed", rm_overrides, ["reward_training.epochs=1", "reward_training.checkpoint_every=3"])
    assert first["steps"] == 6
    root = tmp_path / "resumed" / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == [ckpt.name_of(3), ckpt.name_of(6)]
    assert json.loads((root / ckpt.name_of(6) / ckpt.STATE).read_text())["step"] == 6  # JSON, not DeepSpeed's pickle
    (root / ckpt.name_of(6) / ckpt.STATE).unlink()
    with pytest.warns(RuntimeWarning, match=f"{ckpt.name_of(6)} is skipped: missing file {ckpt.STATE}"):
        resumed = _train(tmp_path / "resumed", rm_overrides)  # same folder, 2 epochs: continues from step 3
    assert resumed["steps"] == straight["steps"] == 12
    log = read_jsonl(tmp_path / "resumed" / "train_log.jsonl")
    assert [row["step"] for row in log if row["kind"] == "train"] == list(range(1, 13))
    a, b = _heads(tmp_path / "straight"), _heads(tmp_path / "resumed")
    torch.testing.assert_close(a["weight"], b["weight"], rtol=1e-5, atol=1e-6)
    assert resumed["ensemble_accuracy"] == pytest.approx(straight["ensemble_accuracy"])
    # a rerun of a finished training (nothing left to do) reports the same report, last loss included
    again = _train(tmp_path / "resumed", rm_overrides)
    assert again["steps"] == 12 and again["final_train_loss"] == pytest.approx(resumed["final_train_loss"])
    assert math.isfinite(again["final_train_loss"])


def test_early_stopping_keeps_the_best(tmp_path, rm_overrides):
    # a learning rate too small to change any held-out decision: the 2nd evaluation is no better
    r = _train(tmp_path, rm_overrides, ["reward_training.lr=1e-12", "reward_training.eval_every=1",
                                        "reward_training.early_stopping_patience=1"])
    assert r["stopped_early"] and r["steps"] == 2 and r["best_step"] == 1


def test_lora_training_changes_only_adapted_projections(tmp_path, rm_overrides, tiny_backbone):
    from safetensors.torch import load_file

    r = _train(tmp_path, rm_overrides, ["reward_training.lora.enabled=true", "reward_training.epochs=1",
                                        "reward_training.lora.r=4"])
    assert r["lora"] and r["trainable_parameters"] > 4 * 33
    base = {k.removeprefix("model."): v for k, v in load_file(str(tiny_backbone / "model.safetensors")).items()}
    saved = load_file(str(tmp_path / "reward_model" / "backbone" / "model.safetensors"))
    assert set(saved) <= set(base)
    changed = {k for k in saved if not torch.equal(saved[k], base[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)


def test_prior_kind_with_standardised_members(tmp_path, rm_overrides, pair_files):
    from varpo.reward.scorer import load_scorer

    r = _train(tmp_path, rm_overrides, ["reward_training.ensemble_kind=prior", "reward_training.prior_scale=2.0",
                                        "reward_training.standardize=true"])
    assert r["ensemble_kind"] == "prior" and r["prior_scale"] == 2.0 and r["standardized"]
    pairs = read_jsonl(pair_files[1])
    sc = load_scorer(r["model_path"])
    per_head = torch.cat([sc.score([p["prompt"] for p in pairs], [p[s] for p in pairs]).extras["per_head"]
                          for s in ("chosen", "rejected")]).double()
    # every member has mean 0 and std 1 on the held-out responses it was standardised on
    torch.testing.assert_close(per_head.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_head.std(0), torch.ones(4, dtype=torch.float64), atol=1e-4, rtol=0)
    assert r["ensemble_accuracy"] > 0.75  # standardising (a monotone map per member) kept what was learnt


def test_reward_training_calls_the_same_callbacks_as_ppo(tmp_path, rm_overrides):
    """A user's TrainerCallback (varpo.callbacks) sees reward training's train and eval rows as the
    train log has them, every checkpoint, the report, and can stop the run early."""
    from varpo.callbacks import TrainerCallback
    from varpo.errors import NonFiniteError

    class User(TrainerCallback):
        def __init__(self):
            self.events, self.rows = [], []

        def on_train_begin(self, trainer):
            self.events.append(("begin", trainer.step))

        def on_step_end(self, metrics):
            self.rows.append(metrics)
            if self.state.step == 7:
                self.stop("enough")

        def on_evaluate(self, metrics):
            self.rows.append(metrics)

        def on_checkpoint_saved(self, path):
            self.events.append(("checkpoint", path.name))

        def on_train_end(self, summary):
            self.events.append(("end", summary["steps"]))

    user = User()
    r = train_reward_model(load_config(EMBEDDED, [*rm_overrides, "reward_training.checkpoint_every=4"]), tmp_path,
                           callbacks=[user])
    assert r["steps"] == 7 and user.events == [("begin", 0), ("checkpoint", "step_00000004"),
                                               ("checkpoint", "step_00000007"), ("end", 7)]
    assert json.loads(json.dumps(user.rows)) == read_jsonl(tmp_path / "train_log.jsonl")
    assert [row["kind"] for row in user.rows].count("eval") == 2 and NonFiniteLossError is NonFiniteError
