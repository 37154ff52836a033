"""Tiny real models for trainer tests: a word-level tokenizer and a 2-layer GPT-2 built from a
config and saved in HF format (no download), plus a deterministic text scorer."""
from __future__ import annotations

import pytest
import torch

WORDS = "the a cat dog sat ran on under mat log good bad very quite happy sad day night is was".split()


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_policy")
    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    g = torch.Generator().manual_seed(1)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (int(n),), generator=g))
            for n in torch.randint(2, 6, (40,), generator=g)]


class WordScorer:
    """A real text scorer: score = fraction of 'good' words minus 'bad' words; σ² from a
    fixed rule (or a constant), so tests can pin the variance."""

    def __init__(self, constant_variance: float | None = None, nan_from_call: int | None = None):
        self.constant_variance, self.nan_from_call, self.calls = constant_variance, nan_from_call, 0

    def score(self, prompts, responses):
        from varpo.reward_source import Scores

        self.calls += 1
        s, v = [], []
        for r in responses:
            w = r.split()
            s.append((sum(x in ("good", "happy") for x in w) - sum(x in ("bad", "sad") for x in w)) / max(len(w), 1))
            v.append(self.constant_variance if self.constant_variance is not None else 0.1 + 0.05 * (len(w) % 5))
        score = torch.tensor(s)
        if self.nan_from_call is not None and self.calls >= self.nan_from_call:
            score[0] = float("nan")
        return Scores(score=score, variance=torch.tensor(v))


@pytest.fixture(scope="session")
def word_scorer():
    return WordScorer


@pytest.fixture
def make_cfg(tiny_policy):
    from varpo.config import load_config

    def make(*overrides):
        return load_config(None, [
            f"model.policy_path={tiny_policy}", "ppo.steps=3", "ppo.batch_size=8", "ppo.mini_batch_size=4",
            "ppo.ppo_epochs=2", "ppo.actor_lr=1e-3", "ppo.critic_lr=1e-3", "generation.max_new_tokens=6",
            "generation.max_prompt_len=8", *overrides,
        ])

    return make


def _padded_batch(g, B, P, T, V):
    """Left-padded prompts and right-padded responses of random lengths (an Experience), and each
    row unpadded as (prompt ids, response ids)."""
    from varpo.ppo.experience import Experience

    p_len, r_len = torch.randint(1, P + 1, (B,), generator=g), torch.randint(1, T + 1, (B,), generator=g)
    prompt_ids, prompt_mask = torch.zeros(B, P, dtype=torch.long), torch.zeros(B, P, dtype=torch.long)
    resp_ids, resp_mask = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T, dtype=torch.long)
    rows = []
    for b in range(B):
        pr, rs = torch.randint(3, V, (int(p_len[b]),), generator=g), torch.randint(3, V, (int(r_len[b]),), generator=g)
        prompt_ids[b, P - len(pr):], prompt_mask[b, P - len(pr):] = pr, 1
        resp_ids[b, : len(rs)], resp_mask[b, : len(rs)] = rs, 1
        rows.append((pr, rs))
    return Experience(prompt_ids, prompt_mask, resp_ids, resp_mask, resp_mask[:, -1] == 0), rows


@pytest.fixture
def padded_batch():
    """padded_batch(generator, B, P, T, V) -> (Experience, rows): a random padded batch."""
    return _padded_batch
