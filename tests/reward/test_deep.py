"""The deep ensemble (reward_training.ensemble_kind=deep): K members, each its own backbone from its
own seed. Rewards and σ² against a float64 reference computed member by member, save/load, the
trainer, the scorer, ZeRO-3 as a frozen role and one PPO step."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varpo.config import ConfigError, load_config
from varpo.defaults import EMBEDDED
from varpo.outputs import read_jsonl
from varpo.reward.deep import DeepEnsembleRewardModel
from varpo.reward.load import load_reward_model
from varpo.reward.model import EnsembleRewardModel

from .conftest import llama_config, make_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def _batch():
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, 64, (6, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[4, 7:] = 0
    return ids, mask


def _reference(model: DeepEnsembleRewardModel, ids, mask) -> torch.Tensor:
    """Member rewards [B, K] in float64: each member's backbone on its own, mean-pooled over the
    real tokens, its own head row, then the member's shift and scale."""
    from varpo.masks import position_ids_from_mask

    cols = []
    for k, m in enumerate(model.members):
        h = m(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).last_hidden_state.double()
        w = mask.double().unsqueeze(-1)
        pooled = (h * w).sum(1) / w.sum(1)
        raw = pooled @ model.heads.weight[k].double() + model.heads.bias[k].double()
        cols.append((raw - model.member_shift[k].double()) / model.member_scale[k].double())
    return torch.stack(cols, 1)


def test_members_differ_and_sigma2_is_the_float64_variance_over_members():
    model = DeepEnsembleRewardModel.from_backbone(llama_config(), 4, head_seed=3, pooling="mean").eval()
    # each member's backbone is drawn from its own seed, and is the same draw on a rebuild
    first = [dict(m.named_parameters())["embed_tokens.weight"] for m in model.members]
    assert all(not torch.equal(first[0], x) for x in first[1:])
    again = DeepEnsembleRewardModel.from_backbone(llama_config(), 4, head_seed=3, pooling="mean")
    assert all(torch.equal(a, dict(b.named_parameters())["embed_tokens.weight"]) for a, b in zip(first, again.members))
    ids, mask = _batch()
    with torch.no_grad():
        model.standardize(torch.randn(20, 4, generator=torch.Generator().manual_seed(1)) * 3 + 1)
        r, st = model(ids, mask, stats_ddof=1)
        ref = _reference(model, ids, mask)
    torch.testing.assert_close(r.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.var.double(), ref.var(1, unbiased=True), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(st.mean.double(), ref.mean(1), rtol=1e-5, atol=1e-5)
    assert float(st.var.min()) > 0  # members with their own backbones disagree everywhere


@pytest.mark.parametrize("lora", [False, True])
def test_save_load_round_trip(tmp_path, tiny_backbone, lora):
    init = "pretrained" if lora else "random"
    model = DeepEnsembleRewardModel.from_backbone(tiny_backbone, 3, init=init, head_seed=7, ddof=0, separator=" | ")
    if lora:  # every member gets adapters of its own, which the saved folder merges in
        model.add_lora(r=4, target_modules=["q_proj", "v_proj"])
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_()
        assert model.is_lora
    with torch.no_grad():
        model.heads.bias.normal_()
        model.member_shift.normal_()
    model.eval()
    ids, mask = _batch()
    with torch.no_grad():
        want = model(ids, mask)
    model.save_pretrained(tmp_path / "rm", tokenizer=make_tokenizer())
    conf = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert conf["members"] == ["members/00", "members/01", "members/02"] and conf["init"] == init
    loaded = load_reward_model(tmp_path / "rm")
    assert isinstance(loaded, DeepEnsembleRewardModel) and not loaded.is_lora
    assert loaded.separator == " | " and loaded.head_seeds == [7, 8, 9] and loaded.ddof == 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask), want, rtol=1e-5, atol=1e-5)
    # the shared-backbone loader names what it expected; the deep one names a missing member
    with pytest.raises(ValueError, match="expected 'varpo_ensemble_reward_model'"):
        EnsembleRewardModel.from_pretrained(tmp_path / "rm")
    import shutil

    shutil.rmtree(tmp_path / "rm" / "members" / "01")
    with pytest.raises(FileNotFoundError, match="members/01"):
        load_reward_model(tmp_path / "rm")


def test_random_members_with_lora_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="lora.enabled=false"):
        load_config(EMBEDDED, ["reward_training.ensemble_kind=deep"])
    load_config(EMBEDDED, ["reward_training.ensemble_kind=deep", "reward_training.deep_init=pretrained"])


