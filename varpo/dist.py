"""Process group setup and cross-rank reductions. World size 1 on a laptop, N under a launcher:
one code path. Everything that touches DeepSpeed imports it through `import_deepspeed()` so the
CPU accelerator is selected before DeepSpeed reads it."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist


def import_deepspeed():
    """Import deepspeed with the right accelerator: without CUDA, DeepSpeed must be told `cpu`
    before its first import, or it probes for GPUs and fails."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed

    return deepspeed


def free_port() -> int:
    """A TCP port free on this host right now (for a master port or a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SELF_WORLD = "VARPO_SELF_WORLD_PORT"
_WORLD_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _forget_inherited_world() -> None:
    """A child process (a population worker, a CLI run from a test) inherits the environment of a
    parent that made itself a world of one; its MASTER_PORT is still bound by that parent. Drop
    those variables — but keep a launcher's, which name another port."""
    port = os.environ.get(_SELF_WORLD)
    if port is not None and os.environ.get("MASTER_PORT") == port:
        for key in (*_WORLD_VARS, _SELF_WORLD):
            os.environ.pop(key, None)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class RendezvousError(RuntimeError):
    """The ranks of a job could not all meet at start-up (bounded by deepspeed.rendezvous_timeout_s)."""


def init_distributed(backend: str = "auto", timeout_minutes: int = 30, peer_timeout_s: float = 120.0,
                     rendezvous_timeout_s: float = 600.0) -> DistInfo:
    """Join (or create) the process group. Without a launcher this becomes a world of one. With
    several ranks: every rank waits at most `rendezvous_timeout_s` for the others to reach the
    rendezvous (then raises RendezvousError naming the missing ranks and the address), and a
    watchdog (varpo.watchdog) makes every rank exit, naming the lost one, when one stops for
    `peer_timeout_s` (0: no watchdog) — from the end of the rendezvous on, so a rank that dies
    while the others set up the process group or load DeepSpeed's ops is caught too."""
    if not torch_dist.is_initialized():
        _forget_inherited_world()
        for key, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, default)
        if "MASTER_PORT" not in os.environ:  # no launcher: a world of one on a free port
            os.environ["MASTER_PORT"] = str(free_port())
            os.environ[_SELF_WORLD] = os.environ["MASTER_PORT"]
    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    deepspeed = import_deepspeed()
    local_rank = int(os.environ["LOCAL_RANK"])
    if not torch_dist.is_initialized():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        timeout = timedelta(minutes=timeout_minutes)
        unlink_shm = _clean_up_at_exit(rank, shm=not cuda)
        if world > 1:
            # DeepSpeed's env:// start would wait for missing ranks (or a dead store host) for the
            # whole collective timeout: meet on our own store first, with its own bound
            store = rendezvous(rank, world, rendezvous_timeout_s)
            store.set_timeout(timeout)  # from here on, store operations wait as long as collectives
            from . import watchdog

            watchdog.start(rank, world, peer_timeout_s, before_exit=unlink_shm, store=store)
            device = {"device_id": torch.device("cuda", local_rank)} if cuda else {}  # as DeepSpeed binds it
            torch_dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout, **device)
        from . import jit_lock

        with jit_lock.watch():  # DeepSpeed loads (or builds) its communication op here
            deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(torch_dist.get_rank(), local_rank, torch_dist.get_world_size(), device)


def join(ds_cfg) -> DistInfo:
    """`init_distributed` with the settings of a config's `deepspeed` section (a DeepSpeedConfig):
    how every varpo command joins its ranks."""
    return init_distributed(ds_cfg.dist_backend, ds_cfg.timeout_minutes, ds_cfg.peer_timeout_s,
                            ds_cfg.rendezvous_timeout_s)


_RDZV = "varpo_rendezvous/{}/rank/{}"


def rendezvous(rank: int, world: int, timeout_s: float):
    """Meet the other ranks on the TCP store at MASTER_ADDR:MASTER_PORT (hosted by rank 0, or by
    torchrun's agent) and return it once all `world` ranks have checked in. Raises RendezvousError
    within about `timeout_s` when the store cannot be reached, when some ranks never arrive
    (naming them), or when the store's host dies while this rank waits."""
    import time

    from torch.distributed import TCPStore

    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent hosts it
    host = "torchrun's agent" if agent_store else "rank 0"
    where = f"{addr}:{port} (hosted by {host})"
    field = f"deepspeed.rendezvous_timeout_s = {timeout_s:g} s"
    me = f"rank {rank} of {world}"
    is_host = rank == 0 and not agent_store
    end = time.monotonic() + timeout_s
    try:
        store = TCPStore(addr, port, world_size=None, is_master=is_host, timeout=timedelta(seconds=timeout_s),
                         wait_for_workers=False, multi_tenant=True)
    except Exception as exc:  # noqa: BLE001  (DistNetworkError, DistStoreError, RuntimeError)
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if is_host:
            raise RendezvousError(f"{me}: could not host the rendezvous store at {addr}:{port} ({why})") from exc
        raise RendezvousError(f"{me}: could not reach the rendezvous store at {where} within {field} ({why}). "
                              f"Is {host} running, and are MASTER_ADDR/MASTER_PORT right?") from exc
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # an agent's store outlives a restart
    keys = [_RDZV.format(attempt, r) for r in range(world)]
    missing = list(range(world))
    try:
        store.set(keys[rank], str(os.getpid()))
        while True:
            missing = [r for r, k in enumerate(keys) if not store.check([k])]
            if not missing or time.monotonic() >= end:
                break
            time.sleep(0.2)
    except Exception as exc:  # noqa: BLE001  the store went away: its host died during start-up
        raise RendezvousError(f"{me}: lost the rendezvous store at {where} while waiting for rank(s) "
                              f"{', '.join(map(str, missing))} to arrive ({type(exc).__name__}: {exc}); "
                              f"{host} died during start-up. Restart the job.") from exc
    if missing:
        raise RendezvousError(f"{me}: rank(s) {', '.join(map(str, missing))} did not reach the rendezvous at "
                              f"{where} within {field} ({world - len(missing)} of {world} arrived). "
                              "They failed to start, or WORLD_SIZE/MASTER_ADDR/MASTER_PORT differ between ranks.")
    return store


