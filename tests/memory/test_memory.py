"""Memory planning (varpo.memory, `varpo estimate-memory`): parameter counts on the meta device
against instantiated models, the ZeRO arithmetic against DeepSpeed's own estimators, the shipped
cluster configs, and clear errors on bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from varpo.cli import app
from varpo.config import load_config
from varpo.memory import (
    Cluster,
    MemoryPlanError,
    count_params,
    kv_cache,
    load_hf_config,
    plan,
    plan_role,
    read_hostfile,
    role_shapes,
    shape_of,
    trainable_model_states,
)

ROOT = Path(__file__).resolve().parents[2]
SHAPES = Path(__file__).parent / "model_configs"
SHIPPED = ["cluster_zero3_multinode.yaml", "cluster_reward30b.yaml", "cluster_reward30b_remote.yaml"]


def _tiny_configs():
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    return {
        "llama_tied": LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
        "llama_untied": LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
        "gpt2": GPT2Config(vocab_size=89, n_embd=40, n_layer=3, n_head=5, n_positions=37),
        "qwen2": Qwen2Config(vocab_size=113, hidden_size=36, intermediate_size=60, num_hidden_layers=2,
                             num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False),
    }


@pytest.mark.parametrize("name", ["llama_tied", "llama_untied", "gpt2", "qwen2"])
def test_meta_param_count_matches_instantiated_model(name):
    from transformers import AutoModel, AutoModelForCausalLM

    from varpo.dist import import_deepspeed

    import_deepspeed()
    from deepspeed.runtime.zero.stage3 import model_to_params

    conf = _tiny_configs()[name]
    for kind, cls in (("causal_lm", AutoModelForCausalLM), ("backbone", AutoModel)):
        real = cls.from_config(conf)
        numel = sum(p.numel() for p in real.parameters())  # parameters() yields tied weights once
        ds_total, ds_largest = model_to_params(real)  # DeepSpeed's own count, on real storage
        assert numel == ds_total
        if kind == "causal_lm":
            s = shape_of(conf, "causal_lm")
            assert (s.total_params, s.largest_layer_params) == (ds_total, ds_largest)
        else:
            with torch.device("meta"):
                meta = AutoModel.from_config(conf)
            assert count_params(meta) == (ds_total, ds_largest)


def test_value_and_ensemble_heads_are_counted_like_the_real_modules():
    from transformers import AutoModel

    from varpo.models.value_head import ValueModel

    conf = _tiny_configs()["llama_tied"]
    critic = ValueModel(AutoModel.from_config(conf))
    assert shape_of(conf, "value").total_params == sum(p.numel() for p in critic.parameters())
    K = 7
    backbone = AutoModel.from_config(conf)
    heads = torch.nn.Linear(conf.hidden_size, K)  # K scalar heads with bias, as one module
    expect = sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in heads.parameters())
    assert shape_of(conf, "ensemble", K).total_params == expect


def test_shape_files_give_the_published_sizes():
    # Llama-3-8B has 8.03B parameters, CodeLlama-34B 33.7B: the shape files stand for them in the docs
    s8 = shape_of(load_hf_config(SHAPES / "llama3_8b_shape.json", "x"), "causal_lm")
    s34 = shape_of(load_hf_config(SHAPES / "llama_34b_shape.json", "x"), "causal_lm")
    assert 8.02e9 < s8.total_params < 8.04e9
    assert 33.6e9 < s34.total_params < 33.8e9


def test_kv_cache_formula_matches_a_real_hf_cache():
    from transformers import LlamaForCausalLM

    conf = _tiny_configs()["llama_tied"]
    model = LlamaForCausalLM(conf).eval()
    B, S = 3, 11
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, conf.vocab_size, (B, S)), use_cache=True)
    cache = out.past_key_values
    real = 0
    for layer in cache.layers:
        real += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    assert kv_cache(shape_of(conf, "causal_lm"), B, S, act_bytes=4) == real


def _deepspeed_estimators():
    from varpo.dist import import_deepspeed

    import_deepspeed()
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    return stage3, stage_1_and_2


@pytest.mark.parametrize("nodes,gpus", [(1, 1), (1, 8), (4, 8)])
@pytest.mark.parametrize("off_opt,off_par", [(False, False), (True, False), (True, True)])
def test_zero3_numbers_are_deepspeeds(nodes, gpus, off_opt, off_par):
    stage3, _ = _deepspeed_estimators()
    P, L = 8_030_261_248, 525_336_576
    ours = trainable_model_states(P, L, 3, Cluster(nodes, gpus), off_opt, off_par)
    cpu, gpu, _ = stage3.estimate_zero3_model_states_mem_needs(
        P, L, num_gpus_per_node=gpus, num_nodes=nodes, cpu_offload=off_opt, cpu_offload_params=off_par,
        zero_init=True, additional_buffer_factor=1.5)
    assert (ours["gpu"], ours["cpu_node"]) == (gpu, cpu)
    assert ours["cpu"] == int(cpu / gpus)


@pytest.mark.parametrize("off_opt", [False, True])
def test_zero2_numbers_are_deepspeeds(off_opt):
    _, stage2 = _deepspeed_estimators()
    P = 1_234_567_891
    ours = trainable_model_states(P, 0, 2, Cluster(2, 4), off_opt, False)
    cpu, gpu = stage2.estimate_zero2_model_states_mem_needs(P, num_gpus_per_node=4, num_nodes=2, cpu_offload=off_opt)
    assert (ours["gpu"], ours["cpu_node"]) == (gpu, cpu)


def test_zero3_trainable_states_are_what_a_real_engine_allocates():
    """The stage-3 trainable states the plan counts, tensor by tensor, on a real DeepSpeed engine (one
    rank, fp32, after an optimizer step): the parameter shard, its fp32 master copy, Adam's two
    moments, the gradient partitions and the gradient bucket DeepSpeed allocates whole."""
    import gc

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from varpo.config import DeepSpeedConfig
    from varpo.dist import init_distributed
    from varpo.engines import build_model, ds_config, train_engine
    from varpo.memory import zero3_trainable_states

    init_distributed()
    conf = ds_config(DeepSpeedConfig(zero_stage=3), "actor", 2, trainable=True)
    conf["zero_optimization"]["reduce_bucket_size"] = 300_000  # small, so the test allocates little
    hc = GPT2Config(vocab_size=97, n_positions=16, n_embd=24, n_layer=2, n_head=2)
    engine = train_engine(build_model(lambda: GPT2LMHeadModel(hc), conf), conf, lr=1e-3)
    x = torch.randint(0, 97, (2, 8))
    engine.backward(engine(input_ids=x, labels=x).loss)
    engine.step()
    opt = engine.optimizer
    P = sum(p.ds_numel for p in engine.module.parameters())

    def nbytes(ts):
        return sum(t.numel() * t.element_size() for t in ts)

    real = {"shard": nbytes(p.ds_tensor for p in engine.module.parameters()),
            "master": nbytes(opt.fp32_partitioned_groups_flat),
            "moments": nbytes(v for st in opt.optimizer.state.values() for v in st.values()
                              if torch.is_tensor(v) and v.dim() > 0),
            "grads": nbytes([opt.grad_partitions_flat_buffer]),
            "bucket": nbytes(b.buffer for b in opt.ipg_buckets.values() if b.buffer is not None)}
    ours = zero3_trainable_states(P, 1, 4, 300_000)
    del engine, opt
    gc.collect()
    # HF's global ZeRO-3 switch outlives the engine here; left on, every later from_config in this
    # process would build under zero.Init (the plan itself is immune: memory.on_meta switches it off)
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    assert ours["reduce_bucket"] == real["bucket"] == 4 * 300_000
    # DeepSpeed pads each parameter's partition to an alignment; the plan does not (< 0.1 % here)
    assert ours["shard"] == pytest.approx(real["shard"] + real["master"] + real["moments"] + real["grads"], rel=2e-3)
    assert real["master"] == pytest.approx(real["shard"], rel=1e-9) and real["moments"] == 2 * real["master"]


def test_zero3_per_rank_memory_halves_from_one_to_two_ranks():
    cfg = load_config(None, ["deepspeed.zero_stage=3", "deepspeed.precision=bf16",
                             f"model.policy_path={SHAPES / 'llama3_8b_shape.json'}"])
    shape = role_shapes(cfg, SHAPES / "llama3_8b_shape.json")["actor"]
    for role in ("actor", "critic", "reference", "reward"):
        one = plan_role(cfg, role, shape, Cluster(1, 1)).model_states_gpu
        two = plan_role(cfg, role, shape, Cluster(1, 2)).model_states_gpu
        # sharded parts halve; a trainable role's gradient bucket (5e8 elements) does not
        if role in ("actor", "critic"):
            assert 0.5 < two / one < 0.51, (role, one, two)
        else:
            assert two / one == pytest.approx(0.5, abs=1e-9), (role, one, two)
    # ZeRO-0 frozen parameters do not shrink with ranks
    cfg0 = load_config(None, ["deepspeed.zero_stage=0", f"model.policy_path={SHAPES / 'llama3_8b_shape.json'}"])
    assert plan_role(cfg0, "reference", shape, Cluster(1, 1)).model_states_gpu == \
        plan_role(cfg0, "reference", shape, Cluster(1, 2)).model_states_gpu == 4 * shape.total_params


def test_param_offload_moves_a_frozen_shard_to_cpu():
    over = ["deepspeed.zero_stage=3", "deepspeed.precision=bf16", "deepspeed.reward.offload_param=true",
            f"model.policy_path={SHAPES / 'llama3_8b_shape.json'}"]
    cfg = load_config(None, over)
    shape = role_shapes(cfg, SHAPES / "llama_34b_shape.json")["reward"]
    r = plan_role(cfg, "reward", shape, Cluster(1, 8))
    assert r.offload_param and r.cpu_bytes == int(2 * shape.total_params / 8)
    assert r.model_states_gpu < 2 * shape.total_params / 8  # only the gathered working set stays


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate(name):
    path = ROOT / "configs" / name
    cfg = load_config(path)
    assert cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.precision == "bf16"
    res = CliRunner().invoke(app, ["config", "check", str(path)])
    assert res.exit_code == 0, res.output
    assert "ok" in res.output


def test_hostfile_example_matches_the_multinode_config():
    cluster = read_hostfile(ROOT / "configs" / "hostfile.example")
    assert (cluster.num_nodes, cluster.gpus_per_node) == (4, 8)
    cfg = load_config(ROOT / "configs" / "cluster_zero3_multinode.yaml")
    # the trainer requires both batch sizes to divide by the world size
    assert cfg.ppo.batch_size % cluster.world == 0 and cfg.ppo.mini_batch_size % cluster.world == 0


def test_reward30b_config_fits_80gb_at_16_ranks_and_not_one():
    cfg_path = ROOT / "configs" / "cluster_reward30b.yaml"
    cfg = load_config(cfg_path, [f"model.policy_path={SHAPES / 'llama3_8b_shape.json'}"])
    p16 = plan(cfg, Cluster(2, 8), SHAPES / "llama_34b_shape.json", gpu_memory_gib=80)
    assert p16["fits"]
    reward = next(r for r in p16["roles"] if r["role"] == "reward")
    assert reward["total_params"] > 30e9 and reward["model_states_gpu"] < 2 * reward["total_params"] / 8
    p1 = plan(cfg, Cluster(1, 1), SHAPES / "llama_34b_shape.json", gpu_memory_gib=80)
    assert not p1["fits"]


def test_cli_default_testbed_plan_writes_json(tmp_path):
    res = CliRunner().invoke(app, ["estimate-memory", "--set", "deepspeed.zero_stage=3", "--num-gpus-per-node", "2",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "memory.json").read_text())
    assert [r["role"] for r in data["roles"]] == ["actor", "critic", "reference", "reward"]
    assert data["cluster"]["world_size"] == 2
    assert data["total_per_rank"]["gpu_bytes_upper"] == sum(r["gpu_bytes"] for r in data["roles"])
    assert all(r["model_source"].startswith("embedded testbed") for r in data["roles"])
    assert all(r["zero_stage"] == 3 for r in data["roles"])


def test_judge_reward_has_no_reward_role(tmp_path):
    res = CliRunner().invoke(app, ["estimate-memory", "--set", "reward.type=judge", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout[res.stdout.index("{"):])
    assert data["omitted_roles"] == ["reward"] and len(data["roles"]) == 3


def test_missing_model_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_model"
    res = CliRunner().invoke(app, ["estimate-memory", "--set", f"model.policy_path={missing}"])
    assert res.exit_code != 0
    assert isinstance(res.exception, MemoryPlanError)
    msg = str(res.exception)
    assert "model.policy_path" in msg and str(missing) in msg and "config.json" in msg


def test_bad_reward_folder_and_user_policy_without_reward_are_clear_errors(tmp_path):
    empty = tmp_path / "ensemble"
    empty.mkdir()
    policy = SHAPES / "llama3_8b_shape.json"
    with pytest.raises(MemoryPlanError, match=r"reward.path: .*ensemble has neither backbone/config.json"):
        role_shapes(load_config(None, [f"model.policy_path={policy}", f"reward.path={empty}"]))
    with pytest.raises(MemoryPlanError, match="reward.path is null with a user policy"):
        role_shapes(load_config(None, [f"model.policy_path={policy}"]))
    bad_json = tmp_path / "config.json"
    bad_json.write_text('{"hidden_size": 8}')
    with pytest.raises(MemoryPlanError, match="no 'model_type' key"):
        load_hf_config(bad_json, "--reward-model-config")


def test_bad_hostfile_line_names_file_and_line(tmp_path):
    hf = tmp_path / "hosts"
    hf.write_text("# comment\nnode-a slots=8\nnode-b 8\n")
    with pytest.raises(MemoryPlanError, match=r"hosts:3: expected 'HOSTNAME slots=N'"):
        read_hostfile(hf)


@pytest.mark.parametrize("lora", [False, True])
def test_shared_trunk_plans_no_critic_and_a_head_on_the_actor(lora):
    """model.critic=shared_trunk: no critic model in the plan; the actor holds h + 1 more
    parameters (trainable beside LoRA adapters), the reference the plain causal LM's."""
    over = ["deepspeed.zero_stage=3", "deepspeed.precision=bf16", f"model.policy_path={SHAPES / 'llama3_8b_shape.json'}",
            *(["model.lora.enabled=true"] if lora else [])]
    sep = plan(load_config(None, over), Cluster(1, 8), SHAPES / "llama_34b_shape.json")
    shared = plan(load_config(None, [*over, "model.critic=shared_trunk"]), Cluster(1, 8), SHAPES / "llama_34b_shape.json")
    roles_sep, roles_sh = ({r["role"]: r for r in p["roles"]} for p in (sep, shared))
    assert "critic" in roles_sep and "critic" not in roles_sh and shared["omitted_roles"] == ["critic"]
    h = 4096  # Llama 3 8B
    assert roles_sh["actor"]["total_params"] == roles_sep["actor"]["total_params"] + h + 1
    assert roles_sh["reference"]["total_params"] == roles_sep["reference"]["total_params"]
    if lora:
        assert roles_sh["actor"]["details"]["trainable_params"] == roles_sep["actor"]["details"]["trainable_params"] + h + 1
    assert shared["total_per_rank"]["gpu_bytes_model_states"] < sep["total_per_rank"]["gpu_bytes_model_states"]


