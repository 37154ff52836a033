"""A colocated vLLM engine per rank, its weights replaced in memory after every actor update.

Process layout: `vllm.LLM` runs its engine core (scheduler, worker, model, KV cache) in a child
process of the trainer rank (vLLM's default V1 multiprocessing). That keeps vLLM's own
torch.distributed world (one process) apart from the trainer's (DeepSpeed, N ranks), on CPU and
GPU alike; the price is that synced weights cross a process boundary, through host memory
(vLLM's msgpack IPC), bucket by bucket, never through files.

Weight sync: the actor's parameters go out in buckets of whole transformer blocks (at most
`generation.vllm.sync_bucket_mb`, a larger block alone), gathered from ZeRO-3 shards bucket by
bucket (every rank joins every gather, as each rank has its own engine to feed), and are loaded
by the worker's `reload_weights(weights_iterator=...)` (varpo.ppo.generation.vllm_worker). That entry point, unlike calling the
model's `load_weights` directly, re-runs the post-load processing: the CPU backend pre-packs GEMM
weights into its kernel layout (there is no `weight_loader` left to call), and reload restores the
checkpoint layout, loads, and packs again. It processes a vLLM layer once all of its weights have
arrived and leaves layers that received nothing untouched, but a layer given only part of its
weights in one call is processed with the rest uninitialised; vLLM fuses HF's q/k/v and gate/up
projections into one layer, so a bucket never splits a transformer block, nor a module outside
the blocks (a final LayerNorm's weight and bias).

Sampling is mapped one to one from generation.* (`sampling_params`); where the draw is from
softmax(logits) itself and the engine's raw log-probs are the old log-probs, by inverse transform
(generation.sampler: inverse_cdf, varpo.ppo.generation.vllm_sampler), as HF generate draws. Log-probs of the sampled
tokens, two ways (varpo.ppo.generation.old_logprobs_from_rollout decides):
- the old log-probs (the default at temperature 1): vLLM's raw log-probs, log-softmax of the
  model's logits before min-tokens/top-k/top-p, which is the trainer's definition; they become
  `Experience.logp` and the trainer runs no actor forward for them (at the benchmark's size that
  forward is 7% of a step);
- otherwise the processed ones (after temperature, top-k/top-p and min-tokens masking: the
  distribution the engine sampled from) as `Experience.rollout_logp`: the trainer recomputes the
  old log-probs itself, logs the difference and can correct for it
  (generation.vllm.importance_correction).

GPU: `gpu_memory_utilization` bounds vLLM's share of the device; with sleep mode the engine frees
its KV cache (and offloads or drops its weights, `sleep_level`) after each rollout, so the update
has the memory, and wakes for the next sync. CPU: vLLM has no sleep mode; the KV cache is sized to
the rollout (`cpu_kvcache_gb` None) or `cpu_kvcache_gb` GiB, and with several ranks on one host
each engine is bound to its own share of the cores.

Inline (`engine_process`, the default for a one-rank CPU run): the engine core runs in the
trainer's process (vLLM's uni-process executor, VLLM_ENABLE_V1_MULTIPROCESSING=0), on the trainer's
torch threads and inside its one-process torch.distributed world. That removes what made the
child layout slow on a small CPU machine: two process starts that each import vLLM and torch
again (most of a 30–130 s start-up), and per decode step a round trip trainer -> engine core ->
worker and back, each hop waiting for its process to be scheduled (on busy cores a time slice
apiece). The weight sync then hands the worker the parameters themselves, which it copies into its
own weights (no host copies, no bytes)."""
from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterable

import torch

from ...dist import import_deepspeed
from ...models.value_head import causal_lm
from ...seeds import derive_seed
from ..experience import Experience
from ..tokens import response_mask_from_ids
from .old_logprobs import old_logprobs_from_rollout
from .vllm_sampler import FQCN as SAMPLER_FQCN
from .vllm_sampler import uses_inverse_cdf
from .vllm_worker import pack

_BLOCK = re.compile(r"^(.*?\.(?:layers|h|blocks|layer)\.\d+)\.")


def request_seeds(seed: int, step: int, rank: int, n: int) -> list[int]:
    """One seed per prompt of this rank's rollout, a function of (seed, step, rank) only."""
    base = derive_seed("sampling", seed, step, rank)
    # vLLM takes a seed in [0, 2**63 - 1)
    return [derive_seed("sampling_request", base, i) % (2**63 - 1) for i in range(n)]


