"""A PPO trainer built around light stand-in roles: no DeepSpeed, no Hugging Face model. The
policy is a small causal network (embeddings averaged over the prefix), the critic another, each
trained by a plain torch optimizer behind the engine interface (backward/step/zero_grad); the
rollout engine samples from the policy token by token; the reward counts words. What the trainer
computes from them is checked against the same quantities computed here, row by row and unpadded,
in float64."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from varpo.config import KernelsConfig, load_config
from varpo.dist import DistInfo
from varpo.models.value_head import PolicyWithValueHead
from varpo.ppo.actor import Actor, CausalLMRole
from varpo.ppo.critic import SeparateCritic, ValueHeadCritic
from varpo.ppo.experience import Experience
from varpo.ppo.roles import Roles
from varpo.ppo.tokens import response_mask_from_ids
from varpo.ppo.trainer import PPOTrainer
from varpo.reward_source import Scores

WORDS = "good bad the a cat dog ran sat on mat very day".split()
PAD, EOS = 0, 1


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.padding_side = tok.truncation_side = "left"
    return tok


class PrefixLM(nn.Module):
    """Causal: the state at position t is a function of the (unmasked) tokens up to t only."""

    def __init__(self, vocab: int, hidden: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = SimpleNamespace(hidden_size=hidden)
        self.emb, self.mix, self.head = nn.Embedding(vocab, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, vocab)

    def hidden(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).to(torch.float32)
        prefix = (self.emb(input_ids) * m).cumsum(1) / m.cumsum(1).clamp(min=1)
        return torch.tanh(self.mix(prefix))

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, output_hidden_states=False):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        h = self.hidden(input_ids, mask)
        kept = h[:, logits_to_keep] if torch.is_tensor(logits_to_keep) else (h[:, -logits_to_keep:] if logits_to_keep else h)
        return SimpleNamespace(logits=self.head(kept), hidden_states=(h,) if output_hidden_states else None)


class PrefixCritic(nn.Module):
    def __init__(self, vocab: int, hidden: int = 16):
        super().__init__()
        torch.manual_seed(1)
        self.trunk, self.value = PrefixLM(vocab, hidden, seed=1), nn.Linear(hidden, 1)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.value(self.trunk.hidden(input_ids, attention_mask)).squeeze(-1)


class TorchEngine:
    """The engine interface the trainer uses (call, backward, step, zero_grad, module), on a plain
    torch optimizer."""

    def __init__(self, module: nn.Module, lr: float = 1e-2):
        self.module, self.opt = module, torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def zero_grad(self):
        self.opt.zero_grad(set_to_none=True)


class SamplingRollout:
    """Samples T tokens per prompt from the policy (the global generator, which the trainer seeds)."""

    name = "standin"

    def __init__(self, policy: nn.Module, max_new_tokens: int):
        self.policy, self.T = policy, max_new_tokens

    @torch.no_grad()
    def generate(self, prompt_ids, prompt_mask, step) -> Experience:
        ids, mask = prompt_ids, prompt_mask
        for _ in range(self.T):
            logits = self.policy(ids, mask).logits[:, -1]
            nxt = torch.multinomial(torch.softmax(logits.float(), -1), 1)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
        response = ids[:, prompt_ids.shape[1]:]
        rmask, has_eos = response_mask_from_ids(response, EOS)
        response = torch.where(rmask.bool(), response, torch.full_like(response, PAD))
        return Experience(prompt_ids, prompt_mask, response, rmask, has_eos)

    def sync_weights(self, actor) -> None:
        pass

    def close(self) -> None:
        pass


class WordCount:
    def score(self, prompts, responses):
        s = [float(r.split().count("good") - r.split().count("bad")) for r in responses]
        return Scores(score=torch.tensor(s), variance=torch.tensor([0.1 + 0.2 * (len(r.split()) % 3) for r in responses]))


class Seen:
    """Keeps the experience the trainer made (on_rollout_scored receives the object the update consumes)."""

    def __init__(self):
        from varpo.callbacks import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_rollout_scored(self, prompts, responses, experience):
                outer.exp = experience

        self.callback = CB()


def _build(tmp_path, shared_trunk: bool, *overrides):
    cfg = load_config(None, ["ppo.batch_size=6", "ppo.mini_batch_size=3", "ppo.ppo_epochs=2", "generation.max_new_tokens=5",
                             "generation.max_prompt_len=6", "ppo.variance.weighting=batch_mean", "ppo.log_samples_every=0",
                             *overrides])
    tok, V = tokenizer(), len(WORDS) + 3
    lm = PrefixLM(V)
    reference = copy.deepcopy(lm).requires_grad_(False).eval()
    if shared_trunk:
        engine = TorchEngine(PolicyWithValueHead(lm))
        actor = Actor(engine, 1.0, KernelsConfig(), with_values=True)
        critic = ValueHeadCritic(actor)
    else:
        actor = Actor(TorchEngine(lm), 1.0, KernelsConfig())
        critic = SeparateCritic(TorchEngine(PrefixCritic(V)))
    seen = Seen()
    roles = Roles(info=DistInfo(0, 0, 1, torch.device("cpu")), tokenizer=tok, actor=actor,
                  reference=CausalLMRole(reference, 1.0, KernelsConfig()), critic=critic, reward=WordCount(),
                  rollout=SamplingRollout(lm, cfg.generation.max_new_tokens), callbacks=[seen.callback])
    g = torch.Generator().manual_seed(4)
    prompts = [" ".join(WORDS[int(i)] for i in torch.randint(2, len(WORDS), (int(n),), generator=g))
               for n in torch.randint(1, 5, (12,), generator=g)]
    return PPOTrainer(cfg, tmp_path, roles, prompts=prompts), seen, reference


def _row(exp, b):
    pm, rm = exp.prompt_mask[b].bool(), exp.response_mask[b].bool()
    return torch.cat([exp.prompt_ids[b, pm], exp.response_ids[b, rm]])[None], int(pm.sum())


def _row_logp(model, exp, b):
    """log p of row b's response tokens under `model`, the row alone and unpadded, float64."""
    seq, P = _row(exp, b)
    with torch.no_grad():
        logits = model(seq, torch.ones_like(seq)).logits[0].double()
    return torch.log_softmax(logits[P - 1 : -1], -1).gather(-1, seq[0, P:, None]).squeeze(-1)


