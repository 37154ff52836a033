"""Per-rank memory planning for the four PPO roles (docs/design.md §2, §4): how many bytes of GPU and
CPU memory each rank needs for actor, critic (trainable), reference and reward (frozen), under the
ZeRO stage, offload options, precision and world size of a config.

Sources of each figure (reported per role in the output's `method` fields):
- Parameter counts: the models' HF configs, instantiated on the `meta` device (no weights are
  allocated), counted the way DeepSpeed counts them (shared parameters once; the largest layer is
  the module with the most parameters of its own).
- Trainable model states (parameters, gradients, Adam states): DeepSpeed's own estimators,
  `estimate_zero3_model_states_mem_needs` / `estimate_zero2_model_states_mem_needs` (the functions
  behind the `..._all_live` / `..._all_cold` printers, which only print). They assume mixed
  precision: 2 B 16-bit params + 18 B/param of (16-bit grads, fp32 grads, fp32 master params,
  fp32 Adam m and v), with `additional_buffer_factor` on CPU. Stages 0 and 1, which DeepSpeed
  has no estimator for, use explicit byte counts (mixed: 2+2 B/param whole + 16 B/param of fp32
  state, whole at stage 0, sharded at stage 1; fp32: 4+4 whole + 8 B/param Adam). DeepSpeed's CPU
  figure is per node; per rank is that divided by the GPUs per node.
- Frozen model parameters (no DeepSpeed estimator exists for inference): b·P whole (stage 0), or
  b·P/N sharded plus the gathered working set b·(largest layer + prefetch bucket) under ZeRO-3;
  with parameter offload the shard lives in CPU memory. b = 2 bytes (bf16/fp16) or 4 (fp32).
- LoRA (`model.lora`): the adapters (counted by attaching them with peft on the meta device; plus
  the critic's value head) are the trainable model states, through the same estimators; the base
  is frozen parameters as above, or with `model.quantization.load_in_4bit` 0.5 B per linear weight
  plus bitsandbytes' block constants (64-weight blocks, double-quantized) and the compute dtype for
  the rest. A reference served by the actor's base (`model.lora.reference_from_base`) holds none.
- Activations and KV cache: **estimates** from batch B, sequence length S, hidden size h, layers L,
  heads a, MLP width, vocabulary V (formulas in the functions below). They ignore allocator
  fragmentation, communication buckets, CUDA context (~0.5-1 GiB per GPU) and framework overhead.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .config import ConfigError

GIB = 2**30
ROLES = ("actor", "critic", "reference", "reward")
TRAINABLE = {"actor": True, "critic": True, "reference": False, "reward": False}


class MemoryPlanError(ConfigError):
    """A planning input is missing or wrong, phrased for the user (which field, what was expected)."""


# ----------------------------------------------------------------------------- model shapes
@dataclass
class ModelShape:
    """What the estimates need to know about one role's model."""

    total_params: int
    largest_layer_params: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    lm_head: bool  # causal LM (logits over the vocabulary) or a backbone with a small head
    source: str
    linear_params: int = 0  # weights of the linear layers a 4-bit load quantizes (all but the output head)
    lora_params: int = 0  # LoRA adapter parameters when model.lora applies to this role's model
    value_head_params: int = 0  # a value head on this causal LM's trunk (model.critic=shared_trunk)
    # (name, own parameter counts) of every module a forward calls, in order (ZeRO-3 fetches and
    # releases parameters module by module: `zero3_forward_working_set` replays that)
    modules: list[tuple[str, list[int]]] = field(default_factory=list)


def count_params(model) -> tuple[int, int]:
    """(total parameters, largest layer's own parameters), as DeepSpeed's `model_to_params`
    counts them. `model.parameters()` yields a tied/shared parameter once (DeepSpeed dedupes by
    data_ptr, which on the meta device is 0 for every tensor, so it cannot be reused here)."""
    total = sum(p.numel() for p in model.parameters())
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    return total, largest


def module_params(model) -> list[tuple[str, list[int]]]:
    """(name, own parameter counts) of each module in `model.named_modules()` order (the order HF
    models call them in, up to parameterless helpers and norms), skipping containers that are never
    called (ModuleList/Dict)."""
    from torch import nn

    return [(name, [p.numel() for p in m.parameters(recurse=False)]) for name, m in model.named_modules()
            if not isinstance(m, (nn.ModuleList, nn.ModuleDict))]


def on_meta(build: Callable[[], object]):
    """Run `build()` with the meta device as the default: modules get shapes, no storage. HF's global
    ZeRO-3 switch (set while a ZeRO-3 engine's model is alive in this process) is off meanwhile:
    under it, from_config builds through zero.Init, which allocates real partitioned weights."""
    import torch
    import transformers.integrations.deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        with torch.device("meta"):
            return build()
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def load_hf_config(path: str | Path, field_name: str):
    """AutoConfig of an HF model folder, a config.json file, or a name in the local HF cache;
    `field_name` is the config field the path came from, for the error message."""
    from transformers import AutoConfig

    p = Path(path).expanduser()
    if p.is_file():
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MemoryPlanError(f"{field_name}: {p} is not a readable JSON model config ({exc})") from None
        if "model_type" not in data:
            raise MemoryPlanError(f"{field_name}: {p} has no 'model_type' key; expected an HF config.json")
        try:
            return AutoConfig.for_model(**data)
        except (ValueError, KeyError) as exc:
            raise MemoryPlanError(f"{field_name}: {p}: {exc}") from None
    if p.is_dir() and not (p / "config.json").is_file():
        raise MemoryPlanError(f"{field_name}: folder {p} has no config.json; expected an HF model folder")
    try:
        conf = AutoConfig.from_pretrained(str(p) if p.is_dir() else str(path))
    except (OSError, ValueError) as exc:
        raise MemoryPlanError(
            f"{field_name}: {path!s} not found (expected an HF model folder with config.json, a config.json "
            f"file, or a model name in the local HF cache): {str(exc).splitlines()[0]}"
        ) from None
    return conf


