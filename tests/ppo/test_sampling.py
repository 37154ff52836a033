"""The inverse-transform sampler (varpo.ppo.generation.sampling) against float64 references:
its draws follow softmax(logits) (chi-square against probabilities computed independently), it
never draws an impossible token, and inside HF generate it keeps min_new_tokens, top-k and the
seed's determinism, drawing the same distribution as HF's own multinomial sampler."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from varpo.ppo.generation.sampling import sample_inverse_cdf


def _softmax64(logits: torch.Tensor) -> np.ndarray:
    """An independent float64 softmax (numpy, −inf -> 0)."""
    x = logits.double().numpy()
    x = x - np.max(x, axis=-1, keepdims=True)
    e = np.where(np.isfinite(x), np.exp(x), 0.0)
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("V, n_masked, scale", [(37, 0, 1.0), (101, 30, 3.0), (5, 2, 0.2), (1000, 0, 4.0)])
def test_draws_follow_the_softmax(V, n_masked, scale):
    g = torch.Generator().manual_seed(V * 7 + n_masked)
    logits = torch.randn(3, V, generator=g) * scale
    masked = torch.randperm(V, generator=g)[:n_masked]
    logits[:, masked] = float("-inf")
    N = 40_000
    draws = sample_inverse_cdf(logits.repeat_interleave(N, 0), generator=g).view(3, N)
    want = _softmax64(logits)
    for row in range(3):
        counts = np.bincount(draws[row].numpy(), minlength=V)
        assert counts[masked.numpy()].sum() == 0, "a token of probability 0 was drawn"
        # pool the rare cells (expected count < 5) so the chi-square approximation holds
        exp_counts = want[row] * N
        keep = exp_counts >= 5
        obs = np.append(counts[keep], counts[~keep].sum())
        exp = np.append(exp_counts[keep], exp_counts[~keep].sum())
        if exp[-1] == 0:
            obs, exp = obs[:-1], exp[:-1]
        p = stats.chisquare(obs, exp).pvalue
        assert p > 1e-4, (row, p)


def test_a_tiny_probability_keeps_its_mass():
    """A token of probability 2e-8 after one of mass 1: in a float32 running sum (1 + 2e-8 = 1) its
    interval would be empty; in float64 it is drawn for exactly the uniforms that fall in it. The
    other tokens' probabilities are exact in float32 (exp 0 = 1), so the interval's place does not
    depend on how the sampler rounds them."""
    logits = torch.tensor([[0.0, math.log(2e-8), 0.0]])
    p = _softmax64(logits)[0]
    lo, hi = p[0], p[0] + p[1]
    # uniforms the sampler scales by the total mass (1 up to rounding): inside token 1's interval
    for u in (lo + 0.25 * (hi - lo), lo + 0.75 * (hi - lo)):
        assert _draw_with_uniform(logits, u) == 1, u
    assert _draw_with_uniform(logits, lo * 0.999) == 0 and _draw_with_uniform(logits, hi + 1e-6) == 2


def _draw_with_uniform(logits: torch.Tensor, u: float) -> int:
    """The sampler's draw when torch.rand returns `u` (its only source of randomness)."""
    real = torch.rand
    try:
        torch.rand = lambda size, **kw: torch.full((size,) if isinstance(size, int) else size, u, dtype=kw.get("dtype"))
        return int(sample_inverse_cdf(logits))
    finally:
        torch.rand = real


