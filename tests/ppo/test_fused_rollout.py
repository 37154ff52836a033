"""The rollout's fused paths against their plain counterparts on a real tiny GPT-2:
old log-probs read off generate's logits vs a full actor forward, and the fused shaping pass
(reference logits -> ref log-probs, KL, σ²-weighting) vs log-probs then KL as separate steps."""
import pytest
import torch

from varpo.config import KernelsConfig, load_config
from varpo.ppo import core
from varpo.ppo.experience import Experience
from varpo.ppo.forward import response_logits
from varpo.ppo.generation.hf import generate
from varpo.ppo.generation.logprobs import GenerationLogprobs
from varpo.ppo.tokens import tokenize_prompts


@pytest.mark.parametrize("temperature,min_new,lora", [(1.0, 0, False), (0.7, 3, False), (0.7, 2, True)])
def test_generation_logprobs_equal_a_full_forward(tiny_policy, prompts, temperature, min_new, lora):
    """Left-padded prompts of different lengths, EOS allowed (rows end early), temperature ≠ 1 and
    min_new_tokens (an EOS mask the sampler applies but the policy's distribution does not): the
    recorded log-probs equal log_softmax(full forward / T) at every real response token. With LoRA
    the actor is a peft model, whose generate bypasses its own forward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_policy)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_policy).eval()
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
        model.eval()
    gen = load_config(None, ["generation.max_new_tokens=9", f"generation.min_new_tokens={min_new}",
                             f"generation.temperature={temperature}"]).generation
    ids, mask, _ = tokenize_prompts(tok, prompts[:7], 8, "cpu")
    torch.manual_seed(3)
    ro = generate(model, tok, ids, mask, gen, record_logprobs=KernelsConfig())
    assert ro.logp is not None and ro.logp.shape == ro.response_ids.shape
    with torch.no_grad():
        full = torch.log_softmax(response_logits(model, ro, temperature).double(), -1)
    full = full.gather(-1, ro.response_ids[..., None]).squeeze(-1)
    m = ro.response_mask.bool()
    assert m.sum() > 7
    torch.testing.assert_close(ro.logp[m].double(), full[m], rtol=1e-4, atol=1e-4)


def test_generation_logprobs_refuse_a_call_without_ids(tiny_policy):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_policy).eval()
    emb = model.get_input_embeddings()(torch.tensor([[1, 5, 6]]))
    with GenerationLogprobs(model, 1.0, KernelsConfig()), pytest.raises(RuntimeError, match="without input_ids"):
        model(inputs_embeds=emb)


def test_fused_shaping_equals_the_plain_steps(make_cfg, prompts, tmp_path, word_scorer):
    """One rollout phase with kernels.fused_shaping on and off from the same seed: the same
    responses, reference log-probs, masked KL and weighted KL sums, and the same shaped rewards
    (w = σ²/mean σ², k3)."""
    from varpo.ppo.trainer import PPOTrainer

    base = ["ppo.variance.weighting=batch_mean", "ppo.kl.estimator=k3"]
    out = {}
    for fused in (True, False):
        cfg = make_cfg(*base, f"kernels.fused_shaping={str(fused).lower()}")
        tr = PPOTrainer.from_config(cfg, tmp_path / str(fused), prompts=prompts, policy_path=cfg.model.policy_path,
                        scorer=word_scorer())
        exp = tr.experience.make(0)
        assert ("weighted_kl_sum" in exp.extras) == fused
        out[fused] = exp
    a, b = out[True], out[False]
    assert torch.equal(a.response_ids, b.response_ids)
    torch.testing.assert_close(a.ref_logp, b.ref_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.logp, b.logp, rtol=1e-5, atol=1e-5)
    for k in ("kl", "weights", "rewards", "advantages"):
        torch.testing.assert_close(getattr(a, k), getattr(b, k), rtol=1e-3, atol=1e-4, msg=k)
    # the fused pass's weighted sum is Σ_t mask·w·k3 of its own per-token outputs
    k3 = core.kl_per_token(a.logp, a.ref_logp, "k3") * a.mask
    wsum = a.extras["weighted_kl_sum"]
    assert wsum.abs().sum() > 0  # a non-trivial comparison
    torch.testing.assert_close(wsum, (k3 * a.weights[:, None]).sum(-1), rtol=1e-4, atol=1e-6)


def test_without_generation_logprobs_the_actor_forward_carries_the_shaping(make_cfg, prompts, tmp_path, word_scorer):
    from varpo.ppo.trainer import PPOTrainer

    cfg = make_cfg("generation.logprobs_from_generate=false", "ppo.variance.weighting=batch_mean")
    tr = PPOTrainer.from_config(cfg, tmp_path, prompts=prompts, policy_path=cfg.model.policy_path, scorer=word_scorer())
    exp = tr.experience.rollout(0)
    assert isinstance(exp, Experience) and exp.logp is None
    tr.experience.score(exp)
    tr.experience.weigh(exp)
    tr.experience.forward_passes(exp)
    assert "weighted_kl_sum" in exp.extras
    torch.testing.assert_close(exp.kl, (exp.logp - exp.ref_logp) * exp.response_mask, rtol=1e-5, atol=1e-6)


def test_inplace_backward_gives_the_same_gradients(tiny_policy, prompts):
    """kernels.inplace_backward (the update's default): d/dlogits written into the LM head's own
    output buffer, the parameters' gradients unchanged; the logits really are contiguous (the
    index logits_to_keep), or the option would silently do nothing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from varpo.ppo.logprobs import token_logprobs

    tok = AutoTokenizer.from_pretrained(tiny_policy)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_policy)
    ids, mask, _ = tokenize_prompts(tok, prompts[:5], 8, "cpu")
    torch.manual_seed(5)
    ro = generate(model, tok, ids, mask, load_config(None, ["generation.max_new_tokens=6"]).generation)
    grads = []
    for inplace in (False, True):
        model.zero_grad(set_to_none=True)
        logits = response_logits(model, ro, 1.0)  # no division: the LM head's own output
        assert logits.is_contiguous()
        lp, ent = token_logprobs(logits, ro.response_ids, KernelsConfig(), with_entropy=True, inplace_backward=inplace)
        ((lp * ro.response_mask).sum() - 0.1 * ent.sum()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