def _text_config(conf):
    # multimodal configs keep the language model's sizes in a sub-config
    get = getattr(conf, "get_text_config", None)
    return get() if callable(get) else conf


def linear_params(model) -> int:
    """Weights of the linear layers (nn.Linear, GPT-2's Conv1D) except the output head: what
    bitsandbytes quantizes in a 4-bit load (it keeps the head in the compute dtype)."""
    return sum(m.weight.numel() for n, m in model.named_modules()
               if type(m).__name__ in ("Linear", "Conv1D") and not n.endswith("lm_head"))


def lora_params(model, lora_cfg) -> int:
    """Adapter parameters peft adds to `model` for `lora_cfg` (a ModelLoraConfig), on the meta device."""
    from .models.loading import param_counts
    from .models.lora import attach_lora

    try:
        wrapped = on_meta(lambda: attach_lora(model, lora_cfg.r, lora_cfg.alpha, 0.0, lora_cfg.target_modules))
    except ValueError as exc:
        raise MemoryPlanError(str(exc)) from None
    return param_counts(wrapped)[0]


def shape_of(conf, kind: str, num_heads_extra: int = 0, source: str = "", lora=None) -> ModelShape:
    """Count a model built from `conf` on the meta device.

    kind: "causal_lm" (actor, reference), "value" (critic: backbone + 1 linear head) or
    "ensemble" (reward: backbone + `num_heads_extra` linear heads with bias). `lora`: a
    ModelLoraConfig whose adapters this role's model carries (counted into `lora_params`)."""
    from transformers import AutoModel, AutoModelForCausalLM

    build = AutoModelForCausalLM.from_config if kind == "causal_lm" else AutoModel.from_config
    try:
        model = on_meta(lambda: build(conf))
    except (ValueError, KeyError) as exc:
        raise MemoryPlanError(f"{source or 'model'}: cannot build a {kind} model from its config: {exc}") from None
    total, largest = count_params(model)
    shape = _shape(conf, total, largest, kind, num_heads_extra, source)
    shape.linear_params = linear_params(model)
    shape.modules = _with_heads(module_params(model), kind, shape.hidden_size, num_heads_extra)
    if lora is not None:
        shape.lora_params = lora_params(model, lora)
    return shape


def _with_heads(mods: list[tuple[str, list[int]]], kind: str, h: int, k: int) -> list[tuple[str, list[int]]]:
    """A backbone's module trace inside its varpo wrapper: the wrapper module first, then the
    critic's value head (h + 1) or the ensemble's K heads (one [K, h] linear with bias) last."""
    if kind == "value":
        return [("", []), *[(f"backbone.{n}".rstrip("."), p) for n, p in mods], ("value_head", [h, 1])]
    if kind == "ensemble":
        return [("", []), *[(f"backbone.{n}".rstrip("."), p) for n, p in mods], ("heads", [k * h, k])]
    return mods


