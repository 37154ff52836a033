"""Rollout engines: the parts that need no vLLM (bucketing, seeds, the missing-vLLM error)."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from varpo.ppo.generation import sampling_seed
from varpo.ppo.generation.vllm import request_seeds, weight_buckets


def _named(sizes: dict[str, int]):
    return [(name, torch.nn.Parameter(torch.zeros(n))) for name, n in sizes.items()]


def test_weight_buckets_keep_blocks_whole_and_bounded():
    sizes = {"model.embed_tokens.weight": 100}
    for i in range(5):
        sizes |= {f"model.layers.{i}.self_attn.q_proj.weight": 10, f"model.layers.{i}.self_attn.k_proj.weight": 10,
                  f"model.layers.{i}.mlp.up_proj.weight": 20, f"model.layers.{i}.input_layernorm.weight": 1}
    sizes["model.norm.weight"] = 1
    named = _named(sizes)
    for budget_elems in (1, 41, 90, 100, 1000):
        buckets = weight_buckets(named, budget_elems * 4)
        flat = [n for b in buckets for n, _ in b]
        assert flat == list(sizes), "every parameter once, in order"
        for b in buckets:
            blocks = {n.split(".")[2] for n, _ in b if ".layers." in n}
            per_block = {k: sum(1 for n, _ in b if f".layers.{k}." in n) for k in blocks}
            assert all(v == 4 for v in per_block.values()), "a block is never split"
            size = sum(sizes[n] for n, _ in b)
            # over the budget only when a single block (or parameter) is larger than it
            assert size <= budget_elems or len(blocks) <= 1 and all(".layers." in n for n, _ in b) or len(b) == 1
    assert len(weight_buckets(named, 10**9)) == 1


def test_weight_buckets_never_split_a_module_outside_the_blocks():
    """GPT-2's final LayerNorm (weight and bias, outside the blocks) in one bucket: vLLM's reload
    would fill the half it did not receive with uninitialised memory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=11, n_embd=8, n_layer=3, n_head=2, n_positions=8))
    named = list(model.named_parameters())
    assert "transformer.ln_f.bias" in dict(named)
    for budget in (1, 4 * 8 * 8 + 1, 10**3, 10**9):  # tiny: every block and module alone
        buckets = weight_buckets(named, budget)
        assert [n for b in buckets for n, _ in b] == [n for n, _ in named], "every parameter once, in order"
        owner = {}
        for i, b in enumerate(buckets):
            for n, _ in b:
                module = n.rpartition(".")[0]
                assert owner.setdefault(module, i) == i, f"{module} split across buckets {owner[module]} and {i}"
    assert [n for n, _ in weight_buckets(named, 1)[-1]] == ["transformer.ln_f.weight", "transformer.ln_f.bias"]


def test_request_seeds_depend_on_seed_step_rank_only():
    a = request_seeds(0, 5, 1, 4)
    assert a == request_seeds(0, 5, 1, 4) and len(set(a)) == 4
    assert a != request_seeds(0, 6, 1, 4) and a != request_seeds(0, 5, 0, 4) and a != request_seeds(1, 5, 1, 4)
    assert sampling_seed(2, 3, 1) == 2 * 1_000_003 + 3 * 1009 + 1  # the HF backend's torch seed


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_fails_clearly(tiny_policy):
    """backend=vllm never falls back to HF generate: without vLLM it stops, saying what to install."""
    from varpo.config import load_config
    from varpo.ppo.generation import build_rollout_engine

    cfg = load_config(None, [f"model.policy_path={tiny_policy}", "generation.backend=vllm"])
    with pytest.raises(RuntimeError, match=r"needs vLLM.*setup_vllm_env\.sh"):
        build_rollout_engine(cfg, None, None, tiny_policy, 0, 1)


def test_cpu_engines_of_ranks_on_one_host_get_disjoint_cores(monkeypatch):
    """generation.backend=vllm on CPU with several ranks on a host: each rank's engine is bound to
    its own cores (VLLM_CPU_OMP_THREADS_BIND), together covering the host's; a value the user set wins."""
    from varpo.ppo.generation.vllm import _cpu_environment, host_ranks

    assert host_ranks(0, 1) == (0, 1)
    cores = sorted(os.sched_getaffinity(0))
    n = min(len(cores), 4)
    binds = []
    for r in range(n):
        env = {}
        monkeypatch.setattr(os, "environ", env)
        _cpu_environment(r, n)
        assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and "VLLM_CPU_KVCACHE_SPACE" not in env
        binds.append({int(c) for c in env["VLLM_CPU_OMP_THREADS_BIND"].split(",")})
    assert all(b for b in binds) and set().union(*binds) <= set(cores)
    if n > 1:
        assert all(not (a & b) for i, a in enumerate(binds) for b in binds[i + 1:]), binds
    env = {"VLLM_CPU_OMP_THREADS_BIND": "0-1"}
    monkeypatch.setattr(os, "environ", env)
    _cpu_environment(1, 2)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    env = {}
    monkeypatch.setattr(os, "environ", env)
    _cpu_environment(0, 1)  # one rank on the host: vLLM's own binding
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env


def test_cpu_kv_cache_is_sized_to_the_rollout(tiny_policy):
    """generation.vllm.cpu_kvcache_gb None: 4 × sequences × max_model_len × K/V bytes per token + 32 MiB
    (hand count for the tiny GPT-2: 2 layers, 2 heads of 16, float32)."""
    from varpo.ppo.generation.vllm import kv_cache_bytes

    per_token = 2 * 2 * 2 * 16 * 4  # K and V, 2 layers, 2 heads × 16 dims, 4 bytes
    assert kv_cache_bytes(tiny_policy, "float32", 8, 40) == 4 * 8 * 40 * per_token + 32 * 2**20
    assert kv_cache_bytes(tiny_policy, "bfloat16", 8, 40) == 4 * 8 * 40 * per_token // 2 + 32 * 2**20
    assert kv_cache_bytes(tiny_policy, "float32", 0, 40) == kv_cache_bytes(tiny_policy, "float32", 1, 40)


def test_inline_engine_only_for_one_rank_without_tensor_parallelism():
    from varpo.ppo.generation.vllm import inline_engine

    assert inline_engine("auto", cuda=False, world=1, tensor_parallel_size=1)
    assert not inline_engine("auto", cuda=False, world=2, tensor_parallel_size=1)
    assert not inline_engine("auto", cuda=True, world=1, tensor_parallel_size=1)  # GPU: the child layout, as tested
    assert not inline_engine("child", cuda=False, world=1, tensor_parallel_size=1)
    assert inline_engine("inline", cuda=True, world=1, tensor_parallel_size=1)
    for world, tp in ((2, 1), (1, 2)):
        with pytest.raises(ValueError, match="engine_process=inline needs one trainer rank"):
            inline_engine("inline", cuda=False, world=world, tensor_parallel_size=tp)
