"""Encoding (truncation from the left, counted) and the EnsembleScorer interface."""
import numpy as np
import pytest
import torch

from varpo.reward.encode import encode, model_max_length, truncate_left
from varpo.reward.model import EnsembleRewardModel
from varpo.reward.scorer import EnsembleScorer, load_scorer
from varpo.reward_source import Scorer

from .conftest import llama_config, make_tokenizer


def test_truncate_left_keeps_bos_and_the_end():
    assert truncate_left([1, 5, 6, 7, 8, 2], 4, keep_first=1) == ([1, 7, 8, 2], True)
    assert truncate_left([5, 6, 7, 8, 2], 3, keep_first=1) == ([7, 8, 2], True)
    assert truncate_left([1, 5, 2], 3, keep_first=1) == ([1, 5, 2], False)


def test_encode_counts_truncated_texts_and_keeps_response_end():
    tok = make_tokenizer()
    prompts = ["the food was very", "we"]
    responses = ["great and the staff was rude .", "great"]
    ids, mask, n = encode(tok, prompts, responses, max_length=6)
    assert n == 1
    first = ids[0][mask[0].bool()].tolist()
    assert len(first) == 6 and first[0] == tok.bos_token_id and first[-1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(first[1:-1]) == ["staff", "was", "rude", "."]  # the prompt went first
    second = ids[1][mask[1].bool()].tolist()
    assert tok.convert_ids_to_tokens(second) == ["[BOS]", "we", "great", "[EOS]"]
    assert mask[1].tolist() == [1, 1, 1, 1, 0, 0]  # right padding


def test_model_max_length_caps_at_positions():
    assert model_max_length(llama_config(positions=16), 96) == 16
    assert model_max_length(llama_config(positions=128), 96) == 96


def _model(heads=6):
    torch.manual_seed(4)
    model = EnsembleRewardModel.from_backbone(llama_config(), heads).eval()
    with torch.no_grad():
        model.heads.bias.normal_()
    return model


def test_scorer_outputs_and_aggregations():
    model, tok = _model(), make_tokenizer()
    prompts = ["the food", "we visited a place", "the view was"] * 3
    responses = ["was great .", "and the staff was rude .", "lovely ."] * 3
    sc = EnsembleScorer(model, tok, aggregation="mean_minus_std", k=2.0, ddof=1, batch_size=4, max_length=32)
    assert isinstance(sc, Scorer)
    out = sc.score(prompts, responses)
    ids, mask, _ = encode(tok, prompts, responses, 32)
    with torch.no_grad():
        per_head = model(ids, mask).double().numpy()
    np.testing.assert_allclose(out.extras["per_head"].numpy(), per_head, rtol=1e-5, atol=1e-5)
    mean, var = per_head.mean(-1), per_head.var(-1, ddof=1)
    np.testing.assert_allclose(out.eval_reward.numpy(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.variance.numpy(), var, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.score.numpy(), mean - 2.0 * np.sqrt(var), rtol=1e-4, atol=1e-5)
    assert out.extras["truncated"] == 0
    cut = EnsembleScorer(model, tok, max_length=4).score(prompts, responses)
    assert cut.extras["truncated"] == 9


def test_load_scorer_round_trip_and_engine(tmp_path):
    from varpo.config import DeepSpeedConfig, RewardConfig

    model, tok = _model(3), make_tokenizer()
    model.save_pretrained(tmp_path / "rm", tokenizer=tok)
    prompts, responses = ["the food", "the room"], ["was great .", "was dirty ."]
    direct = EnsembleScorer(model, tok).score(prompts, responses)
    plain = load_scorer(tmp_path / "rm")
    torch.testing.assert_close(plain.score(prompts, responses).score, direct.score, rtol=1e-5, atol=1e-5)
    med = load_scorer(tmp_path / "rm", cfg=RewardConfig(aggregation="median", max_length=500), ds_cfg=DeepSpeedConfig())
    assert med.max_length == 64  # capped at the backbone's positions
    assert hasattr(med.model, "module")  # a DeepSpeed inference engine around the ensemble
    got = med.score(prompts, responses)
    torch.testing.assert_close(got.score, direct.extras["per_head"].median(-1).values, rtol=1e-5, atol=1e-5)  # K=3: middle value
    torch.testing.assert_close(got.variance, direct.variance, rtol=1e-5, atol=1e-6)


def test_scorer_rejects_unknown_aggregation():
    with pytest.raises(ValueError, match="aggregation"):
        EnsembleScorer(_model(2), make_tokenizer(), aggregation="max")