def _shape(conf, total: int, largest: int, kind: str, num_heads_extra: int, source: str) -> ModelShape:
    t = _text_config(conf)
    h = int(t.hidden_size)
    if kind == "value":
        total, largest = total + h + 1, max(largest, h + 1)
    elif kind == "ensemble":
        heads = num_heads_extra * (h + 1)
        total, largest = total + heads, max(largest, heads)  # K heads are one module (or K small ones)
    a = int(t.num_attention_heads)
    kv = int(getattr(t, "num_key_value_heads", None) or a)
    hd = int(getattr(t, "head_dim", None) or h // a)
    inter = int(getattr(t, "intermediate_size", None) or getattr(t, "n_inner", None) or 4 * h)
    return ModelShape(
        total_params=total, largest_layer_params=largest, hidden_size=h, num_layers=int(t.num_hidden_layers),
        num_heads=a, num_kv_heads=kv, head_dim=hd, intermediate_size=inter, vocab_size=int(t.vocab_size),
        lm_head=kind == "causal_lm", source=source,
    )


def testbed_shape(tb_cfg, kind: str, num_heads_extra: int = 0, lora=None) -> ModelShape:
    """The embedded default's LM, built by the testbed's own `build_model` on the meta device.
    Its vocabulary is `testbed.vocab_size`, the upper bound of the trained tokenizer's."""
    try:
        from .testbed.lm import build_model
    except ImportError:
        raise MemoryPlanError(
            "no model paths given (model.policy_path is null) and the embedded testbed is not available: "
            "set model.policy_path (and reward.path, or --reward-model-config) to HF model folders"
        ) from None

    class _VocabOnly:  # build_model reads only the vocabulary size and special ids
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

        def __len__(self):
            return tb_cfg.vocab_size

    lm = on_meta(lambda: build_model(tb_cfg, _VocabOnly()))
    src = "embedded testbed LM (testbed.* sizes)"
    model = lm if kind == "causal_lm" else lm.model  # the backbone without the LM head
    total, largest = count_params(model)
    shape = _shape(lm.config, total, largest, kind, num_heads_extra, src)
    shape.linear_params = linear_params(model)
    shape.modules = _with_heads(module_params(model), kind, shape.hidden_size, num_heads_extra)
    if lora is not None:
        shape.lora_params = lora_params(model, lora)
    return shape


def reward_config_path(reward_path: str | Path) -> Path:
    """The backbone config inside a reward-ensemble folder: `backbone/config.json` if present
    (ensemble layout), `members/00/config.json` (a deep ensemble's first member), else the folder's
    own `config.json` (a plain HF folder)."""
    p = Path(reward_path).expanduser()
    for cand in (p / "backbone" / "config.json", p / "members" / "00" / "config.json", p / "config.json"):
        if cand.is_file():
            return cand.parent
    if p.is_file():
        return p
    raise MemoryPlanError(
        f"reward.path: {p} has neither backbone/config.json nor config.json "
        "(expected a trained ensemble folder or an HF model folder); or pass --reward-model-config"
    )


def role_shapes(cfg, reward_model_config: str | Path | None = None) -> dict[str, ModelShape | None]:
    """Model shapes of the four roles from the config (None: the role holds no model, e.g. a
    judge or gold reward runs outside the process group)."""
    K = cfg.reward_training.num_heads
    policy = cfg.model.policy_path
    lc = cfg.model.lora
    a_lora = lc if lc.enabled else None
    c_lora = lc if lc.enabled and lc.critic else None
    if policy is None:
        actor = testbed_shape(cfg.testbed, "causal_lm", lora=a_lora)
        critic = (shape_of(load_hf_config(cfg.model.critic_path, "model.critic_path"), "value",
                           source=str(cfg.model.critic_path), lora=c_lora)
                  if cfg.model.critic_path else testbed_shape(cfg.testbed, "value", lora=c_lora))
    else:
        pconf = load_hf_config(policy, "model.policy_path")
        actor = shape_of(pconf, "causal_lm", source=str(policy), lora=a_lora)
        cpath = cfg.model.critic_path
        critic = shape_of(load_hf_config(cpath, "model.critic_path") if cpath else pconf, "value",
                          source=str(cpath or policy), lora=c_lora)
    reward: ModelShape | None
    if cfg.reward.type not in ("ensemble", "sequence_classifier"):  # a judge, the gold, or a reward server:
        reward = None                                                # nothing in the process group
    elif reward_model_config is not None:
        reward = shape_of(load_hf_config(reward_model_config, "--reward-model-config"), "ensemble", K,
                          source=str(reward_model_config))
    elif cfg.reward.type == "sequence_classifier":  # one HF reward model: its trunk and one scalar head
        reward = shape_of(load_hf_config(cfg.reward.path, "reward.path"), "ensemble", 1, source=str(cfg.reward.path))
    elif cfg.reward.path:
        rp = reward_config_path(cfg.reward.path)
        reward = shape_of(load_hf_config(rp, "reward.path"), "ensemble", K, source=str(rp))
        if rp.parent.name == "members":  # a deep ensemble holds K backbones (one member's activations at a time)
            members, head = len(list(rp.parent.glob("*/config.json"))), reward.hidden_size + 1
            reward = replace(reward, total_params=members * (reward.total_params - K * head + head),
                             linear_params=members * reward.linear_params,
                             modules=[("", []), *(m for _ in range(members) for m in reward.modules[1:-1]),
                                      ("heads", [members * (head - 1), members])])
    elif policy is None:
        reward = testbed_shape(cfg.testbed, "ensemble", K)
    else:
        raise MemoryPlanError(
            "reward.path is null with a user policy (model.policy_path): the default ensemble is trained on "
            "the embedded testbed's LM, which is not this policy; set reward.path or pass --reward-model-config"
        )
    if cfg.model.critic == "shared_trunk":
        # no critic model: the actor's engine carries the value head (h + 1 parameters, trainable
        # beside LoRA adapters); the reference keeps the plain causal LM's shape
        h = actor.hidden_size
        shared = replace(actor, total_params=actor.total_params + h + 1, value_head_params=h + 1,
                         source=f"{actor.source} + value head (model.critic=shared_trunk)",
                         modules=[*actor.modules, ("value_head", [h, 1])])
        return {"actor": shared, "critic": None, "reference": actor, "reward": reward}
    return {"actor": actor, "critic": critic, "reference": actor, "reward": reward}


# ----------------------------------------------------------------------------- byte formulas
@dataclass(frozen=True)
class Cluster:
    num_nodes: int = 1
    gpus_per_node: int = 1

    def __post_init__(self):
        if self.num_nodes < 1 or self.gpus_per_node < 1:
            raise MemoryPlanError(f"need ≥ 1 node and ≥ 1 GPU per node, got {self.num_nodes} × {self.gpus_per_node}")

    @property
    def world(self) -> int:
        return self.num_nodes * self.gpus_per_node


def read_hostfile(path: str | Path) -> Cluster:
    """DeepSpeed hostfile (`host slots=N` per line, # comments) -> Cluster. Slot counts must agree
    (one GPU count per node is what DeepSpeed's estimators model)."""
    p = Path(path)
    if not p.is_file():
        raise MemoryPlanError(f"hostfile not found: {p}")
    slots = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        kv = dict(x.split("=", 1) for x in parts[1:] if "=" in x)
        if len(parts) != 2 or "slots" not in kv or not kv["slots"].isdigit():
            raise MemoryPlanError(f"{p}:{n}: expected 'HOSTNAME slots=N', got {line!r}")
        slots.append(int(kv["slots"]))
    if not slots:
        raise MemoryPlanError(f"{p}: no hosts listed")
    if len(set(slots)) > 1:
        raise MemoryPlanError(f"{p}: hosts have different slot counts {sorted(set(slots))}; the estimate assumes one")
    return Cluster(len(slots), slots[0])


def trainable_model_states(P: int, largest: int, stage: int, cluster: Cluster, offload_optimizer: bool,
                           offload_param: bool, fp32: bool = False, buffer_factor: float = 1.5) -> dict:
    """Parameters + gradients + Adam states of a trainable model, per rank, from DeepSpeed's
    estimators (stages 2, 3; they assume mixed precision whatever `fp32` says) or explicit byte
    counts (stages 0, 1). `cpu` is per rank, `cpu_node` DeepSpeed's per-node figure."""
    from .dist import import_deepspeed

    import_deepspeed()
    N, G = cluster.world, cluster.gpus_per_node
    note = ""
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        both = offload_optimizer or offload_param
        cpu_node, gpu, _ = estimate_zero3_model_states_mem_needs(
            total_params=P, largest_layer_params=largest, num_gpus_per_node=G, num_nodes=cluster.num_nodes,
            cpu_offload=both, cpu_offload_params=offload_param and offload_optimizer, zero_init=True,
            additional_buffer_factor=buffer_factor)
        method = "deepspeed estimate_zero3_model_states_mem_needs"
        if offload_param and not offload_optimizer:
            # DeepSpeed's estimator has no "params offloaded, optimizer on GPU" case: take the
            # no-offload figure and move the 16-bit parameter shard to CPU
            cpu_node, gpu, _ = estimate_zero3_model_states_mem_needs(
                total_params=P, largest_layer_params=largest, num_gpus_per_node=G, num_nodes=cluster.num_nodes,
                cpu_offload=False, cpu_offload_params=False, zero_init=True, additional_buffer_factor=buffer_factor)
            shard = int(2 * P / N)
            gpu, cpu_node = gpu - shard, cpu_node + shard * G
            note = "offload_param without offload_optimizer: DeepSpeed's no-offload figure with the 16-bit shard moved to CPU"
    elif stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu_node, gpu = estimate_zero2_model_states_mem_needs(
            total_params=P, num_gpus_per_node=G, num_nodes=cluster.num_nodes, cpu_offload=offload_optimizer,
            additional_buffer_factor=buffer_factor)
        method = "deepspeed estimate_zero2_model_states_mem_needs"
    else:
        # DeepSpeed has no stage 0/1 estimator. Byte counts per parameter: mixed precision keeps
        # 16-bit params and grads whole (2+2) and 16 B of fp32 state (master params, fp32 grads
        # copy folded into DeepSpeed's 18, Adam m and v) whole at stage 0, sharded at stage 1;
        # fp32 keeps params and grads whole (4+4) and Adam m, v (8) whole/sharded.
        whole, state = (4 + 4, 8) if fp32 else (2 + 2, 16)
        sharded = state * P / N if stage == 1 else state * P
        if offload_optimizer and stage == 1:
            gpu, cpu_node = whole * P, int(sharded * G * buffer_factor)
        else:
            gpu, cpu_node = int(whole * P + sharded), int(4 * P * G * buffer_factor)  # CPU: load-time fp32 copy
        method = (f"stage {stage} (no DeepSpeed estimator): {whole} B/param whole + {state} B/param "
                  + ("sharded over ranks" if stage == 1 else "whole") + (", fp32" if fp32 else ", mixed precision"))
    return {"gpu": int(gpu), "cpu_node": int(cpu_node), "cpu": int(cpu_node / G), "method": method, "note": note}


# ----------------------------------------------------------------------------- ZeRO-3 working sets
GLOO_THREADS = 2  # torch's ProcessGroupGloo worker threads (Options.threads): collectives running at once
@dataclass(frozen=True)
class Zero3Knobs:
    """The DeepSpeed settings that decide how many parameters a ZeRO-3 rank holds gathered."""

    max_live: int = int(1e9)  # stage3_max_live_parameters
    prefetch_bucket: int = int(5e7)  # stage3_prefetch_bucket_size
    max_reuse_distance: int = int(1e9)  # stage3_max_reuse_distance (DeepSpeed's default; varpo does not set it)
    sequential: bool = False  # stage3_allgather_sequential
    persistence_threshold: int = 0  # stage3_param_persistence_threshold

    @classmethod
    def of(cls, zero: dict) -> Zero3Knobs:
        return cls(max_live=int(zero.get("stage3_max_live_parameters", 1e9)),
                   prefetch_bucket=int(zero.get("stage3_prefetch_bucket_size", 5e7)),
                   max_reuse_distance=int(zero.get("stage3_max_reuse_distance", 1e9)),
                   sequential=bool(zero.get("stage3_allgather_sequential", False)),
                   persistence_threshold=int(zero.get("stage3_param_persistence_threshold", 0)))


def zero3_forward_working_set(modules: list[tuple[str, list[int]]], knobs: Zero3Knobs,
                              staging: bool = False, keep: set[int] | None = None,
                              live_out: list[int] | None = None) -> list[int]:
    """Elements a ZeRO-3 rank (world > 1) holds for gathered parameters while each module of a
    forward runs, once DeepSpeed knows the forward's order (every forward after the first): a replay
    of DeepSpeed 0.19's PartitionedParameterCoordinator (fetch_sub_module / release_sub_module).

    Before a module runs its own parameters are gathered if not yet there (and waited on at once);
    then, at every module (containers included), up to min(prefetch bucket, max_live − live) more
    elements of upcoming parameters are prefetched in one gather, the last parameter taken whole;
    after the module its parameters are released (a forward uses each once), except in `keep` (a
    training forward keeps what the backward reuses soon, `zero3_training_kept`). A gather of
    several parameters goes through one flat buffer; the first wait on any of them copies all of
    them out, and the buffer is freed only when the last of them has been fetched: until then both
    copies count. Gathered alone (`sequential`, or a single parameter) a parameter is its buffer.
    `staging` (gloo, the CPU backend): a running collective copies its output through a buffer of
    its own size; gloo's worker threads (2) run them in order, so those are the two oldest
    prefetches not yet waited on (a fetch is waited on at once: its staging never meets the
    compute; NCCL writes in place). Parameters under the persistence threshold are always whole and are not
    counted. Returns, per module, the elements held at that module's peak (after its own fetch and
    the prefetch it triggers); `live_out`, if given, receives DeepSpeed's own count at that point
    (parameters gathered or in flight, its n_available_params)."""
    from collections import deque

    pid_size: dict = {}
    order: list[list] = []
    for i, (_name, own) in enumerate(modules):
        ids = []
        for j, item in enumerate(own):  # a count, or (key, count) for a parameter several modules use
            key, n = item if isinstance(item, tuple) else ((i, j), item)
            if n >= knobs.persistence_threshold:
                pid_size[key] = n
                ids.append(key)
        order.append(ids)
    queue = deque(pid for ids in order for pid in ids)
    live = 0  # elements gathered or in flight (DeepSpeed's n_available_params)
    held = 0  # elements allocated: gathered parameters, flat buffers not yet freed
    gather_of: dict[int, int] = {}  # parameter in flight -> its gather
    gathers: dict[int, dict] = {}
    running: deque[int] = deque()  # prefetches in flight, oldest first (gloo stages the oldest)
    avail: set[int] = set()

    def staged() -> int:
        return sum(gathers[g]["size"] for g in list(running)[:GLOO_THREADS]) if staging else 0

    def gather(pids: list[int], prefetch: bool) -> None:
        nonlocal live, held
        if not pids:
            return
        size = sum(pid_size[p] for p in pids)
        live += size
        held += size
        g = len(gathers)
        gathers[g] = {"size": size, "pending": set(pids), "done": False, "flat": not knobs.sequential and len(pids) > 1}
        for p in pids:
            gather_of[p] = g
        if prefetch:
            running.append(g)

    def wait(p: int) -> None:
        nonlocal held
        g = gather_of.pop(p, None)
        if g is None:
            return
        rec = gathers[g]
        if not rec["done"]:  # the first wait completes the gather
            rec["done"] = True
            if g in running:
                running.remove(g)
            if rec["flat"]:
                held += rec["size"]  # every parameter of a flat buffer is copied out now
            for q in rec["pending"]:
                avail.add(q)
        rec["pending"].discard(p)
        if rec["flat"] and not rec["pending"]:
            held -= rec["size"]  # the flat buffer, once each of its parameters has been fetched

    out = []
    keep = keep or set()
    names = [n for n, _ in modules]
    open_modules: list[int] = []  # a module is released after its forward, i.e. after its submodules

    def release(i: int) -> None:
        nonlocal held, live
        if i in keep:
            return
        for p in order[i]:  # its own copy goes (a flat buffer only when emptied)
            if p in avail:
                avail.discard(p)
                held -= pid_size[p]
                live -= pid_size[p]

    def inside(child: str, parent: str) -> bool:
        return parent == "" or child.startswith(parent + ".")

    for i, ids in enumerate(order):
        while open_modules and not inside(names[i], names[open_modules[-1]]):
            release(open_modules.pop())
        need = [p for p in ids if p not in avail and p not in gather_of]
        gather(need, prefetch=False)
        peak = held + staged() + (sum(pid_size[p] for p in need) if staging else 0)
        for p in ids:
            wait(p)
            peak = max(peak, held + staged())
        while queue and queue[0] in ids:
            queue.popleft()
        if knobs.prefetch_bucket > 0:
            limit, chosen, n = min(knobs.max_live - live, knobs.prefetch_bucket), [], 0
            while queue and n < limit:
                p = queue.popleft()
                if p not in avail and p not in gather_of and p not in chosen:
                    chosen.append(p)
                    n += pid_size[p]
            gather(chosen, prefetch=True)
        out.append(max(peak, held + staged()))
        if live_out is not None:
            live_out.append(live)
        open_modules.append(i)
    return out


def zero3_training_kept(modules: list[tuple[str, list[int]]], knobs: Zero3Knobs) -> set[int]:
    """Modules whose parameters a training forward keeps gathered for the backward: DeepSpeed releases
    a module's parameters only if they are not used again within stage3_max_reuse_distance elements
    of the trace, and the backward reuses module i after the modules behind it run forward and
    backward (≈ twice their parameters)."""
    after, keep = 0, set()
    for i in range(len(modules) - 1, -1, -1):
        if 2 * after < knobs.max_reuse_distance:
            keep.add(i)
        after += sum(n for n in modules[i][1] if n >= knobs.persistence_threshold)
    return keep


def persistent_params(modules: list[tuple[str, list[int]]], threshold: int) -> int:
    """Elements of the parameters ZeRO-3 keeps whole on every rank (fewer elements than the threshold)."""
    return sum(n for _name, own in modules for n in own if n < threshold)


def frozen_params(P: int, largest: int, stage: int, world: int, offload_param: bool, bytes_per_param: int,
                  prefetch_bucket: int = 0, persistent: int = 0) -> dict:
    """Resident parameters of a frozen model, per rank: whole (stages 0-2), or under ZeRO-3 a 1/world
    shard (on CPU with parameter offload) plus the parameters under the persistence threshold,
    which stay whole on every rank. What ZeRO-3 gathers while the model runs is its forward's
    working set (`zero3_frozen_forward`), counted with the phase; `largest` and `prefetch_bucket`
    are kept for callers that plan a gathered layer into the states (the 4-bit base)."""
    b = bytes_per_param
    if stage != 3:
        return {"gpu": b * P, "cpu": 0, "method": f"whole model, {b} B/param (stage {stage})"}
    shard = int(b * (P - persistent) / world)
    whole = int(b * persistent)
    if offload_param:
        return {"gpu": whole, "cpu": shard,
                "method": f"ZeRO-3 shard {b}·P/{world} on CPU (+ gathered working set on GPU while it runs)"}
    return {"gpu": shard + whole, "cpu": 0,
            "method": f"ZeRO-3 shard {b}·P/{world} (+ gathered working set while it runs)"}


def quantized_bytes_per_param(double_quant: bool) -> float:
    """bitsandbytes 4-bit storage per weight: half a byte, plus one absmax per block of 64 weights
    (fp32; with double quantization 8-bit, plus one fp32 constant per 256 of those)."""
    return 0.5 + (1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64)


def frozen_base_params(shape: ModelShape, stage: int, world: int, offload_param: bool, b: int, quant,
                       conf: dict) -> dict:
    """The frozen base under LoRA (or a frozen reference) per rank: 4-bit linear weights plus the
    rest in the compute dtype when `quant.load_in_4bit` (never ZeRO-3: refused by the config),
    else `frozen_params`."""
    if quant.load_in_4bit:
        qb = quantized_bytes_per_param(quant.double_quant)
        cb = 4 if quant.compute_dtype == "float32" else 2
        other = shape.total_params - shape.linear_params
        return {"gpu": int(qb * shape.linear_params + cb * other), "cpu": 0,
                "method": f"4-bit {quant.quant_type}: {qb:.3f} B/param × {shape.linear_params:,} linear weights "
                          f"+ {cb} B/param × {other:,} others, whole on each rank"}
    bucket = conf["zero_optimization"].get("stage3_prefetch_bucket_size", 0) if stage == 3 else 0
    return frozen_params(shape.total_params, shape.largest_layer_params, stage, world, offload_param, b, bucket)


def training_activations(s: ModelShape, batch: int, seq: int, act_bytes: int, checkpointing: bool,
                         eager: bool = False) -> int:
    """Activation memory of a forward+backward (estimate). Per layer, Korthikanti et al. 2022
    ("Reducing Activation Recomputation in Large Transformer Models", eq. 1), written for 2-byte
    activations and a 4h MLP: S·B·h·(34 + 5·a·S/h) bytes; scaled by act_bytes/2 and by the MLP
    width (the MLP's 19 of the 34 scale with intermediate/4h); the 5·a·S/h of stored attention
    scores only with eager attention (SDPA keeps O(S) per head). With gradient checkpointing only
    each layer's input (act_bytes·S·B·h) is kept, plus one layer recomputed in full. Causal LMs add
    the logits in the activation dtype and an fp32 log-softmax with its gradient: (act_bytes+8)·B·S·V."""
    h, a, L = s.hidden_size, s.num_heads, s.num_layers
    per_layer_coeff = 15 + 19 * s.intermediate_size / (4 * h) + (5 * a * seq / h if eager else 0)
    per_layer = seq * batch * h * per_layer_coeff * act_bytes / 2
    body = (L * act_bytes * seq * batch * h + per_layer) if checkpointing else L * per_layer
    head = (act_bytes + 8) * batch * seq * s.vocab_size if s.lm_head else 0
    return int(body + head)


def inference_activations(s: ModelShape, batch: int, seq: int, act_bytes: int, eager: bool = False) -> int:
    """Peak transient memory of a no-grad forward (estimate, checked against measurement by
    benchmarks/memory_vs_estimate.py): inside a decoder layer the MLP holds act(gate), up and their
    product beside the residual stream, act_bytes·B·S·(3·intermediate + 4h), or the attention its
    q, k, v (KV heads repeated), output and residual, act_bytes·B·S·7h, whichever is larger; eager
    attention adds its scores act_bytes·B·a·S² (SDPA avoids them); causal LMs add the logits in the
    activation dtype and in fp32 (log-probs are taken in fp32): (act_bytes+4)·B·S·V."""
    return max(module_activations(s, batch, seq, act_bytes, eager).values())


def module_activations(s: ModelShape, batch: int, seq: int, act_bytes: int, eager: bool = False) -> dict[str, int]:
    """Transient activation bytes of a no-grad forward while each kind of module runs: `mlp` and
    `attn` inside a decoder layer, `layer` (its norms), `outside` (embeddings, final norm, heads)
    and `lm_head` (the logits, causal LMs)."""
    h, bst = s.hidden_size, act_bytes * batch * seq
    scores = act_bytes * batch * s.num_heads * seq * seq if eager else 0
    out = {"mlp": bst * (3 * s.intermediate_size + 4 * h), "attn": bst * 7 * h + scores, "layer": bst * 3 * h,
           "outside": bst * 2 * h}
    if s.lm_head:
        out["lm_head"] = (act_bytes + 4) * batch * seq * s.vocab_size + bst * 2 * h
    return out


_LAYER = re.compile(r"(^|\.)(layers|h|layer|blocks)\.\d+(\.|$)")


def module_kind(name: str) -> str:
    """Where a module sits, for `module_activations` (HF naming: layers.N / h.N, mlp, self_attn/attn)."""
    if name.endswith("lm_head"):
        return "lm_head"
    if not _LAYER.search(name):
        return "outside"
    tail = name.split(".")
    if any(t in ("mlp", "feed_forward", "ffn") for t in tail):
        return "mlp"
    if any("attn" in t or "attention" in t for t in tail):
        return "attn"
    return "layer"


def zero3_frozen_forward(s: ModelShape, knobs: Zero3Knobs, world: int, act_bytes: int, batch: int, seq: int,
                         eager: bool, staging: bool) -> dict:
    """A frozen ZeRO-3 role's forward: the peak over its modules of gathered parameters
    (`zero3_forward_working_set`; none at world size 1, where DeepSpeed's shard is the parameter
    itself) plus the activations of the module running then."""
    acts = module_activations(s, batch, seq, act_bytes, eager)
    held = zero3_forward_working_set(s.modules, knobs, staging) if world > 1 else [0] * len(s.modules)
    if not s.modules:  # a shape without its module list (hand-made): one largest layer gathered
        held = [s.largest_layer_params] if world > 1 else [0]
        kinds = ["mlp"]
    else:
        kinds = [module_kind(n) for n, _ in s.modules]
    peaks = [act_bytes * g + acts.get(k, acts["outside"]) for g, k in zip(held, kinds)]
    return {"peak": int(max(peaks)), "gathered": int(act_bytes * max(held)), "activations": int(max(acts.values()))}


def kv_cache(s: ModelShape, batch: int, seq: int, act_bytes: int) -> int:
    """KV cache of generation at full length: 2 (K and V) · L · B · S · kv_heads · head_dim · bytes."""
    return int(2 * s.num_layers * batch * seq * s.num_kv_heads * s.head_dim * act_bytes)


# ----------------------------------------------------------------------------- the plan
@dataclass
class RolePlan:
    role: str
    trainable: bool
    zero_stage: int
    offload_optimizer: bool
    offload_param: bool
    total_params: int
    largest_layer_params: int
    model_states_gpu: int
    model_states_cpu: int
    activations_gpu: int
    gpu_bytes: int
    cpu_bytes: int
    method: str
    model_source: str
    details: dict = field(default_factory=dict)


def _precision_bytes(conf: dict) -> int:
    return 2 if ("bf16" in conf or "fp16" in conf) else 4


def zero3_trainable_states(P: int, world: int, b: int, reduce_bucket: int) -> dict:
    """A trainable ZeRO-3 role's resident bytes per rank, from what DeepSpeed 0.19's stage-3
    optimizer allocates (no offload): the b-byte parameter shard, its fp32 master copy (a copy even
    when b = 4), Adam's fp32 m and v, the gradient partitions in the parameters' dtype (DeepSpeed's
    default accumulation dtype), all 1/world; and the gradient bucket it allocates whole
    (reduce_bucket_size elements of b bytes, filled by the backward before each reduce-scatter)."""
    shard = (b + 4 + 8 + b) * P / world
    return {"gpu": int(shard + b * reduce_bucket), "cpu": 0, "shard": int(shard), "reduce_bucket": int(b * reduce_bucket),
            "method": f"ZeRO-3: ({b} param + 4 fp32 master + 8 Adam + {b} grad) B × P/{world} "
                      f"+ gradient bucket {b} B × {reduce_bucket:,}"}


def plan_role(cfg, role: str, shape: ModelShape, cluster: Cluster) -> RolePlan:
    """Per-rank memory of one role, using the exact DeepSpeed config the engines will build.

    model_states_*: what the role keeps resident (parameters or their shard, optimizer states,
    DeepSpeed's buffers); activations_gpu: its largest working set above that, over the phases it
    works in (details["working_set"] per phase: activations, gathered ZeRO-3 parameters, transient
    buffers)."""
    from .engines import ds_config

    N = cluster.world
    local_batch = max(1, cfg.ppo.batch_size // N)  # prompts each rank generates and scores
    local_mini = max(1, cfg.ppo.mini_batch_size // N)  # sequences per forward chunk / optimizer step
    seq = cfg.generation.max_prompt_len + cfg.generation.max_new_tokens
    trainable = TRAINABLE[role]
    conf = ds_config(cfg.deepspeed, role, local_mini, trainable=trainable)
    zero = conf["zero_optimization"]
    stage = zero["stage"]
    off_opt, off_par = "offload_optimizer" in zero, "offload_param" in zero
    b = _precision_bytes(conf)
    P, largest = shape.total_params, shape.largest_layer_params
    eager = cfg.model.attn_implementation == "eager"
    knobs = Zero3Knobs.of(zero) if stage == 3 else None
    # gloo (CPU ranks) stages a collective's output in a buffer of its own; NCCL does not
    staging = cfg.deepspeed.dist_backend == "gloo"
    details: dict = {"seq_len": seq, "act_bytes": b}
    working: dict[str, int] = {}
    lc, q = cfg.model.lora, cfg.model.quantization
    adapters = trainable and shape.lora_params > 0
    if trainable and adapters:
        # LoRA: optimizer states only for the adapters (and the critic's value head); the base is
        # frozen weights, 4-bit when configured
        head = shape.hidden_size + 1 if role == "critic" else shape.value_head_params
        P_t = shape.lora_params + head
        ms = trainable_model_states(P_t, min(largest, P_t), stage, cluster, off_opt, off_par, fp32=b == 4)
        base = frozen_base_params(shape, stage, N, off_par, b, q, conf)
        ms_gpu, ms_cpu = ms["gpu"] + base["gpu"], ms["cpu"] + base["cpu"]
        method = f"LoRA adapters ({P_t:,} params): {ms['method']}; frozen base: {base['method']}"
        details.update(cpu_bytes_per_node=ms["cpu_node"], note=ms["note"], trainable_params=P_t,
                       frozen_base_bytes=base["gpu"] + base["cpu"])
    elif trainable and stage == 3 and not (off_opt or off_par):
        ms = zero3_trainable_states(P, N, b, int(zero.get("reduce_bucket_size", 5e8)))
        ms_gpu, ms_cpu, method = ms["gpu"], ms["cpu"], ms["method"]
        details.update(param_shard_and_optimizer=ms["shard"], gradient_bucket=ms["reduce_bucket"])
    elif trainable:
        ms = trainable_model_states(P, largest, stage, cluster, off_opt, off_par, fp32=b == 4)
        ms_gpu, ms_cpu, method = ms["gpu"], ms["cpu"], ms["method"]
        details.update(cpu_bytes_per_node=ms["cpu_node"], note=ms["note"])
    if trainable:
        train_act = training_activations(shape, local_mini, seq, b, cfg.model.gradient_checkpointing, eager)
        update = train_act + 2 * b * largest  # + a layer's full gradient and its copy into the bucket
        if stage == 3 and N > 1 and shape.modules and not adapters:
            kept = zero3_training_kept(shape.modules, knobs)
            held = zero3_forward_working_set(shape.modules, knobs, staging, keep=kept)
            kept_b = b * sum(n for i in kept for n in shape.modules[i][1] if n >= knobs.persistence_threshold)
            # the forward's start (prefetch buffers, little activation) or its end (the parameters
            # kept for the backward, every saved activation)
            update = max(b * max(held) + module_activations(shape, local_mini, seq, b, eager)["outside"],
                         kept_b + update)
            details.update(train_gathered_kept=kept_b, train_gathered_peak=b * max(held))
        if stage == 3 and b == 2 and not adapters:
            update += 4 * P // N  # the optimizer step's fp32 copy of the gradient partition
        working["update"] = int(update)
        details.update(train_batch=local_mini, train_activations=train_act)
        if role == "critic":
            fwd = zero3_frozen_forward(shape, knobs, N, b, local_mini, seq, eager, staging) if stage == 3 \
                else {"peak": inference_activations(shape, local_mini, seq, b, eager)}
            working["forwards"] = fwd["peak"]
        if role == "actor":
            # rollout: the actor generates for all local prompts with a KV cache; under ZeRO-3,
            # generation.zero3_gather=full gathers the whole model once (GatheredParameters: each
            # parameter into its own buffer; gloo stages one collective at a time, the largest
            # parameter at most)
            kv = kv_cache(shape, local_batch, seq, b)
            gen_act = inference_activations(shape, local_batch, 1, b, eager) + kv  # decode: one new token per step
            gathered = b * P if stage == 3 and N > 1 else 0
            gen = gathered + max(gen_act, b * largest if gathered and staging else 0)
            details.update(gen_batch=local_batch, kv_cache=kv, generation_gathered_params=gathered,
                           generation_peak_extra=gen, generation_per_layer_gather_extra=b * largest + gen_act)
            working["generate"] = int(gen)
    elif role == "reference" and lc.enabled and lc.reference_from_base:
        ms_gpu, ms_cpu, method = 0, 0, "served by the actor's base with adapters disabled: no parameters of its own"
    elif role == "reference" and q.load_in_4bit:
        fp = frozen_base_params(shape, stage, N, off_par, b, q, conf)
        ms_gpu, ms_cpu, method = fp["gpu"], fp["cpu"], fp["method"]
    else:
        fp = frozen_params(P, largest, stage, N, off_par, b, 0,
                           persistent=persistent_params(shape.modules, knobs.persistence_threshold) if knobs else 0)
        ms_gpu, ms_cpu, method = fp["gpu"], fp["cpu"], fp["method"]
    if not trainable:
        if role == "reference":
            batch, tokens = local_mini, seq
        else:  # the scorer's batches of prompt + separator + response + EOS, cut at reward.max_length
            batch, tokens = min(local_batch, cfg.reward.batch_size), min(seq + 2, cfg.reward.max_length)
        if stage == 3:
            fwd = zero3_frozen_forward(shape, knobs, N, b, batch, tokens, eager, staging)
            details.update(forward_gathered_peak=fwd["gathered"], forward_activations=fwd["activations"])
            working["forwards" if role == "reference" else "score"] = fwd["peak"]
        else:
            working["forwards" if role == "reference" else "score"] = inference_activations(shape, batch, tokens, b, eager)
        details.update(forward_batch=batch, forward_tokens=tokens)
    details["working_set"] = {k: int(v) for k, v in working.items()}
    act = max(working.values(), default=0)
    return RolePlan(role=role, trainable=trainable, zero_stage=stage, offload_optimizer=off_opt,
                    offload_param=off_par, total_params=P, largest_layer_params=largest,
                    model_states_gpu=int(ms_gpu), model_states_cpu=int(ms_cpu), activations_gpu=int(act),
                    gpu_bytes=int(ms_gpu + act), cpu_bytes=int(ms_cpu), method=method,
                    model_source=shape.source, details=details)


def plan(cfg, cluster: Cluster, reward_model_config: str | Path | None = None,
         gpu_memory_gib: float | None = None) -> dict:
    """The JSON-ready memory plan: one entry per role plus the per-rank totals.

    The total adds every role: all four engines stay resident in one process (docs/design.md §2), and
    the activation figures are peaks of phases that do not overlap, so the sum of the per-role
    peaks is an upper bound for activations and exact for resident model states."""
    shapes = role_shapes(cfg, reward_model_config)
    roles = []
    for role in ROLES:
        s = shapes[role]
        if s is None:
            continue
        roles.append(asdict(plan_role(cfg, role, s, cluster)))
    states_gpu = sum(r["model_states_gpu"] for r in roles)
    peak_act = max((r["activations_gpu"] for r in roles), default=0)
    total = {
        "gpu_bytes_upper": sum(r["gpu_bytes"] for r in roles),
        "gpu_bytes_model_states": states_gpu,
        "gpu_bytes_peak_phase": states_gpu + peak_act,
        "cpu_bytes": sum(r["cpu_bytes"] for r in roles),
    }
    out = {
        "cluster": {"num_nodes": cluster.num_nodes, "gpus_per_node": cluster.gpus_per_node, "world_size": cluster.world},
        "precision": cfg.deepspeed.precision,
        "roles": roles,
        "omitted_roles": [r for r in ROLES if shapes[r] is None],
        "total_per_rank": total,
        "assumptions": __doc__.split("Sources of each figure", 1)[1].strip() if __doc__ else "",
    }
    if gpu_memory_gib is not None:
        out["gpu_memory_gib"] = gpu_memory_gib
        out["fits"] = total["gpu_bytes_peak_phase"] <= gpu_memory_gib * GIB
    return out


def find_min_gpus(cfg, gpu_memory_gib: float, gpus_per_node: int = 8,
                  reward_model_config: str | Path | None = None) -> dict:
    """How many GPUs of `gpu_memory_gib` each the config needs: `plan` on every world size the
    trainer accepts (it must divide ppo.batch_size and ppo.mini_batch_size), as one node of up to
    `gpus_per_node` GPUs or whole nodes of that many, smallest first, until the peak-phase memory
    per rank fits. Returns min_gpus (None: no such world), the fitting (or last) plan and every
    world tried with its per-rank peak."""
    import math

    if gpu_memory_gib <= 0 or gpus_per_node < 1:
        raise MemoryPlanError(f"need a GPU memory > 0 and ≥ 1 GPU per node, got {gpu_memory_gib} GiB, {gpus_per_node}")
    step = math.gcd(cfg.ppo.batch_size, cfg.ppo.mini_batch_size)
    worlds = [w for w in range(1, step + 1) if step % w == 0 and (w <= gpus_per_node or w % gpus_per_node == 0)]
    tried, result = [], None
    for w in worlds:
        cluster = Cluster(1, w) if w <= gpus_per_node else Cluster(w // gpus_per_node, gpus_per_node)
        result = plan(cfg, cluster, reward_model_config, gpu_memory_gib)
        peak = result["total_per_rank"]["gpu_bytes_peak_phase"]
        tried.append({"world_size": w, "num_nodes": cluster.num_nodes, "gpus_per_node": cluster.gpus_per_node,
                      "gpu_gib_peak_phase": peak / GIB, "fits": result["fits"]})
        if result["fits"]:
            return {"min_gpus": w, "gpu_memory_gib": gpu_memory_gib, "tried": tried, "plan": result}
    return {"min_gpus": None, "gpu_memory_gib": gpu_memory_gib, "tried": tried, "plan": result,
            "why": f"no world size up to {worlds[-1]} (the largest dividing ppo.batch_size={cfg.ppo.batch_size} and "
                   f"ppo.mini_batch_size={cfg.ppo.mini_batch_size}) fits; the smallest per-rank peak was "
                   f"{min(t['gpu_gib_peak_phase'] for t in tried):.2f} GiB: raise the batch sizes to allow more "
                   "ranks, or shard more (deepspeed.zero_stage 3, offload, LoRA)"}
