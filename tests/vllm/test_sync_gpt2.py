"""Weight sync into vLLM for GPT-2, whose LM head is the token embedding (tied): the architecture of
`benchmarks/ppo_vs_trl.py --size small`. vLLM logs "ParallelLMHead: Failed to load weights" during
such a sync; this checks the engine's log-probs still follow the actor's after every weight moved,
for several bucket layouts. GPT-2 has a module outside the blocks with two tensors (the final
LayerNorm's weight and bias): split across two buckets, vLLM's reload filled each half in turn with
uninitialised memory."""
from __future__ import annotations

import pytest
import torch

from .conftest import save_word_tokenizer

pytestmark = pytest.mark.vllm

TOL = 5e-3  # |Δ log p| between vLLM (CPU kernels, fp32) and the trainer's forward on the same weights
N_LAYER = 4


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> str:
    """A 4-layer GPT-2, tied head, head_dim 32 (vLLM's CPU attention needs ≥ 32), word-level vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny_gpt2")
    vocab = save_word_tokenizer(path)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(vocab), n_embd=64, n_layer=N_LAYER, n_head=2, n_positions=64,
                     tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def setup(tiny_gpt2, prompts):
    """One engine for every layout (each start costs ~40 s): the actor, the engine, the config."""
    from transformers import AutoModelForCausalLM

    from varpo.config import load_config
    from varpo.models.loading import load_tokenizer
    from varpo.ppo.generation import build_rollout_engine
    from varpo.ppo.tokens import tokenize_prompts

    cfg = load_config(None, [f"model.policy_path={tiny_gpt2}", "generation.backend=vllm",
                             "generation.max_new_tokens=8", "generation.min_new_tokens=0",
                             "generation.max_prompt_len=8"])
    tok = load_tokenizer(tiny_gpt2)
    actor = AutoModelForCausalLM.from_pretrained(tiny_gpt2, dtype=torch.float32).eval()
    assert actor.lm_head.weight.data_ptr() == actor.transformer.wte.weight.data_ptr(), "the head must be tied"
    engine = build_rollout_engine(cfg, actor, tok, tiny_gpt2, rank=0, world=1)
    ids, mask, _ = tokenize_prompts(tok, prompts, cfg.generation.max_prompt_len, "cpu")
    try:
        yield actor, engine, ids, mask, cfg
    finally:
        engine.close()


def _block_mb(actor) -> float:
    return sum(p.numel() * p.element_size() for n, p in actor.named_parameters() if n.startswith("transformer.h.0.")) / 2**20


# (budget in blocks, buckets expected): every block and every module outside the blocks alone
# (wte, wpe, 4 blocks, ln_f); one block per bucket (the embeddings join the first, ln_f the last);
# two blocks per bucket; one bucket
@pytest.mark.parametrize("blocks, n_buckets", [(None, 2 + N_LAYER + 1), (1.5, N_LAYER), (2.5, 2), (1000, 1)],
                         ids=["every-module-alone", "one-block", "two-blocks", "one-bucket"])
def test_sync_into_a_tied_head_model_follows_the_actor(setup, blocks, n_buckets):
    from varpo.ppo.forward import response_logits
    from varpo.ppo.generation.vllm import weight_buckets

    actor, engine, ids, mask, cfg = setup
    mb = 1e-4 if blocks is None else blocks * _block_mb(actor)
    assert len(weight_buckets(list(actor.named_parameters()), mb * 2**20)) == n_buckets
    cfg.generation.vllm.sync_bucket_mb = mb  # the engine reads its config section at every sync
    assert engine.v.sync_bucket_mb == mb

    def gap(ro) -> float:
        with torch.no_grad():
            logp = response_logits(actor, ro, cfg.generation.temperature).float().log_softmax(-1)
            logp = logp.gather(-1, ro.response_ids[..., None]).squeeze(-1)
        return float(((ro.logp - logp).abs() * ro.response_mask.float()).max())  # the engine's old log-probs

    engine.sync_weights(actor)  # engine and actor agree before the "update", whichever layout ran before
    before = engine.generate(ids, mask, step=5)
    assert gap(before) < TOL
    with torch.no_grad():  # an "update" that moves every weight, the tied embedding/head included
        g = torch.Generator().manual_seed(n_buckets)
        for p in actor.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5 * p.abs().mean().clamp(min=1e-3))
    assert gap(before) > 50 * TOL, "the perturbation must be visible in the log-probs"
    engine.sync_weights(actor)
    assert gap(engine.generate(ids, mask, step=5)) < TOL
    if engine.inline:  # the parameters themselves were handed over: the engine must hold its own copy
        synced = engine.generate(ids, mask, step=5)
        with torch.no_grad():
            for p in actor.parameters():
                p.mul_(-1.0)
        try:
            again = engine.generate(ids, mask, step=5)
        finally:
            with torch.no_grad():
                for p in actor.parameters():
                    p.mul_(-1.0)
        assert torch.equal(again.response_ids, synced.response_ids) and torch.equal(again.logp, synced.logp)
    # every block's gelu_new runs as torch's one-kernel tanh GELU (vLLM shares one module among the blocks)
    assert engine.fused_activations >= 1 and engine.llm.collective_rpc(_blocks_run_the_fused_gelu) == [True]
    # the tied head runs from the packing the reload made for the embedding (the same tensor), not a second one
    assert engine.llm.collective_rpc(_head_shares_the_embeddings_packing) == [True]


def _head_shares_the_embeddings_packing(worker) -> bool:
    model = worker.model_runner.get_model()
    return model.lm_head.weight is model.transformer.wte.weight and model.lm_head.cpu_linear is model.transformer.wte.cpu_linear


def _blocks_run_the_fused_gelu(worker) -> bool:
    from varpo.ppo.generation.vllm_worker import _tanh_gelu

    blocks = worker.model_runner.get_model().transformer.h
    return len(blocks) == N_LAYER and all(b.mlp.act._forward_method is _tanh_gelu for b in blocks)