def sampling_params(gen, eos_token_id: int, seeds: list[int], inverse_cdf: bool = False) -> list:
    """vLLM SamplingParams equal to HF generate's settings in varpo.ppo.generation.hf.generate: sampled,
    at most max_new_tokens, EOS masked for the first min_new_tokens, temperature, top-k (0: off),
    top-p, stop at the tokenizer's EOS only (kept in the output, as HF keeps it), one log-prob per
    sampled token. inverse_cdf: drawn by varpo's logits processor (varpo.ppo.generation.vllm_sampler),
    the request greedy over its one-hot output, the seed handed to the processor."""
    from vllm import SamplingParams

    from .vllm_sampler import KEY

    common = dict(n=1, max_tokens=gen.max_new_tokens, min_tokens=gen.min_new_tokens, stop_token_ids=[eos_token_id],
                  ignore_eos=False, logprobs=0, detokenize=False, skip_special_tokens=False)
    if inverse_cdf:
        return [SamplingParams(**common, temperature=0.0, extra_args={KEY: {"seed": s}}) for s in seeds]
    return [SamplingParams(**common, temperature=gen.temperature, top_k=gen.top_k if gen.top_k > 0 else 0,
                           top_p=gen.top_p, seed=s) for s in seeds]


def weight_buckets(named: Iterable[tuple[str, torch.nn.Parameter]], budget_bytes: float) -> list[list[tuple[str, torch.nn.Parameter]]]:
    """Consecutive parameters in buckets of at most `budget_bytes`, never splitting a transformer
    block (`...layers.<i>.` / `h.<i>.` / `blocks.<i>.`) nor, outside the blocks, a module (GPT-2's
    final `ln_f.weight` and `ln_f.bias`); a block or module larger than the budget is a bucket of
    its own. Sizes are full (unsharded) sizes: `ds_numel` under ZeRO-3.

    Why whole modules: vLLM's layerwise reload processes a layer that received only part of its
    weights in one reload call anyway, from a freshly allocated (uninitialised) tensor for the
    missing part, and copies all of it over the live weights; the next bucket then does the same
    for the other part. A split layer ends up with garbage, not with the old values."""
    groups: list[list[tuple[str, torch.nn.Parameter]]] = []
    last_key = None
    for name, p in named:
        m = _BLOCK.match(name)
        key = m.group(1) if m else (name.rpartition(".")[0] or name)
        if key != last_key:
            groups.append([])
            last_key = key
        groups[-1].append((name, p))

    def nbytes(group) -> int:
        return sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for _, p in group)

    buckets: list[list[tuple[str, torch.nn.Parameter]]] = []
    size = 0
    for g in groups:
        n = nbytes(g)
        if not buckets or (size > 0 and size + n > budget_bytes):
            buckets.append([])
            size = 0
        buckets[-1].extend(g)
        size += n
    return buckets


def kv_cache_bytes(policy_path: str, dtype: str, sequences: int, max_model_len: int) -> int:
    """A CPU KV cache sized to one rank's rollout: `sequences` × max_model_len tokens of the model's
    keys and values (varpo.models.flops.ModelShape), four times over (vLLM's block layout and
    alignment take more than the bare count) plus 32 MiB."""
    from transformers import AutoConfig

    from ...models.flops import ModelShape

    size = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    shape = ModelShape.from_config(AutoConfig.from_pretrained(policy_path), param_bytes=size)
    return 4 * max(1, sequences) * max_model_len * shape.kv_bytes_per_token() + 32 * 2**20


def inline_engine(engine_process: str, cuda: bool, world: int, tensor_parallel_size: int) -> bool:
    """Whether the engine runs in the trainer's process (generation.vllm.engine_process)."""
    if engine_process == "inline":
        if world > 1 or tensor_parallel_size > 1:
            raise ValueError(f"generation.vllm.engine_process=inline needs one trainer rank and tensor_parallel_size=1 "
                             f"(got {world} ranks, tensor_parallel_size={tensor_parallel_size}): vLLM's world would be "
                             "the trainer's; use child (or auto)")
        return True
    return engine_process == "auto" and not cuda and world == 1 and tensor_parallel_size == 1


def _cpu_environment(local_rank: int, local_world: int) -> None:
    """vLLM CPU settings, read by the engine process it spawns (the user's own values win)."""
    # vLLM reserves a core for its frontend by default; on a small host that halves the compute
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if local_world > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        # several ranks' engines on one host: each gets its own cores (by default each would bind
        # all of them, and the engines would fight over every core)
        cores = sorted(os.sched_getaffinity(0))
        share = max(1, len(cores) // local_world)
        mine = cores[local_rank * share: (local_rank + 1) * share] or cores[-share:]
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, mine))


def host_ranks(rank: int, world: int) -> tuple[int, int]:
    """(index of this rank among the trainer ranks on its host, how many there are), from the
    ranks' hostnames (a collective: every rank calls it). Not from LOCAL_WORLD_SIZE: vLLM's CPU
    platform overwrites that variable in the calling process with its own tensor-parallel size (1),
    so after one engine has started in a process, or in a parent whose environment a launcher
    passes on, it no longer names the trainer's ranks per host."""
    if world == 1 or not torch.distributed.is_initialized():
        return 0, 1
    hosts: list[str | None] = [None] * world
    torch.distributed.all_gather_object(hosts, socket.gethostname())
    same = [r for r, h in enumerate(hosts) if h == hosts[rank]]
    return same.index(rank), len(same)