def test_given_uniforms_are_the_generators_draws():
    """`uniforms` (what vLLM's processor hands over, one per request from its own generator) draws
    exactly what the same numbers drawn inside from a generator do; and a uniform picks its token."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(7, 29, generator=g)
    inside = sample_inverse_cdf(logits, generator=torch.Generator().manual_seed(11))
    u = torch.rand(7, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    assert torch.equal(sample_inverse_cdf(logits, uniforms=u), inside)
    cdf = np.cumsum(_softmax64(logits), -1)
    want = [int(np.searchsorted(cdf[i], float(u[i]) * cdf[i, -1], side="right")) for i in range(7)]
    assert inside.view(-1).tolist() == want


@pytest.mark.parametrize("V", [255, 256, 257, 777, 2 * 256 + 3])
def test_every_draw_lies_in_its_tokens_interval_across_blocks(V):
    """Many uniforms per row, vocabularies around and across the two-level search's block size, a
    masked tail and masked tokens inside blocks: each drawn token is one whose float64 interval
    [cdf_{k-1}, cdf_k) holds u·total (to 1e-9 of the total: the sampler's probabilities are float32)
    and never one of probability 0."""
    g = torch.Generator().manual_seed(V)
    logits = torch.randn(5, V, generator=g) * 2
    logits[:, V // 2:] = float("-inf")  # the second half impossible: whole blocks of zero mass
    logits[:, torch.randperm(V // 2, generator=g)[: V // 8]] = float("-inf")
    logits[4, 1:] = float("-inf")  # one row: a single possible token
    logits[4, 0] = 0.0
    us = torch.rand(64, 5, dtype=torch.float64, generator=g)
    us[0] = 1.0 - 2.0 ** -53  # the largest uniform below 1
    us[1] = 0.0
    cdf = np.cumsum(_softmax64(logits), -1)
    for u in us:
        got = sample_inverse_cdf(logits, uniforms=u).view(-1).numpy()
        for row in range(5):
            k, x = int(got[row]), float(u[row]) * cdf[row, -1]
            assert np.isfinite(float(logits[row, k])), (row, k, "a token of probability 0")
            lo = cdf[row, k - 1] if k else 0.0
            assert lo - 1e-9 <= x <= cdf[row, k] + 1e-9, (row, k, x, lo, cdf[row, k])


@pytest.fixture(scope="module")
def model_and_tok(tiny_policy):
    from transformers import AutoModelForCausalLM

    from varpo.models.loading import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float32).eval(), load_tokenizer(tiny_policy)


def _rollout(model, tok, overrides: list[str], seed: int, n_prompts: int = 64):
    from varpo.config import load_config
    from varpo.ppo.generation.hf import generate
    from varpo.ppo.tokens import tokenize_prompts

    gen = load_config(None, ["generation.max_new_tokens=4", "generation.max_prompt_len=4", *overrides]).generation
    ids, mask, _ = tokenize_prompts(tok, ["the cat sat"] * n_prompts, gen.max_prompt_len, "cpu")
    torch.manual_seed(seed)
    return generate(model, tok, ids, mask, gen)


def test_in_generate_min_tokens_and_top_k_hold_and_the_seed_decides(model_and_tok):
    model, tok = model_and_tok
    over = ["generation.min_new_tokens=3", "generation.top_k=3", "generation.temperature=0.8"]
    a, b = _rollout(model, tok, over, seed=5), _rollout(model, tok, over, seed=5)
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, _rollout(model, tok, over, seed=6).response_ids)
    assert int(a.response_mask.sum(-1).min()) >= 3 and not (a.response_ids[:, :3] == tok.eos_token_id).any()
    # top-k: the first token is one of the 3 most likely after "the cat sat" (identical prompts)
    from varpo.ppo.tokens import tokenize_prompts

    ids, mask, _ = tokenize_prompts(tok, ["the cat sat"], 4, "cpu")
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[0, -1]
    logits[tok.eos_token_id] = float("-inf")  # min_new_tokens masks EOS first, then top-k picks
    allowed = set(logits.topk(3).indices.tolist())
    assert set(a.response_ids[:, 0].tolist()) <= allowed


def test_in_generate_the_same_distribution_as_hf_multinomial(model_and_tok):
    """First tokens of 4096 rollouts with each sampler: a chi-square test of homogeneity."""
    model, tok = model_and_tok
    over = ["generation.temperature=1.3", "generation.min_new_tokens=1"]
    firsts = [_rollout(model, tok, [*over, f"generation.sampler={s}"], seed=11, n_prompts=4096).response_ids[:, 0]
              for s in ("inverse_cdf", "multinomial")]
    V = int(max(f.max() for f in firsts)) + 1
    table = np.stack([np.bincount(f.numpy(), minlength=V) for f in firsts])
    table = table[:, table.sum(0) >= 10]
    assert table.shape[1] >= 5, "the tiny model should spread its first tokens"
    assert stats.chi2_contingency(table).pvalue > 1e-4
