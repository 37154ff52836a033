"""A ZeRO-3 actor's parameters made available while it generates a rollout (hybrid engine,
docs/design.md §2): gathered whole, in byte-bounded groups, or left to DeepSpeed's own hooks
(`generation.zero3_gather`)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ...dist import world_size
from ...engines import gathered_params, is_zero3

# During a rollout the actor runs many short forwards (one per generated token). Three ways to
# have its ZeRO-3 parameters present (GenerationConfig.zero3_gather):
#
#   full       gather everything once, generate, release;
#   grouped    gather groups of consecutive modules of at most a byte budget, one coalesced
#              all-gather per group per forward, each group released after its last module;
#   per_layer  leave it to the engine's own hooks (PartitionedParameterCoordinator).
#
# full and grouped take the parameters out of the coordinator's hands for the duration of the
# rollout, the way DeepSpeed's own `deepspeed.runtime.zero.unwrap_model_for_generation` does:
# its forward hooks are removed and re-registered afterwards. Left in place, they fight ours:
# after each submodule's forward the coordinator releases the parameters no submodule has marked
# active, so a "full" gather was undone during the first forward and every later forward fetched
# the model again; and it fetches, prefetches and keeps parameters according to the trace it
# recorded last (usually the training forward+backward), not to any budget of ours.
#
# grouped is implemented with our own forward pre/post hooks rather than by re-tuning the
# coordinator (stage3_prefetch_bucket_size / stage3_max_live_parameters derived from the
# budget), after reading DeepSpeed 0.19.8's coordinator: those knobs only bound its *prefetch*,
# not what a fetch keeps live; releases follow the recorded trace and stage3_max_reuse_distance;
# there is no prefetch until a trace is complete (the forward after each invalidation fetches
# submodule by submodule); and the knobs are fixed per engine, so they would also throttle the
# actor's training. Measured with benchmarks/zero3_generation.py (33M-parameter Llama, 2 CPU
# ranks, 16 new tokens) with the coordinator given a 32 MB bound (bucket, live parameters and reuse
# distance all 8e6 elements): 535 all-gathers per rollout and 61 MB gathered at once, against
# 80 and 31 MB for grouped at the same budget. Our hooks give a bound that holds whatever the
# trace state, one coalesced all-gather per group per forward, and leave the training
# configuration untouched. They fetch with the same per-parameter primitives the coordinator
# uses (`all_gather_coalesced`, `partition`), so partitioning, offload and dtype handling stay
# DeepSpeed's.

def zero3_param_offload(engine):
    """DeepSpeed's ZeRO-3 parameter manager (DeepSpeedZeRoOffload) of an engine, or None."""
    opt = getattr(engine, "optimizer", None)
    # a trainable stage-3 engine keeps it on its optimizer; a frozen one uses it as the optimizer
    offload = getattr(opt, "parameter_offload", opt)
    needed = ("forward_hooks", "backward_hooks", "_register_deepspeed_module", "module")
    return offload if offload is not None and all(hasattr(offload, a) for a in needed) else None


@contextmanager
def zero3_hooks_suspended(engine) -> Iterator[torch.nn.Module]:
    """Detach a ZeRO-3 engine's parameter hooks for the block (yielding the module), so that the
    caller alone decides which parameters are gathered; they are re-attached on exit, which also
    invalidates the coordinator's recorded trace (it records a fresh one at the next forward)."""
    offload = zero3_param_offload(engine)
    if offload is None:
        raise ValueError("ZeRO-3 generation with zero3_gather=full|grouped needs the DeepSpeed engine (its "
                         "parameter hooks are suspended while generating), not the bare module")
    # what engine.empty_partition_cache() calls (without its gc.collect): drains in-flight
    # prefetches and releases whatever the last forward left gathered, so that every parameter
    # starts the rollout partitioned and marked active in no submodule
    offload.empty_partition_cache()
    for hook in (*offload.forward_hooks, *offload.backward_hooks):
        hook.remove()
    offload.forward_hooks, offload.backward_hooks = [], []
    try:
        yield offload.module
    finally:
        offload._register_deepspeed_module(offload.module)


