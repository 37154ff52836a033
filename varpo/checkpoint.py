"""Crash-safe checkpoints, one scheme for every trainer (PPO, reward ensemble).

Layout under a checkpoint root:

    root/step_00000012/         one complete checkpoint (DeepSpeed's engine folders inside)
        manifest.json           every file's size and SHA-256, written last inside the folder
        trainer_state.json      the trainer's own state (JSON)
        trainer_tensors.safetensors   the trainer's tensors, if any
        rng_rank<r>.safetensors RNG states of rank r (tensors + JSON metadata)
    root/latest                 the name of the newest committed checkpoint

A save writes everything into `root/.tmp_step_…`, fsyncs it, renames it to `step_…` (atomic on
one filesystem) and only then rewrites `latest` (write a temporary file, fsync, rename). A kill at
any moment leaves either the previous checkpoint as `latest` or the new one, never a half-written
one under a committed name; leftover `.tmp_*` folders are removed by the next save.

On resume, the checkpoint `latest` names is checked against its manifest (missing file, size,
hash); one that fails is skipped with a warning and the next newest that passes is used.

Nothing here is pickled: state is JSON and tensors are safetensors. DeepSpeed's own engine files
(`mp_rank_*_model_states.pt`, `*_optim_states.pt`) are pickles that DeepSpeed loads with
`torch.load(weights_only=False)`: they are a trust boundary (see the README, "Checkpoints").

Every rank calls `save` and `resolve` (collectives); the root must be on a filesystem all ranks
see, as DeepSpeed's own resume across world sizes needs."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import dist

LATEST, MANIFEST, STATE, TENSORS = "latest", "manifest.json", "trainer_state.json", "trainer_tensors.safetensors"
PREFIX, TMP = "step_", ".tmp_"
FAULT_ENV = "VARPO_FAULT_POINT"  # test hook, see fault_point()
_fault_hits: dict[str, int] = {}


def name_of(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def fault_point(phase: str) -> None:
    """Crash-test hook: with VARPO_FAULT_POINT=phase[:n][@rank] in the environment, the n-th time
    (default 1st) this process reaches `phase` (on that rank, default any) it kills itself with
    SIGKILL, exactly as `kill -9` would. benchmarks/crash_resume.py uses it to kill inside a save."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    spec, _, on_rank = spec.partition("@")
    want, _, nth = spec.partition(":")
    if want != phase or (on_rank and int(on_rank) != dist.rank()):
        return
    _fault_hits[phase] = _fault_hits.get(phase, 0) + 1
    if _fault_hits[phase] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------ RNG states
def save_rng(path: Path) -> None:
    """Python, NumPy, torch (and CUDA) generator states as tensors, their scalars as JSON metadata."""
    from safetensors.torch import save_file

    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"python": torch.tensor(mt, dtype=torch.int64), "numpy": torch.from_numpy(keys.astype(np.int64)),
               "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    meta = {"python_version": version, "python_gauss": gauss, "numpy_kind": kind, "numpy_pos": int(pos),
            "numpy_has_gauss": int(has_gauss), "numpy_cached": float(cached)}
    save_file(tensors, str(path), metadata={"varpo": json.dumps(meta)})


def load_rng(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["varpo"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    random.setstate((meta["python_version"], tuple(int(x) for x in t["python"].tolist()), meta["python_gauss"]))
    np.random.set_state((meta["numpy_kind"], t["numpy"].numpy().astype(np.uint32), meta["numpy_pos"],
                         meta["numpy_has_gauss"], meta["numpy_cached"]))
    torch.set_rng_state(t["torch"])
    cuda = sorted(k for k in t if k.startswith("cuda"))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t[k] for k in cuda])


# ------------------------------------------------------------------------------------ files
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                _fsync(Path(dirpath) / f)
            except FileNotFoundError:  # another rank's temporary file, renamed meanwhile (it syncs its own)
                pass
        _fsync(Path(dirpath))  # the directory entries themselves


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, verify: str) -> None:
    entries = {}
    for p in _files(folder):
        e = {"size": p.stat().st_size}
        if verify == "sha256":
            e["sha256"] = _sha256(p)
        entries[p.relative_to(folder).as_posix()] = e
    (folder / MANIFEST).write_text(json.dumps({"verify": verify, "files": entries}, indent=1))


