"""EnsembleRewardModel: pooling under left/right padding, head seeds, LoRA, save/load."""
import json

import pytest
import torch

from varpo.masks import last_token_index
from varpo.reward.model import EnsembleRewardModel

from .conftest import gpt2_config, llama_config, make_tokenizer


def _padded(seqs, T, left):
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, x in enumerate(seqs):
        sl = slice(T - len(x), T) if left else slice(0, len(x))
        ids[i, sl], mask[i, sl] = x, 1
    return ids, mask


@pytest.mark.parametrize("make_config", [llama_config, gpt2_config])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_left_and_right_padding_give_identical_rewards(make_config, pooling):
    torch.manual_seed(1)
    model = EnsembleRewardModel.from_backbone(make_config(), 7, pooling=pooling).eval()
    g = torch.Generator().manual_seed(5)
    seqs = [torch.randint(3, 64, (n,), generator=g) for n in (3, 11, 6, 1, 9)]
    with torch.no_grad():
        right = model(*_padded(seqs, 13, left=False))
        left = model(*_padded(seqs, 13, left=True))
        alone = torch.cat([model(x[None], torch.ones(1, len(x), dtype=torch.long)) for x in seqs])
    assert right.shape == (5, 7) and right.dtype == torch.float32
    torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone, right, rtol=1e-5, atol=1e-5)  # padding changes nothing


def test_last_token_index_both_sides():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [1, 3, 3, 3]


def test_heads_come_from_distinct_seeds():
    a = EnsembleRewardModel.from_backbone(llama_config(), 4, head_seed=10)
    b = EnsembleRewardModel.from_backbone(llama_config(), 2, head_seeds=[12, 13])
    assert a.head_seeds == [10, 11, 12, 13]
    torch.testing.assert_close(a.heads.weight[2:], b.heads.weight)  # head k depends only on its seed
    w = a.heads.weight
    assert all(not torch.allclose(w[i], w[j]) for i in range(4) for j in range(i + 1, 4))
    with pytest.raises(ValueError, match="distinct"):
        EnsembleRewardModel.from_backbone(llama_config(), 2, head_seeds=[1, 1])


def test_backbone_frozen_by_default_and_lora_trains_only_adapters_and_heads():
    model = EnsembleRewardModel.from_backbone(llama_config(), 3)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"heads.weight", "heads.bias"}
    model.add_lora(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"heads.weight", "heads.bias"} <= trainable
    others = trainable - {"heads.weight", "heads.bias"}
    assert others and all("lora_" in n for n in others)
    assert any("q_proj" in n for n in others) and any("v_proj" in n for n in others)
    # one optimizer step moves only those
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids = torch.randint(3, 64, (4, 6))
    with torch.no_grad():  # lora_B starts at 0: give it a value so lora_A gets gradients too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(ids, torch.ones_like(ids)).sum().backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


def test_lora_error_names_the_available_modules():
    model = EnsembleRewardModel.from_backbone(gpt2_config(), 2)
    with pytest.raises(ValueError, match="c_attn"):
        model.add_lora(target_modules=["q_proj"])


@pytest.mark.parametrize("lora", [False, True])
def test_save_load_round_trip(tmp_path, lora):
    torch.manual_seed(2)
    model = EnsembleRewardModel.from_backbone(llama_config(), 5, pooling="mean", ddof=0, separator=" | ")
    if lora:
        model.add_lora(r=4, target_modules=["q_proj", "v_proj"])
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_()
    with torch.no_grad():
        model.heads.bias.normal_()
    model.eval()
    ids = torch.randint(3, 64, (3, 8))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    with torch.no_grad():
        want = model(ids, mask)
    model.save_pretrained(tmp_path / "rm", tokenizer=make_tokenizer())
    assert model.is_lora == lora  # saving merges a copy, not the model being trained
    conf = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert conf["num_heads"] == 5 and conf["pooling"] == "mean" and conf["ddof"] == 0 and conf["backbone"] == "backbone"
    assert (tmp_path / "rm" / "heads.safetensors").exists() and (tmp_path / "rm" / "backbone" / "config.json").exists()
    loaded = EnsembleRewardModel.from_pretrained(tmp_path / "rm")
    assert not loaded.is_lora and loaded.separator == " | " and loaded.head_seeds == model.head_seeds
    with torch.no_grad():
        got = loaded(ids, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "rm")("great")["input_ids"] == make_tokenizer()("great")["input_ids"]


def test_from_pretrained_rejects_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="varpo train-rm"):
        EnsembleRewardModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type is 'llama'"):
        EnsembleRewardModel.from_pretrained(tmp_path)


def test_prior_heads_and_standardisation_against_a_float64_reference(tmp_path):
    torch.manual_seed(4)
    model = EnsembleRewardModel.from_backbone(llama_config(), 3, pooling="mean", prior_scale=2.5).eval()
    assert not model.prior.weight.requires_grad  # priors are fixed
    assert not torch.equal(model.prior.weight, model.heads.weight)
    ids = torch.randint(3, 64, (7, 9))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    with torch.no_grad():
        h = model.pooled(ids, mask).double()
        raw_ref = h @ model.heads.weight.double().T + model.heads.bias.double() \
            + 2.5 * (h @ model.prior.weight.double().T + model.prior.bias.double())
        raw = model(ids, mask)
        torch.testing.assert_close(raw.double(), raw_ref, rtol=1e-5, atol=1e-5)
        model.standardize(raw)
        std = model(ids, mask).double()
    torch.testing.assert_close(std, (raw_ref - raw_ref.mean(0)) / raw_ref.std(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(std.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "rm")
    loaded = EnsembleRewardModel.from_pretrained(tmp_path / "rm")
    assert loaded.prior_scale == 2.5
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask).double(), std, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="standardize"):
        model.standardize(torch.zeros(5, 2))