# what vLLM's CPU platform sets in the calling process's environment for its own engine processes
# (LD_PRELOAD: its tcmalloc; LOCAL_WORLD_SIZE: its tensor-parallel size); restored afterwards so
# the trainer rank, and any process it starts later, keeps its own
_VLLM_OVERWRITES = ("LD_PRELOAD", "LOCAL_WORLD_SIZE")


class VLLMRolloutEngine:
    name = "vllm"

    def __init__(self, cfg, tokenizer, policy_path: str, rank: int, world: int):
        # the start-up a user pays for choosing vLLM: importing it (the largest part on a CPU: a whole
        # process's worth of modules) and building the engine
        t_import = time.perf_counter()
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                "generation.backend=vllm needs vLLM, which is not importable in this environment "
                f"({exc}). On a CPU machine build the vLLM environment (scripts/setup_vllm_env.sh) and "
                "run varpo from .venv-vllm; on a GPU machine `pip install -e '.[vllm]'`."
            ) from None
        from vllm import LLM

        self.import_s = time.perf_counter() - t_import

        v, gen = cfg.generation.vllm, cfg.generation
        if v.tensor_parallel_size > 1 and world > 1:
            raise ValueError(
                f"generation.vllm.tensor_parallel_size={v.tensor_parallel_size} with {world} trainer ranks: "
                "a tensor-parallel engine is supported for a world of one trainer rank (one engine over "
                "several GPUs); per-rank engines spanning trainer ranks are not implemented"
            )
        self.cfg, self.gen, self.v, self.rank = cfg, gen, v, rank
        self.gives_old_logprobs = old_logprobs_from_rollout(cfg)[0]
        self.eos_token_id, self.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.cuda = torch.cuda.is_available()
        self.inverse_cdf = uses_inverse_cdf(gen, self.gives_old_logprobs, self.cuda)
        if not self.cuda:
            _cpu_environment(*host_ranks(rank, world))
        # the engine process must not inherit the trainer's threads and process-group state mid-flight
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        self.inline = inline_engine(v.engine_process, self.cuda, world, v.tensor_parallel_size)
        enforce_eager = (not self.cuda) if v.enforce_eager is None else v.enforce_eager
        self.sleep = self.cuda and v.sleep_mode
        max_model_len = v.max_model_len or gen.max_prompt_len + gen.max_new_tokens
        sequences = max(1, cfg.ppo.batch_size // world)  # this rank's prompts per rollout
        kwargs = dict(
            model=policy_path, skip_tokenizer_init=True, dtype=cfg.model.dtype, seed=cfg.seed,
            enforce_eager=enforce_eager, max_model_len=max_model_len,
            tensor_parallel_size=v.tensor_parallel_size,
            logprobs_mode="raw_logprobs" if self.gives_old_logprobs else "processed_logprobs",
            worker_extension_cls="varpo.ppo.generation.vllm_worker.WeightSyncExtension",
            # the scheduler's batch (and its sampler's warm-up) as large as a rollout, not 256
            max_num_seqs=sequences,
        )
        if self.inverse_cdf:  # the draw by inverse transform (vllm_sampler), after vLLM's own processors
            kwargs.update(logits_processors=[SAMPLER_FQCN])
        if self.cuda:
            kwargs.update(gpu_memory_utilization=v.gpu_memory_utilization, enable_sleep_mode=self.sleep)
        else:
            # an explicit KV-cache size (otherwise the CPU worker reserves gpu_memory_utilization of the
            # host's memory and refuses to start when less than that is free), by default what a rollout needs
            kwargs.update(kv_cache_memory_bytes=int(v.cpu_kvcache_gb * 2**30) if v.cpu_kvcache_gb is not None
                          else kv_cache_bytes(policy_path, cfg.model.dtype, sequences, max_model_len))
        if self.inline:
            kwargs.update(distributed_executor_backend="uni")
            if not torch.distributed.is_initialized():
                # vLLM's worker joins the process's torch.distributed world (it would create one of
                # its own otherwise): let that be varpo's world of one, as the trainer's roles expect
                from ...dist import init_distributed

                init_distributed()
        saved = {k: os.environ.get(k) for k in (*_VLLM_OVERWRITES, "VLLM_ENABLE_V1_MULTIPROCESSING")}
        if self.inline:  # read when the engine is built; restored after
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        t0 = time.perf_counter()
        try:
            self.llm = LLM(**kwargs)
            self.engine_s = time.perf_counter() - t0  # building the engine (model, KV cache, warm-up)
            self.startup_s = self.import_s + self.engine_s  # paid once per run
        finally:
            for k, val in saved.items():
                if val is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = val
            if self.inline:
                # vLLM's CPU worker replaces torch.set_num_threads with a no-op once it has bound its
                # threads; inline, that would be the trainer's torch: put the real one and the count back
                torch.set_num_threads = set_threads
                if torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)
        self.fused_activations = sum(self.llm.collective_rpc("varpo_fuse_activations"))
        self._asleep = False

    # ------------------------------------------------------------------ sleep mode (GPU)
    def _wake(self, tags: list[str]) -> None:
        if self.sleep and self._asleep:
            self.llm.wake_up(tags=tags)

    def _sleep(self) -> None:
        if self.sleep:
            self.llm.sleep(level=self.v.sleep_level)
            self._asleep = True

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, step: int) -> Experience:
        from vllm.inputs import TokensPrompt

        if self._asleep:  # a rollout without a sync before it (the update was skipped)
            self.llm.wake_up()
            self._asleep = False
        prompts = [TokensPrompt(prompt_token_ids=ids[m.bool()].tolist()) for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        params = sampling_params(self.gen, self.eos_token_id, request_seeds(self.cfg.seed, step, self.rank, len(prompts)),
                                 inverse_cdf=self.inverse_cdf)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        self._sleep()
        ro = rollout_from_outputs(outs, prompt_ids, prompt_mask, self.eos_token_id, self.pad_token_id)
        if self.gives_old_logprobs:  # the trainer's definition: the old log-probs themselves, nothing to compare
            ro.logp, ro.rollout_logp = ro.rollout_logp, None
        return ro

    # ------------------------------------------------------------------ weight sync
    @torch.no_grad()
    def sync_weights(self, actor) -> None:
        """Load the actor's current weights into the engine. Every rank calls it after every update
        (under ZeRO-3 each bucket is an all-gather all ranks join)."""
        # the causal LM's parameters only (a shared-trunk value head is not part of the policy vLLM runs)
        module = causal_lm(getattr(actor, "module", actor))
        named = list(module.named_parameters())
        zero3 = any(hasattr(p, "ds_id") for _, p in named)
        self._wake(["weights"])
        for bucket in weight_buckets(named, self.v.sync_bucket_mb * 2**20):
            with _gathered([p for _, p in bucket], zero3):
                if self.inline:  # the worker copies them into its own weights before the call returns
                    loaded = self.llm.collective_rpc("varpo_load_tensors", args=([(n, p.detach()) for n, p in bucket],))
                else:  # host copies: they leave this process (and the engine must not see later updates)
                    weights = [(name, p.detach().to("cpu", copy=True)) for name, p in bucket]
            if not self.inline:
                loaded = self.llm.collective_rpc("varpo_load_weights", args=(pack(weights),))
            if any(n != len(bucket) for n in loaded):
                raise RuntimeError(f"vLLM workers loaded {loaded} tensors of a bucket of {len(bucket)}")
        self.llm.collective_rpc("varpo_finish_sync")
        if self.sleep and self._asleep:
            self.llm.wake_up()  # the rest: KV cache and scheduling
        self._asleep = False

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if shutdown is not None:
                shutdown()
            del llm


class _NoGather:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _gathered(params: list, zero3: bool):
    if not zero3:
        return _NoGather()
    return import_deepspeed().zero.GatheredParameters(params, modifier_rank=None)


def rollout_from_outputs(outs, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, eos_token_id: int,
                         pad_token_id: int) -> Experience:
    """vLLM RequestOutputs -> an Experience in varpo's layout (responses right-padded with the pad id,
    at least one position), with vLLM's log-probs of the sampled tokens (0 on padding)."""
    rows, lps = [], []
    for o in outs:
        c = o.outputs[0]
        ids = list(c.token_ids)
        rows.append(ids)
        lps.append([d[t].logprob for d, t in zip(c.logprobs, ids)] if c.logprobs is not None else [0.0] * len(ids))
    T = max(1, max(len(r) for r in rows))
    device = prompt_ids.device
    response = torch.full((len(rows), T), pad_token_id, dtype=torch.long)
    rollout_logp = torch.zeros((len(rows), T), dtype=torch.float32)
    for i, (r, lp) in enumerate(zip(rows, lps)):
        response[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        rollout_logp[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
    mask, has_eos = response_mask_from_ids(response, eos_token_id)
    response = torch.where(mask.bool(), response, torch.full_like(response, pad_token_id))
    rollout_logp = rollout_logp * mask
    return Experience(prompt_ids, prompt_mask, response.to(device), mask.to(device), has_eos.to(device),
                   rollout_logp=rollout_logp.to(device))