class GroupedGather:
    """Gather a ZeRO-3 module's parameters in groups of consecutive modules, each group's total
    at most `budget_bytes` (a module larger than that is a group of its own), with one coalesced
    all-gather per group, released after the group's last module has run.

    "Consecutive" is in execution order. Registration order is not it (a Llama decoder layer
    registers its norms after its MLP but runs them first), so the first forward ever seen runs
    on registration-order groups while it records the order in which modules run; the groups are
    then rebuilt from that order, which is kept on the module for later rollouts. A module that
    runs out of order still finds its parameters (its group is gathered again): it only costs a
    collective. At most one group is gathered at a time, plus groups whose modules are still
    running (a parent module with parameters of its own), plus shared parameters a module
    borrows from another group (tied embeddings). Every rank must run the same modules in the
    same order (HF generate's `synced_gpus`): each gather is a collective, and the recorded order
    is the same on every rank. ZeRO-3 leaf modules (`deepspeed.utils.set_z3_leaf_module`, e.g.
    MoE blocks whose experts run data-dependently) are gathered whole."""

    _ORDER_ATTR = "_varpo_gather_order"

    def __init__(self, module: torch.nn.Module, budget_bytes: float):
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be > 0, got {budget_bytes}")
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
        from deepspeed.runtime.zero.partitioned_param_coordinator import iter_params
        from deepspeed.utils import z3_leaf_module

        self._status = ZeroParamStatus
        self.module, self.budget_bytes = module, budget_bytes
        self._units: list[tuple[torch.nn.Module, list]] = []

        def walk(m: torch.nn.Module) -> None:
            leaf = z3_leaf_module(m)
            # the parameters DeepSpeed's coordinator would fetch for m: its own, those registered
            # as external to it, and for a leaf module all of its descendants'
            params = list({p.ds_id: p for p in iter_params(m, recurse=leaf) if hasattr(p, "ds_id")}.values())
            if params:
                self._units.append((m, params))
            if not leaf:
                for child in m.children():
                    walk(child)

        walk(module)
        order = getattr(module, self._ORDER_ATTR, None)
        if order is None or sorted(order) != list(range(len(self._units))):
            order, self._recording = list(range(len(self._units))), []
        else:
            self._recording = None
        self._build_groups(order)
        self._refs: dict[int, int] = {}
        self._open: dict[int, list] = {}  # group -> the parameters it acquired
        self._active: dict[int, int] = {}
        self._handles: list = []

    def _build_groups(self, order: list[int]) -> None:
        self.groups: list[list] = []
        owner: dict[int, int] = {}
        size = 0.0
        self._group_of = [0] * len(self._units)
        borrowed: list[dict[int, object]] = []  # per group: its modules' parameters owned by another group
        self._last_unit: dict[int, int] = {}
        for i in order:
            params = self._units[i][1]
            new = [p for p in params if p.ds_id not in owner]
            nbytes = sum(p.ds_numel * p.element_size() for p in new)
            if not self.groups or (new and size > 0 and size + nbytes > self.budget_bytes):
                self.groups.append([])
                borrowed.append({})
                size = 0.0
            g = len(self.groups) - 1
            for p in new:
                owner[p.ds_id] = g
            self.groups[g] += new
            size += nbytes
            self._group_of[i] = g
            borrowed[g].update((p.ds_id, p) for p in params if owner[p.ds_id] != g)
            self._last_unit[g] = i
        self.group_bytes = [sum(p.ds_numel * p.element_size() for p in ps) for ps in self.groups]
        # what a group gathers when it opens, in one collective: its own parameters and the ones
        # its modules share with another group
        self._gathers_of = [list({p.ds_id: p for p in (*ps, *b.values())}.values())
                            for ps, b in zip(self.groups, borrowed)]

    # -- parameters: reference counted, so a parameter shared by two open groups stays gathered
    @torch.no_grad()
    def _acquire(self, params) -> None:
        missing = [p for p in params if p.ds_status == self._status.NOT_AVAILABLE]
        if missing:
            missing[0].all_gather_coalesced(missing).wait()
        for p in params:
            self._refs[p.ds_id] = self._refs.get(p.ds_id, 0) + 1

    @torch.no_grad()
    def _release(self, params) -> None:
        drop = []
        for p in params:
            self._refs[p.ds_id] -= 1
            if self._refs[p.ds_id] == 0:
                del self._refs[p.ds_id]
                # persistent parameters (under stage3_param_persistence_threshold) stay gathered,
                # as the coordinator keeps them
                if not p.ds_persist and p.ds_status == self._status.AVAILABLE:
                    drop.append(p)
        if drop:
            drop[0].partition(param_list=drop)

    # -- groups
    def _close(self, g: int) -> None:
        self._release(self._open.pop(g))
        self._active.pop(g, None)

    def _pre(self, i: int) -> None:
        if self._recording is not None:
            self._recording.append(i)
        g = self._group_of[i]
        if g not in self._open:
            for h in [h for h in self._open if self._active.get(h, 0) == 0]:
                self._close(h)  # the bound: an idle group goes before the next one comes
            self._acquire(self._gathers_of[g])
            self._open[g] = self._gathers_of[g]
        self._active[g] = self._active.get(g, 0) + 1

    def _post(self, i: int) -> None:
        g = self._group_of[i]
        if g not in self._open:
            return
        self._active[g] -= 1
        if self._last_unit[g] == i and self._active[g] == 0:
            self._close(g)

    def _end_of_forward(self) -> None:
        for g in [g for g in self._open if self._active.get(g, 0) == 0]:
            self._close(g)
        if self._recording is not None and not self._open:
            ran = list(dict.fromkeys(self._recording))
            order = ran + [i for i in range(len(self._units)) if i not in set(ran)]
            setattr(self.module, self._ORDER_ATTR, order)
            self._recording = None
            self._build_groups(order)

    def __enter__(self):
        for i, (m, _) in enumerate(self._units):
            self._handles.append(m.register_forward_pre_hook(lambda mod, args, i=i: self._pre(i)))
            self._handles.append(m.register_forward_hook(lambda mod, args, out, i=i: self._post(i)))
        self._handles.append(self.module.register_forward_hook(lambda mod, args, out: self._end_of_forward()))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for g in list(self._open):  # after an exception some groups may still count as active
            self._close(g)