def test_deep_ensemble_folder_counts_every_member(tmp_path):
    """A deep ensemble (`members/NN/`) holds K backbones: the reward role's parameters are K times
    one member's plus K heads, counted against the instantiated model."""
    from transformers import LlamaConfig

    from varpo.reward.deep import DeepEnsembleRewardModel

    conf = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       max_position_embeddings=64)
    model = DeepEnsembleRewardModel.from_backbone(conf, 3)
    model.save_pretrained(tmp_path / "deep")
    policy = SHAPES / "llama3_8b_shape.json"
    shapes = role_shapes(load_config(None, [f"model.policy_path={policy}", f"reward.path={tmp_path / 'deep'}",
                                            "reward_training.num_heads=3"]))
    assert shapes["reward"].total_params == sum(p.numel() for p in model.parameters())


def test_reward30b_bounds_the_scoring_working_set_and_the_remote_variant_plans_no_reward():
    """cluster_reward30b.yaml's reward settings bound what a scoring rank gathers (DeepSpeed's defaults
    would prefetch ~1e9 parameters through flat buffers); the remote variant holds no reward model."""
    policy = f"model.policy_path={SHAPES / 'llama3_8b_shape.json'}"
    cfg = load_config(ROOT / "configs" / "cluster_reward30b.yaml", [policy])
    default = load_config(ROOT / "configs" / "cluster_reward30b.yaml",
                          [policy, "deepspeed.reward.max_live_parameters=null", "deepspeed.reward.allgather_sequential=false"])

    def scoring(c):
        p = plan(c, Cluster(2, 8), SHAPES / "llama_34b_shape.json")
        return next(r for r in p["roles"] if r["role"] == "reward")["details"]["working_set"]["score"]

    assert scoring(cfg) < 1.0 * 2**30 < 2 * 2**30 < scoring(default)
    remote = plan(load_config(ROOT / "configs" / "cluster_reward30b_remote.yaml", [policy]), Cluster(1, 8),
                  gpu_memory_gib=80)
    assert remote["omitted_roles"] == ["reward"] and remote["fits"]
    assert [r["role"] for r in remote["roles"]] == ["actor", "critic", "reference"]
