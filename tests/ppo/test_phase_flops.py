"""The FLOPs a PPO metrics row carries per phase (varpo.ppo.phase_flops) against
torch.utils.flop_counter on the trainer's own forwards."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def _count(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def test_phase_flops_count_the_useful_work_of_the_real_forwards(tiny_policy, padded_batch):
    """The reference, critic and update forwards of a variable-length batch, run padding-free with
    one sample per row (so every product the counter sees is useful work), count what
    phase_flops says: the FLOPs a metrics row carries for those phases."""
    from transformers import AutoModel, AutoModelForCausalLM

    from varpo.config import KernelsConfig, PackingConfig
    from varpo.models.value_head import ValueModel
    from varpo.ppo.actor import CausalLMRole
    from varpo.ppo.critic import SeparateCritic
    from varpo.ppo.phase_flops import RoleShapes, phase_flops, shape_of

    exp, _ = padded_batch(torch.Generator().manual_seed(2), 5, 6, 7, 20)
    # eager: the counter sees its attention products (CPU sdpa on one sequence runs a kernel it does not count)
    lm = AutoModelForCausalLM.from_pretrained(tiny_policy, attn_implementation="eager").eval()
    critic = ValueModel(AutoModel.from_pretrained(tiny_policy, attn_implementation="eager")).eval()
    one_per_row = PackingConfig(enabled=True, row_tokens=1)
    actor = CausalLMRole(lm, 1.0, KernelsConfig(), packing=one_per_row)
    values = SeparateCritic(critic, one_per_row)
    shapes = RoleShapes(shape_of(lm), shape_of(lm), shape_of(critic))
    want = phase_flops(shapes, exp, ppo_epochs=2, actor_forward_at_rollout=True)
    with torch.no_grad():
        assert _count(lambda: (actor.logprobs(exp), actor.logprobs(exp))) == want["flops/reference"]
        assert _count(lambda: values.values(exp)) == want["flops/value"]

    def update():
        (actor.logprobs(exp).logp.sum() + values.values(exp).sum()).backward()

    assert 2 * _count(update) == want["flops/update"]
    assert want["flops/generate"] > 0 and want["bytes/generate"] > 0
