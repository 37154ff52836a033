"""Selective log-softmax: fused path vs `log_softmax + gather`, time, peak extra memory, error.

    python benchmarks/logprob_kernel.py --out benchmarks/results/kernels

Writes DIR/kernels.json (one entry per shape, op and backend: shape, backend, op, dtype,
max_abs_err vs float64, seconds_fused, seconds_naive (medians of alternating repetitions),
peak_bytes_fused, peak_bytes_naive, ...) and DIR/kernels.md (the same as a table).

- CPU: backend "torch" (the chunked PyTorch path) at 1024×32000, 4096×8192, 4096×32000, float32.
  Peak extra memory is the RSS high-water mark (VmHWM, reset through /proc/self/clear_refs) of a
  fresh subprocess per measurement, minus its RSS once the inputs exist: torch's CPU allocator is
  invisible to tracemalloc. The subprocess runs with a fixed glibc mmap threshold (MALLOC_ENV), so
  freed blocks leave the RSS and the mark is what was live at once.
- CUDA (when present): backends "triton" and "torch" (and "liger" when liger-kernel is installed)
  at 4096×32000 and 16384×151936, bfloat16; peak = torch.cuda.max_memory_allocated above the inputs;
  achieved bandwidth (logit bytes read / seconds) against a measured device-to-device copy.
Ops: "fwd" (log-probs only, under no_grad) and "fwd+bwd" (log-probs, then d/dlogits; the fused
path writes the gradient in place into the logits, the naive path keeps its log-softmax for backward).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from host import ForeignCpu, describe, machine  # benchmarks/, the script's own folder
from varpo_kernels import selective_log_softmax, selective_log_softmax_naive
from varpo_kernels.selective_log_softmax import CHUNK_ELEMENTS

CPU_SHAPES = [(1024, 32000), (4096, 8192), (4096, 32000)]
CUDA_SHAPES = [(4096, 32000), (16384, 151936)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------- the measured calls


def make_inputs(N, V, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    # one extra row: Liger's kernel reads logits [B, L + 1, V] (it drops the last position)
    x_full = (torch.randn(N + 1, V, generator=g, device=device, dtype=torch.float32) * 2).to(dtype)
    ids = torch.randint(0, V, (N,), generator=g, device=device)
    return x_full, ids


def run_op(path, op, x, ids, chunk):
    """One call of `path` ("fused"/"naive"/"liger") for `op`; returns the log-probs."""
    if op == "fwd":
        with torch.no_grad():
            if path == "fused":
                return selective_log_softmax(x, ids, backend=_BACKEND, chunk_size=chunk)
            if path == "liger":
                from liger_kernel.ops.grpo_loss import fused_selective_log_softmax

                return fused_selective_log_softmax(_LIGER_FULL[None], ids[None], 1.0).reshape(-1)
            return selective_log_softmax_naive(x, ids)
    x.requires_grad_(True)
    if path == "fused":
        lp = selective_log_softmax(x, ids, backend=_BACKEND, chunk_size=chunk, inplace_backward=True)
    else:
        lp = selective_log_softmax_naive(x, ids)
    # autograd.grad, as for a non-leaf (the trainer's logits come out of lm_head): no AccumulateGrad
    # copy of a gradient that aliases the logits
    torch.autograd.grad(lp.sum(), x)
    x.requires_grad_(False)
    return lp.detach()


_BACKEND = "torch"
_LIGER_FULL = None


def reference_logp(x, ids, rows=256):
    """float64 log p(ids), computed in row chunks (a full float64 copy would be 2× the naive path)."""
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], rows):
        c = x[s:s + rows].double()
        out[s:s + rows] = c.gather(1, ids[s:s + rows, None]).squeeze(1) - torch.logsumexp(c, -1)
    return out


# ---------------------------------------------------------------------------- CPU memory (subprocess)


def _status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child_measure(args):
    """In a fresh process: inputs, a warm-up at a tiny size, reset the high-water mark, one call."""
    N, V, dtype, op, path, chunk = args.child
    N, V = int(N), int(V)
    chunk = None if chunk == "None" else int(chunk)
    torch.set_num_threads(args.threads)
    tiny, tids = make_inputs(8, 64, DTYPES[dtype], "cpu")
    run_op(path, op, tiny[:8].clone(), tids, chunk)  # load kernels, thread pools
    x_full, ids = make_inputs(N, V, DTYPES[dtype], "cpu")
    x = x_full[:N]
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    base = _status("VmRSS") if reset else _status("VmHWM")
    run_op(path, op, x, ids, chunk)
    print(json.dumps({"peak_extra_bytes": _status("VmHWM") - base, "hwm_reset": reset}))


# glibc's malloc moves its mmap threshold up to the size of the last freed mapping (at most
# 32 MiB), after which blocks of that size are served from the heap and stay resident after free;
# the chunked path's temporaries are ~32 MiB, so whether they showed in the RSS peak depended on
# the allocator's history (measured: 32 MiB in one run, 192 MiB in the next, same code). A fixed
# threshold maps every large block and unmaps it on free, for both paths, so the high-water mark
# is the memory actually live at once.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def measure_cpu_peak(N, V, dtype, op, path, chunk, threads):
    cmd = [sys.executable, __file__, "--child", str(N), str(V), dtype, op, path, str(chunk), "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **MALLOC_ENV})
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- timing


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_alternating(paths, op, x, ids, chunk, reps, device):
    """Median seconds per path; the paths alternate within each repetition so that contention
    from other processes hits all of them alike. fwd+bwd overwrites x, so it is restored (untimed)."""
    pristine = x.clone() if op == "fwd+bwd" else None
    times = {p: [] for p in paths}
    for p in paths:  # warm-up
        run_op(p, op, x, ids, chunk)
        if pristine is not None:
            x.copy_(pristine)
    for _ in range(reps):
        for p in paths:
            _sync(device)
            t0 = time.perf_counter()
            run_op(p, op, x, ids, chunk)
            _sync(device)
            times[p].append(time.perf_counter() - t0)
            if pristine is not None:
                x.copy_(pristine)
    return {p: statistics.median(v) for p, v in times.items()}, {p: v for p, v in times.items()}


def cuda_peak(path, op, x, ids, chunk):
    pristine = x.clone() if op == "fwd+bwd" else None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run_op(path, op, x, ids, chunk)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    if pristine is not None:
        x.copy_(pristine)
    del pristine
    return peak


def copy_bandwidth(nbytes):
    """Device-to-device copy bandwidth in bytes/s (read + write)."""
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    ts = []
    for _ in range(10):
        t0 = time.perf_counter()
        b.copy_(a)
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(ts)


def liger_available():
    try:
        from liger_kernel.ops.grpo_loss import fused_selective_log_softmax  # noqa: F401

        return True
    except Exception:  # noqa: BLE001 - absent or broken install: just not benchmarked
        return False


# ---------------------------------------------------------------------------- main


def bench_device(device, shapes, dtype_name, backends, ops, chunk, reps, threads):
    global _BACKEND, _LIGER_FULL
    entries = []
    dtype = DTYPES[dtype_name]
    for N, V in shapes:
        x_full, ids = make_inputs(N, V, dtype, device)
        x = x_full[:N]
        ref = reference_logp(x, ids)
        for backend in backends:
            for op in ops:
                if backend == "liger" and op != "fwd":
                    continue  # Liger's selective log-softmax is forward-only (no_grad)
                _BACKEND = backend if backend != "liger" else "torch"
                _LIGER_FULL = x_full
                fused = "liger" if backend == "liger" else "fused"
                err = (run_op(fused, op, x, ids, chunk).double() - ref).abs().max().item()
                if op == "fwd+bwd":
                    x.copy_(make_inputs(N, V, dtype, device)[0][:N])
                err_naive = (run_op("naive", op, x, ids, chunk).double() - ref).abs().max().item()
                med, raw = time_alternating([fused, "naive"], op, x, ids, chunk, reps, device)
                if device == "cpu":
                    pf = measure_cpu_peak(N, V, dtype_name, op, fused, chunk, threads)
                    pn = measure_cpu_peak(N, V, dtype_name, op, "naive", chunk, threads)
                    peak_f, peak_n, reset = pf["peak_extra_bytes"], pn["peak_extra_bytes"], pf["hwm_reset"]
                else:
                    peak_f, peak_n, reset = cuda_peak(fused, op, x, ids, chunk), cuda_peak("naive", op, x, ids, chunk), None
                e = {
                    "shape": [N, V], "backend": backend, "op": op, "dtype": dtype_name, "device": device,
                    "chunk_size": (chunk or max(1, CHUNK_ELEMENTS // V)) if backend == "torch" else None,
                    "max_abs_err": err, "max_abs_err_naive": err_naive,
                    "seconds_fused": med[fused], "seconds_naive": med["naive"],
                    "seconds_fused_all": raw[fused], "seconds_naive_all": raw["naive"],
                    "speedup": med["naive"] / med[fused],
                    "peak_bytes_fused": peak_f, "peak_bytes_naive": peak_n,
                    "peak_ratio": peak_f / peak_n if peak_n > 0 else None,
                }
                if reset is not None:
                    e["rss_hwm_reset"] = reset
                if device == "cuda" and op == "fwd":
                    nbytes = x.numel() * x.element_size()
                    e["bandwidth_bytes_per_s"] = nbytes / med[fused]
                    e["copy_bandwidth_bytes_per_s"] = copy_bandwidth(nbytes)
                    e["bandwidth_fraction_of_copy"] = e["bandwidth_bytes_per_s"] / e["copy_bandwidth_bytes_per_s"]
                entries.append(e)
                print(json.dumps({k: v for k, v in e.items() if not k.endswith("_all")}), file=sys.stderr, flush=True)
        del x_full, x, ids, ref
        if device == "cuda":
            torch.cuda.empty_cache()
    return entries


def write_markdown(path, result):
    m = result["machine"]
    lines = [
        "# Selective log-softmax: fused vs `log_softmax + gather`", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, torch {m.get('torch')}"
        + (f", GPU {m['gpu']}" if "gpu" in m else ", no GPU") + "  ",
        f"Load average at start / end: {m.get('loadavg_start')} / {result.get('loadavg_end')}; "
        f"{describe(result.get('foreign_cores'))}; timings are medians of alternating repetitions", "",
        "| device | backend | op | shape | dtype | max abs err (fused / naive) | s fused | s naive | speedup "
        "| peak extra fused | peak extra naive | fused/naive mem | bandwidth vs copy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in result["entries"]:
        bw = f"{e['bandwidth_fraction_of_copy']:.0%}" if "bandwidth_fraction_of_copy" in e else "–"
        ratio = f"{e['peak_ratio']:.1%}" if e["peak_ratio"] is not None else "–"
        lines.append(
            f"| {e['device']} | {e['backend']} | {e['op']} | {e['shape'][0]}×{e['shape'][1]} | {e['dtype']} "
            f"| {e['max_abs_err']:.2e} / {e['max_abs_err_naive']:.2e} | {e['seconds_fused']:.3f} | {e['seconds_naive']:.3f} "
            f"| {e['speedup']:.2f}× | {e['peak_bytes_fused'] / 2**20:.1f} MiB | {e['peak_bytes_naive'] / 2**20:.1f} MiB "
            f"| {ratio} | {bw} |"
        )
    for note in result["notes"]:
        lines += ["", note]
    Path(path).write_text("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=False, help="output folder (kernels.json, kernels.md)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--chunk-size", type=int, default=None, help="rows per chunk of the PyTorch path (default: auto)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--ops", default="fwd,fwd+bwd")
    ap.add_argument("--cpu-shapes", default=",".join(f"{n}x{v}" for n, v in CPU_SHAPES))
    ap.add_argument("--cuda-shapes", default=",".join(f"{n}x{v}" for n, v in CUDA_SHAPES))
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child_measure(args)
    if not args.out:
        ap.error("--out is required")
    torch.set_num_threads(args.threads)
    shapes = lambda s: [tuple(int(v) for v in item.split("x")) for item in s.split(",") if item]  # noqa: E731
    ops = args.ops.split(",")
    notes = []
    watch = ForeignCpu()
    info = machine(loadavg_start=[round(x, 2) for x in os.getloadavg()])
    entries = bench_device("cpu", shapes(args.cpu_shapes), "float32", ["torch"], ops, args.chunk_size, args.reps, args.threads)
    if torch.cuda.is_available():
        backends = ["triton", "torch"] + (["liger"] if liger_available() else [])
        if "liger" not in backends:
            notes.append("liger-kernel is not installed: no Liger entries.")
        entries += bench_device("cuda", shapes(args.cuda_shapes), "bfloat16", backends, ops, args.chunk_size, args.reps,
                                args.threads)
    else:
        notes.append("No CUDA device in this run: the Triton, Liger and bandwidth measurements (16384×151936) "
                     "were not run; the script runs them when CUDA is present.")
    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "machine": info, "entries": entries, "notes": notes,
    }
    try:
        result["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    result["foreign_cores"] = watch.cores()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(out / "kernels.md", result)
    print(f"wrote {out / 'kernels.json'} and {out / 'kernels.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
