"""The vLLM rollout engine on CPU, for real: one engine process (~40 s to start) shared by the
tests of this file, a tiny Llama, weights synced in memory."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.vllm

TOL = 5e-3  # |Δ log p| between vLLM (CPU kernels, fp32) and the trainer's forward on the same weights


def _cfg(path, *overrides):
    from varpo.config import load_config

    return load_config(None, [
        f"model.policy_path={path}", "generation.backend=vllm", "generation.max_new_tokens=8",
        "generation.min_new_tokens=2", "generation.max_prompt_len=8",
        # a bucket per transformer block (and one each for the embedding and the final norm): the
        # sync is several partial reloads, as under ZeRO-3 with a bounded bucket
        "generation.vllm.sync_bucket_mb=0.0001", *overrides,
    ])


@pytest.fixture(scope="module")
def setup(tiny_llama, prompts):
    from transformers import AutoModelForCausalLM

    from varpo.models.loading import load_tokenizer
    from varpo.ppo.generation import build_rollout_engine
    from varpo.ppo.tokens import tokenize_prompts

    cfg = _cfg(tiny_llama)
    tok = load_tokenizer(tiny_llama)
    actor = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    engine = build_rollout_engine(cfg, actor, tok, tiny_llama, rank=0, world=1)
    ids, mask, _ = tokenize_prompts(tok, prompts, cfg.generation.max_prompt_len, "cpu")
    yield cfg, tok, actor, engine, ids, mask
    engine.close()


def _trainer_logp(cfg, actor, ro):
    """The trainer's forward (varpo.ppo.forward.response_logits, as varpo.ppo.actor.CausalLMRole.logprobs):
    log-softmax at the sampling temperature, nothing masked. vLLM's raw log-probs, which the engine
    hands over as the old log-probs at temperature 1, are this same definition (also at the first
    min_new_tokens positions, where the sampler masked EOS)."""
    from varpo.ppo.forward import response_logits

    with torch.no_grad():
        logits = response_logits(actor, ro, cfg.generation.temperature).float()
        return logits.log_softmax(-1).gather(-1, ro.response_ids[..., None]).squeeze(-1)


def _max_diff(a, b, mask):
    return float(((a - b).abs() * mask).max())


def test_rollout_layout_and_sampling_limits(setup):
    cfg, tok, _, engine, ids, mask = setup
    ro = engine.generate(ids, mask, step=0)
    B, T = ro.response_ids.shape
    assert B == ids.shape[0] and 1 <= T <= cfg.generation.max_new_tokens
    assert torch.equal(ro.prompt_ids, ids) and torch.equal(ro.prompt_mask, mask)
    lengths = ro.response_mask.sum(-1)
    assert int(lengths.min()) >= cfg.generation.min_new_tokens  # min_new_tokens: no EOS before it
    for b in range(B):
        n = int(lengths[b])
        row = ro.response_ids[b].tolist()
        if ro.has_eos[b]:
            assert row[n - 1] == tok.eos_token_id and tok.eos_token_id not in row[: n - 1]
        else:
            assert n == cfg.generation.max_new_tokens and tok.eos_token_id not in row
        assert all(x == tok.pad_token_id for x in row[n:])
        assert (ro.logp[b, :n] < 0).all() and (ro.logp[b, n:] == 0).all()
    assert ro.rollout_logp is None, "the engine's log-probs are the old log-probs: nothing to compare them with"
    assert ro.has_eos.any() and not ro.has_eos.all(), "the tiny model should both stop and run to the limit"


def test_start_up_is_the_import_and_the_engine_inline_on_one_cpu_rank(setup):
    """What the benchmark reports as startup_s: importing vLLM (near 0 when the process had already
    imported it) plus building the engine, which runs in this process on one CPU rank."""
    engine = setup[3]
    assert engine.inline and engine.engine_s > 0 and engine.import_s >= 0
    assert engine.startup_s == pytest.approx(engine.import_s + engine.engine_s, rel=1e-12)


def test_seeds_are_a_function_of_step(setup):
    _, _, _, engine, ids, mask = setup
    a, b, c = engine.generate(ids, mask, step=3), engine.generate(ids, mask, step=3), engine.generate(ids, mask, step=4)
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_inverse_transform_draws_follow_the_models_distribution(setup):
    """At temperature 1 the engine draws by inverse transform (varpo.ppo.generation.vllm_sampler):
    over 3000 requests of one prompt (one seed each) the first token's counts fit softmax of the
    trainer's own logits with EOS masked (min_tokens=1: vLLM's mask runs before the draw; unmasked,
    EOS would be expected ~1/24 of the time), by a chi-square test; and a request's tokens depend on
    its seed only, not on which other requests share its batch or in what order."""
    from scipy import stats
    from vllm.inputs import TokensPrompt

    from varpo.ppo.experience import Experience
    from varpo.ppo.forward import response_logits
    from varpo.ppo.generation.vllm import request_seeds, sampling_params

    cfg, tok, actor, engine, ids, mask = setup
    assert engine.inverse_cdf
    engine.sync_weights(actor)
    prompt = ids[0][mask[0].bool()]
    gen = cfg.generation.model_copy(update={"max_new_tokens": 2, "min_new_tokens": 1})
    N = 3000
    seeds = request_seeds(123, 0, 0, N)
    outs = engine.llm.generate([TokensPrompt(prompt_token_ids=prompt.tolist())] * N,
                               sampling_params(gen, tok.eos_token_id, seeds, inverse_cdf=True), use_tqdm=False)
    first = np.array([o.outputs[0].token_ids[0] for o in outs])
    # the trainer's distribution of the first response token (float64 softmax of its logits)
    one = Experience(ids[:1], mask[:1], torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1), torch.zeros(1, dtype=torch.bool))
    with torch.no_grad():
        logits = response_logits(actor, one, 1.0)[0, 0].double()
    logits[tok.eos_token_id] = float("-inf")
    p = torch.softmax(logits, -1).numpy()
    counts = np.bincount(first, minlength=p.size)
    assert counts[tok.eos_token_id] == 0, "EOS drawn inside min_tokens"
    expected = p * N
    keep = expected >= 5
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] == 0:  # nothing rare to pool (EOS alone, probability 0, counted above)
        obs, exp = obs[:-1], exp[:-1]
    assert stats.chisquare(obs, exp).pvalue > 1e-4, (counts, expected.round(1))
    # the same seeds in another order and another batch: the same tokens per seed
    pick = [7, 3, 2999, 0, 1500]
    again = engine.llm.generate([TokensPrompt(prompt_token_ids=prompt.tolist())] * len(pick),
                                sampling_params(gen, tok.eos_token_id, [seeds[i] for i in pick], inverse_cdf=True),
                                use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in again] == [list(outs[i].outputs[0].token_ids) for i in pick]


def test_sync_replaces_stale_weights(setup):
    """After a sync, the engine's log-probs are the updated actor's; a stale engine fails this. They
    match the trainer's forward at every position, the first min_new_tokens (EOS masked by the
    sampler) included: they are the old log-probs PPO trains with."""
    cfg, _, actor, engine, ids, mask = setup
    before = engine.generate(ids, mask, step=7)
    m = before.response_mask.float()
    assert _max_diff(before.logp, _trainer_logp(cfg, actor, before), m) < TOL

    with torch.no_grad():  # an "update": every parameter moves
        g = torch.Generator().manual_seed(0)
        for p in actor.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05 * p.abs().mean().clamp(min=1e-3) * 10)
    updated = _trainer_logp(cfg, actor, before)
    stale_gap = _max_diff(before.logp, updated, m)
    assert stale_gap > 50 * TOL, "the perturbation must be visible in the log-probs"

    engine.sync_weights(actor)
    after = engine.generate(ids, mask, step=7)  # same seeds, new weights
    assert not torch.equal(after.response_ids, before.response_ids)
    am = after.response_mask.float()
    assert _max_diff(after.logp, _trainer_logp(cfg, actor, after), am) < TOL


def test_sync_from_a_deepspeed_zero3_engine(setup, tiny_llama):
    """The actor as PPO holds it: a ZeRO-3 DeepSpeed engine (world of one); the sync gathers its
    partitioned parameters bucket by bucket."""
    from transformers import AutoModelForCausalLM

    from varpo.dist import init_distributed
    from varpo.engines import build_model, ds_config, gathered_params, train_engine

    cfg, _, _, engine, ids, mask = setup
    init_distributed("gloo")
    cfg_ds = cfg.deepspeed.model_copy(update={"zero_stage": 3})
    conf = ds_config(cfg_ds, "actor", 2, trainable=True)
    model = build_model(lambda: AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), conf)
    actor = train_engine(model, conf, lr=1e-3)
    assert all(p.numel() == 0 for p in actor.module.parameters()), "parameters must be partitioned"
    with gathered_params(actor.module):
        with torch.no_grad():
            for p in actor.module.parameters():
                p.mul_(1.3)
    try:
        engine.sync_weights(actor)
        ro = engine.generate(ids, mask, step=11)
        with gathered_params(actor.module):
            want = _trainer_logp(cfg, actor.module.eval(), ro)
        assert _max_diff(ro.logp, want, ro.response_mask.float()) < TOL
    finally:
        # the engine's HfDeepSpeedConfig would outlive this test (DeepSpeed's reference cycles keep the
        # model alive) and make every later from_pretrained in this process partition its weights:
        # the next files' tiny models would load (and save) empty
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()