@contextmanager
def generation_gather(actor, mode: str, budget_mb: float, module: torch.nn.Module | None = None) -> Iterator[bool]:
    """Make a (possibly ZeRO-3) actor's parameters available for one rollout's `generate`, per
    `mode` (GenerationConfig.zero3_gather); yields the `synced_gpus` flag to pass to HF generate.
    `actor` is a DeepSpeed engine or a bare module (not ZeRO-3, or zero3_gather=per_layer);
    `module` the part of it that generates when that is not the whole engine module (a causal LM
    under a value head that shares its trunk): only it is gathered."""
    root = getattr(actor, "module", actor)
    module = root if module is None else module
    if not is_zero3(module):
        yield False
        return
    # Ranks must run the same number of forwards in every mode: grouped and per_layer gather
    # inside each forward, and even with the hooks suspended the engine's start-of-forward hook
    # can still run a collective (it checks its trace across ranks while recording one). With
    # synced_gpus a rank whose sequences have all ended keeps stepping until every rank is done
    # (an all-reduce of one flag per token), instead of leaving the others waiting in a collective.
    synced = world_size() > 1
    if mode == "per_layer":
        offload = zero3_param_offload(actor) if module is not root else None
        if offload is None:
            yield synced
            return
        # DeepSpeed starts each step of its coordinator in a pre-hook of the engine's root module,
        # which generate never calls when it runs on a submodule: start it there instead
        handle = module.register_forward_pre_hook(lambda *_: offload.get_param_coordinator().reset_step())
        try:
            yield synced
        finally:
            handle.remove()
        return
    if mode not in ("full", "grouped"):
        raise ValueError(f"zero3_gather: expected full, grouped or per_layer, got {mode!r}")
    with zero3_hooks_suspended(actor):
        if mode == "full":
            with gathered_params(module):
                yield synced
        else:
            with GroupedGather(module, budget_mb * 2**20):
                yield synced