@pytest.mark.slow  # ~110 s on the shared 2-core machine: three whole backbones train
def test_training_a_tiny_deep_ensemble(tmp_path, rm_overrides, pair_files):
    from varpo.reward.scorer import load_scorer
    from varpo.reward.train import train_reward_model

    cfg = load_config(EMBEDDED, [*rm_overrides, "reward_training.ensemble_kind=deep", "reward_training.num_heads=3",
                                 "reward_training.lr=0.01", "reward_training.backbone_lr=0.003",
                                 "reward_training.epochs=3", "reward_training.standardize=true"])
    r = train_reward_model(cfg, tmp_path)
    assert r["ensemble_kind"] == "deep" and r["deep_init"] == "random" and r["standardized"]
    assert r["trainable_parameters"] > 3 * sum(p.numel() for p in load_reward_model(r["model_path"]).members[0].parameters()) - 1
    assert r["ensemble_accuracy"] > 0.75  # each member learnt the good/bad words with its own backbone
    saved = load_reward_model(r["model_path"])
    a, b = (dict(m.named_parameters())["layers.0.mlp.up_proj.weight"] for m in saved.members[:2])
    assert not torch.equal(a, b)
    pairs = read_jsonl(pair_files[1])
    sc = load_scorer(r["model_path"])
    scores = [sc.score([p["prompt"] for p in pairs], [p[s] for p in pairs]) for s in ("chosen", "rejected")]
    per_head = torch.cat([s.extras["per_head"] for s in scores]).double()
    # standardised on these held-out responses: each member mean 0, std 1 there
    torch.testing.assert_close(per_head.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_head.std(0), torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)
    # the scorer's σ² is the variance over members, recomputed in float64
    var = torch.cat([s.variance for s in scores]).double()
    torch.testing.assert_close(var, per_head.var(1, unbiased=True), rtol=1e-4, atol=1e-6)
    # the members learnt different functions: their rewards are not one ranking
    assert float(torch.corrcoef(per_head.T)[0, 1]) < 0.999


def _subprocess(code: str, timeout: int = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-c", code], env={**env, "DS_ACCELERATOR": "cpu", "VARPO_NO_PROGRESS": "1"},
                          capture_output=True, check=False, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_zero3_frozen_role_scores_like_the_plain_model_and_ppo_runs_a_step(tmp_path):
    """Under ZeRO-3 the members are partitioned as they load (a frozen DeepSpeed engine, like the
    reward role of the PPO engines) and score what the plain model scores; a PPO step with every
    role under ZeRO-3 runs on the deep ensemble's (score, σ²). Child processes: HF's ZeRO-3 switch
    is process-global while a model lives."""
    from transformers import GPT2Config, GPT2LMHeadModel

    policy = tmp_path / "policy"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(make_tokenizer()), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                               bos_token_id=1, eos_token_id=2, pad_token_id=0)).save_pretrained(policy)
    make_tokenizer().save_pretrained(policy)
    DeepEnsembleRewardModel.from_backbone(str(policy), 3).save_pretrained(tmp_path / "rm", tokenizer=make_tokenizer())
    got = json.loads(_subprocess(f"""
import json
from varpo.config import DeepSpeedConfig
from varpo.engines import is_zero3
from varpo.reward.scorer import load_scorer
p, r = ["the food", "we visited"], ["was great .", "the room was dirty ."]
a = load_scorer({str(tmp_path / 'rm')!r}).score(p, r)
sc = load_scorer({str(tmp_path / 'rm')!r}, ds_cfg=DeepSpeedConfig(zero_stage=3, param_persistence_threshold=0))
b = sc.score(p, r)
print(json.dumps({{"zero3": is_zero3(sc.model.module), "var": a.variance.min().item(),
                  "diff": (a.extras["per_head"] - b.extras["per_head"]).abs().max().item()}}))
"""))
    assert got["zero3"] and got["var"] > 0 and got["diff"] < 1e-5
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["the food", "we visited the", "the room", "a view"]))
    sets = [f"model.policy_path={policy}", f"reward.path={tmp_path / 'rm'}", f"data.prompts_path={prompts}",
            "deepspeed.zero_stage=3", "ppo.steps=1", "ppo.batch_size=4", "ppo.mini_batch_size=4", "ppo.ppo_epochs=1",
            "generation.max_new_tokens=4", "generation.max_prompt_len=8", "ppo.variance.weighting=batch_mean"]
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT")}, "DS_ACCELERATOR": "cpu", "VARPO_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "train_ppo.py"), "--out", str(tmp_path / "ppo"),
                           *[x for s in sets for x in ("--set", s)]], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = read_jsonl(tmp_path / "ppo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0] and rows[0]["variance_mean"] > 0 and rows[0]["score_mean"] == rows[0]["score_mean"]