def _row_values(trunk: PrefixLM, head: nn.Linear, exp, b):
    """V of the states before row b's response tokens: `head` on `trunk`'s hidden states, float64."""
    seq, P = _row(exp, b)
    with torch.no_grad():
        h = trunk.hidden(seq, torch.ones_like(seq))[0, P - 1 : -1].double()
    return h @ head.weight.double()[0] + head.bias.double()


@pytest.mark.parametrize("shared_trunk", [False, True], ids=["separate_critic", "value_head_critic"])
def test_a_trainer_around_standin_roles_runs_steps(tmp_path, shared_trunk):
    trainer, seen, reference = _build(tmp_path, shared_trunk)
    policy, critic = (trainer.actor.module.policy, trainer.actor.module) if shared_trunk else \
        (trainer.actor.module, trainer.critic.engine.module)
    if shared_trunk:  # a random head: the zero init would make every value 0
        with torch.no_grad():
            trainer.actor.module.value_head.weight.normal_()
    policy_before, critic_before = copy.deepcopy(policy), copy.deepcopy(critic)
    trunk_before, head_before = (policy_before, critic_before.value_head) if shared_trunk else \
        (critic_before.trunk, critic_before.value)
    m = trainer.train_step()
    exp = seen.exp
    assert m["step"] == 0 and "skipped" not in m
    assert m["value_loss"] > 0 and torch.isfinite(torch.tensor([m["policy_loss"], m["entropy"]])).all()
    assert exp.variance.std() > 0 and float(exp.weights.mean()) == pytest.approx(1.0, rel=1e-5)
    # the reference and old log-probs and the old values the trainer computed are the models'
    # own (as they were before the update), row by row
    for b in range(exp.batch_size):
        n = int(exp.response_mask[b].sum())
        torch.testing.assert_close(exp.ref_logp[b, :n].double(), _row_logp(reference, exp, b), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(exp.logp[b, :n].double(), _row_logp(policy_before, exp, b), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(exp.values[b, :n].double(), _row_values(trunk_before, head_before, exp, b),
                                   rtol=1e-5, atol=1e-5)
    assert exp.values.abs().max() > 0.05
    # k1 and the fused shaping pass: kl = logp − ref_logp on the trained tokens, 0 elsewhere
    torch.testing.assert_close(exp.kl, (exp.logp - exp.ref_logp) * exp.mask, rtol=1e-5, atol=1e-6)
    # both optimizers stepped: the policy and the critic (its own model, or the head on the trunk)
    assert any(not torch.equal(a, p) for a, p in zip(policy_before.parameters(), policy.parameters()))
    head_now = trainer.actor.module.value_head if shared_trunk else trainer.critic.engine.module.value
    assert not torch.equal(head_before.weight, head_now.weight)
    trainer.step += 1
    m2 = trainer.train_step()
    assert m2["step"] == 1 and m2["kl_mean"] != 0  # the policy moved away from the reference


def test_the_old_constructor_names_the_new_one(tmp_path):
    cfg = load_config(None, [])
    with pytest.raises(TypeError, match=r"PPOTrainer\.from_config"):
        PPOTrainer(cfg, tmp_path, prompts=["a"], policy_path="x", scorer=WordCount())