_EXIT_GRACE_S = 0.2


def _clean_up_at_exit(rank: int, shm: bool):
    """At interpreter exit, while Python is still fully alive (atexit runs before finalisation):
    - tell the watchdog this rank leaves normally;
    - with several ranks, first give the backend's worker threads a moment with the GIL released.
      A gloo worker drops its references to a finished collective's tensors just after the work
      completes, and for Python-owned tensors that takes the GIL; if the rank's last collective
      ends right before exit, that can fall after finalisation began, where Python 3.11 ends the
      thread inside a C++ destructor and the rank aborts ("terminate called without an active
      exception"; measured: 7 of 30 two-rank CPU runs of launch/train_reward.py, with the abort in
      ProcessGroupGloo::runLoop -> ~AsyncBroadcastWork -> decref_pyobject -> take_gil);
    - destroy the process group, as PyTorch asks;
    - (CPU) unlink this rank's shared-memory buffer: DeepSpeed's CPU all-reduce creates a ~69 MB
      /dev/shm file per rank, deepspeed_allreduce_buffer_<i>_<addr>_<port>_<rank>, and never removes
      it (the other ranks' mappings stay valid after an unlink)."""
    import atexit
    import glob
    import time

    pattern = f"/dev/shm/deepspeed_allreduce_buffer_*_{os.environ.get('MASTER_ADDR')}_{os.environ.get('MASTER_PORT')}_{rank}"

    def unlink_shm() -> None:
        for path in glob.glob(pattern) if shm else []:
            try:
                os.unlink(path)
            except OSError:
                pass

    def clean_up() -> None:
        from . import watchdog

        watchdog.stop()
        if torch_dist.is_initialized():
            if torch_dist.get_world_size() > 1:
                time.sleep(_EXIT_GRACE_S)  # sleeping releases the GIL to the worker threads
            torch_dist.destroy_process_group()
        unlink_shm()

    atexit.register(clean_up)
    return unlink_shm


def world_size() -> int:
    return torch_dist.get_world_size() if torch_dist.is_initialized() else 1


def rank() -> int:
    return torch_dist.get_rank() if torch_dist.is_initialized() else 0


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    """A reduced copy of t, on t's device. NCCL reduces only CUDA tensors, so a host tensor
    (a statistic gathered on the CPU) makes a round trip through the GPU."""
    out = t.clone()
    if world_size() > 1:
        comm = out.cuda() if out.device.type != "cuda" and torch_dist.get_backend() == "nccl" else out
        torch_dist.all_reduce(comm, op=op)
        out = comm.to(t.device)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (identity in a world of one); returns a new tensor."""
    return _all_reduce(t, torch_dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, torch_dist.ReduceOp.MAX)


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a dim-0 tensor across ranks (equal shapes on every rank)."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    torch_dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, 0)


def barrier() -> None:
    if world_size() > 1:
        torch_dist.barrier()


def broadcast_object(obj):
    """Rank 0's Python object on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- statistics over all ranks
# Each is one all-reduce (two for global_std); every rank must call them together, with tensors of
# the same shape. In a world of one they are the plain statistics.

def global_mean(x: torch.Tensor) -> float:
    """The mean of x's elements over every rank's x (float64 sums)."""
    s = all_reduce_sum(torch.stack([x.double().sum(), x.new_tensor(float(x.numel()), dtype=torch.float64)]))
    return (s[0] / s[1]).item()


def global_std(x: torch.Tensor) -> float:
    """The (population) standard deviation of x's elements over every rank's x."""
    import math

    mean = global_mean(x)
    return math.sqrt(max(global_mean((x.double() - mean) ** 2), 0.0))


def global_means(acc: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Per key, the mean over every rank's values (0-d tensors, left on their device until here):
    one all-reduce and one host transfer for all keys."""
    if not acc:
        return {}
    keys = list(acc)
    sums = torch.stack([torch.stack(acc[k]).double().sum() for k in keys])
    counts = torch.tensor([float(len(acc[k])) for k in keys], dtype=torch.float64)
    tot = all_reduce_sum(torch.stack([sums.cpu(), counts]))
    return dict(zip(keys, (tot[0] / tot[1]).tolist()))


def global_mean_var(total: torch.Tensor, total_sq: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance from each rank's (Σx, Σx², n) (float64 0-d tensors)."""
    tot = all_reduce_sum(torch.stack([total.double(), total_sq.double(), count.double()]))
    mean = tot[0] / tot[2]
    return mean, (tot[1] / tot[2] - mean**2) * tot[2] / (tot[2] - 1).clamp(min=1)


def any_rank(flag: bool | torch.Tensor) -> bool:
    """True when `flag` is set on any rank (a tensor flag stays on its device until the reduction)."""
    t = flag.detach().float().reshape(()) if torch.is_tensor(flag) else torch.tensor(float(flag))
    return bool(all_reduce_max(t).item() > 0)