def check(folder: Path) -> str | None:
    """None if `folder` is a complete checkpoint matching its manifest, else what is wrong.
    Files added after the save (DeepSpeed's universal conversion) are not part of the check."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MANIFEST} ({exc})"
    if STATE not in files:
        return f"{STATE} is not in the manifest"
    for rel, want in files.items():
        p = folder / rel
        if not p.is_file():
            return f"missing file {rel}"
        if p.stat().st_size != want["size"]:
            return f"{rel}: {p.stat().st_size} bytes, the manifest says {want['size']}"
        if "sha256" in want and _sha256(p) != want["sha256"]:
            return f"{rel}: SHA-256 differs from the manifest"
    return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP}{path.name}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


# ------------------------------------------------------------------------------------ save / resolve
def save(root: Path, step: int, write_engines: Callable[[Path], None], state: dict, *, keep_last: int,
         verify: str = "sha256", tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Collective. `write_engines(folder)` writes the DeepSpeed engines (every rank takes part);
    `state` (JSON-able) and `tensors` are the trainer's own state, written by rank 0."""
    from safetensors.torch import save_file

    root = Path(root)
    final, tmp = root / name_of(step), root / f"{TMP}{name_of(step)}"
    if dist.rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{TMP}*"):  # left by a save that was killed
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        tmp.mkdir()
    dist.barrier()
    write_engines(tmp)
    fault_point("engines_written")
    save_rng(tmp / f"rng_rank{dist.rank()}.safetensors")
    _fsync_tree(tmp)  # each rank flushes what it wrote (a no-op for files already clean)
    dist.barrier()
    if dist.rank() == 0:
        if tensors:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS))
        (tmp / STATE).write_text(json.dumps(state, indent=1))
        fault_point("state_written")
        write_manifest(tmp, verify)
        _fsync_tree(tmp)
        fault_point("before_rename")
        if final.exists():  # a checkpoint of this step from an earlier attempt: replaced
            old = root / f"{TMP}old_{final.name}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        _fsync(root)
        fault_point("before_latest")
        _write_atomic(root / LATEST, final.name)
        fault_point("before_prune")
        prune(root, keep_last)
    dist.barrier()
    return final


def prune(root: Path, keep_last: int) -> None:
    """Remove all but the newest `keep_last` checkpoints (never the one `latest` names)."""
    pointed = _pointer(root)
    for old in _committed(root)[:-keep_last] if keep_last > 0 else []:
        if old.name != pointed:
            shutil.rmtree(old, ignore_errors=True)


def _committed(root: Path) -> list[Path]:
    return sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX):].isdigit())


def _pointer(root: Path) -> str | None:
    try:
        return (root / LATEST).read_text().strip() or None
    except FileNotFoundError:
        return None


def _resolve_here(root: Path) -> str | None:
    pointed = _pointer(root)
    order = _committed(root)[::-1]
    if pointed is not None and not (root / pointed).is_dir():
        warnings.warn(f"{root / LATEST} names {pointed!r}, which does not exist; trying the newest other one",
                      RuntimeWarning, stacklevel=3)
    elif pointed is not None:
        order = sorted(order, key=lambda p: p.name != pointed)  # stable: the named one first, then newest
    for p in order:
        problem = check(p)
        if problem is None:
            return str(p)
        warnings.warn(f"checkpoint {p} is skipped: {problem}; trying the previous one", RuntimeWarning, stacklevel=3)
    return None


def resolve(root: Path) -> Path | None:
    """Collective: the newest usable checkpoint under `root` (rank 0 checks, every rank gets its
    answer), or None when there is none."""
    root = Path(root)
    found = _resolve_here(root) if dist.rank() == 0 and root.is_dir() else None
    found = dist.broadcast_object(found)
    return Path(found) if found else None


def load_state(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The trainer's JSON state and tensors of a checkpoint (restores this rank's RNG states too,
    when the checkpoint holds them)."""
    from safetensors.torch import load_file

    state = json.loads((folder / STATE).read_text())
    tensors = load_file(str(folder / TENSORS)) if (folder / TENSORS).exists() else {}
    return state, tensors


def restore_rng(folder: Path) -> bool:
    """This rank's RNG states from `folder`, if it saved them (same world size); True if restored."""
    path = folder / f"rng_rank{dist.rank()}.safetensors"
    if path.exists():
        load_rng(path)
        return True
    return False
