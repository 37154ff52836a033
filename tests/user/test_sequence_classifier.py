"""A Hugging Face sequence-classification reward model as users have it: as the reward
(reward.type=sequence_classifier: scores equal the model's own forward, σ² = 0, sharded under
ZeRO-3 like every role) and as the frozen trunk of a multi-head ensemble whose head 0 starts from
its score head (the paper's setting)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import make_tokenizer

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [("what colour is the sky", "blue"), ("the cat sat on the mat", "good happy day very good"),
         ("a", "sad"), ("dog ran under a log on a night", "bad")]


def own_forward(path, prompts, responses, separator=" ") -> torch.Tensor:
    """The reference: the HF model's own forward on each text alone (no padding), float64."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float64).eval()
    out = []
    with torch.no_grad():
        for p, r in zip(prompts, responses):
            ids = tok(f"{p}{separator}{r}", return_tensors="pt")["input_ids"]
            out.append(model(input_ids=ids).logits[0, 0])
    return torch.stack(out)


def test_scores_are_the_models_own(user_models):
    from varpo.config import RewardConfig
    from varpo.reward.sequence_classifier import load_sequence_classifier

    path = user_models["reward_model"]
    prompts, responses = zip(*TEXTS)
    # batches of 3: one padded batch of mixed lengths and one of a single text
    scorer = load_sequence_classifier(path, RewardConfig(type="sequence_classifier", path=path, batch_size=3))
    sc = scorer.score(list(prompts), list(responses))
    torch.testing.assert_close(sc.score.double(), own_forward(path, prompts, responses), rtol=1e-5, atol=1e-5)
    assert torch.equal(sc.variance, torch.zeros(len(TEXTS))) and torch.equal(sc.eval_reward, sc.score)
    assert len(set(sc.score.tolist())) == len(TEXTS)  # a real model: the texts get different scores
    # a rendered chat prompt is joined to the response with no separator and no special tokens added
    from varpo.data.chat import ChatRenderer

    chat = ChatRenderer(make_tokenizer()).prompt([{"role": "user", "content": "what colour is the sky"}], "x")
    got = scorer.score([chat], ["blue"]).score.double()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(f"{chat}blue", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tok.bos_token_id and (ids[0] == tok.bos_token_id).sum() == 1  # the template's BOS, once
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float64).eval()
    torch.testing.assert_close(got, model(input_ids=ids).logits[:, 0].detach(), rtol=1e-5, atol=1e-5)


def test_truncation_keeps_the_response_and_counts(user_models):
    from varpo.config import RewardConfig
    from varpo.reward.sequence_classifier import load_sequence_classifier

    path = user_models["reward_model"]
    scorer = load_sequence_classifier(path, RewardConfig(type="sequence_classifier", path=path, max_length=6))
    long_prompt = "the cat sat on the mat and the dog ran under a log"
    sc = scorer.score([long_prompt, "a"], ["good day", "bad"])
    assert sc.extras["truncated"] == 1 and scorer.truncated == 1
    # the kept text: BOS + the last 5 tokens (the response's end survives)
    tok = make_tokenizer()
    ids = tok(f"{long_prompt} good day")["input_ids"]
    kept = torch.tensor([ids[:1] + ids[-5:]])
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float64).eval()
    torch.testing.assert_close(sc.score[:1].double(), model(input_ids=kept).logits[:, 0].detach(), rtol=1e-5, atol=1e-5)


def test_ensemble_head0_starts_from_the_score_head(user_models):
    """Heads on the reward model's frozen trunk: with pooling=last head 0 is the reward model's
    own head at the start (its score on the same tokens), the other heads are new."""
    from transformers import AutoModelForSequenceClassification

    from varpo.config import load_config
    from varpo.reward.encode import encode
    from varpo.reward.model import EnsembleRewardModel
    from varpo.reward.train import _start_from_score_head

    path = user_models["reward_model"]
    cfg = load_config(None, [f"reward_training.backbone_path={path}", "reward_training.pooling=last",
                             "reward_training.num_heads=3"])
    model = EnsembleRewardModel.from_backbone(path, 3, pooling="last", dtype=torch.float64)
    assert _start_from_score_head(model, path, cfg.reward_training, True) == f"score head of {path}"
    tok = make_tokenizer()
    prompts, responses = zip(*TEXTS)
    ids, mask, _ = encode(tok, list(prompts), list(responses), 64)
    with torch.no_grad():
        r = model(ids, mask)
    ref = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float64).eval()
    with torch.no_grad():  # each text alone, as the reward model reads it (its last token)
        want = torch.stack([ref(input_ids=ids[i : i + 1, : int(mask[i].sum())]).logits[0, 0] for i in range(len(TEXTS))])
    torch.testing.assert_close(r[:, 0].double(), want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(r[:, 1].double(), want)
    # mean pooling reads something else: head 0 is then not started from the score head (and says so)
    mean = load_config(None, [f"reward_training.backbone_path={path}"]).reward_training
    assert _start_from_score_head(EnsembleRewardModel.from_backbone(path, 3, pooling="mean"), path, mean, True) is None


WORKER = ROOT / "tests" / "user" / "zero3_reward_worker.py"


@pytest.mark.multirank
def test_zero3_two_ranks_score_like_one_process(user_models, tmp_path):
    """ZeRO-3 on two ranks (the reward model's parameters partitioned while it loads): each rank
    scores its own texts and gets what the whole model gives on one process."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(WORKER), user_models["reward_model"], str(tmp_path)],
                          env={**env, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    prompts, responses = zip(*TEXTS)
    want = own_forward(user_models["reward_model"], prompts, responses)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"scores{rank}.pt")
        assert got["partitioned"], "the reward model was not sharded"
        idx = got["index"]
        torch.testing.assert_close(got["score"].double(), want[idx], rtol=1e-5, atol=1e-5)
