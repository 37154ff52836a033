"""The Triton kernels compiled on a GPU: each one against its PyTorch twin on the same inputs and
against the twin in float64 on the same values (exactness), and its effective bandwidth against a
plain device copy of the same bytes.

    python benchmarks/gpu_kernels.py --out DIR            # on a CUDA machine (benchmarks/gpu_check.sh)
    python benchmarks/gpu_kernels.py --out DIR --dry-run  # CPU: Triton's interpreter, small shapes, no timing

Writes DIR/gpu_kernels.json: per kernel the shapes, the largest error against the twin and against
float64 and whether both are within tolerance, and on CUDA the median time, the bytes the kernel must move (inputs read
once, outputs written once), that as GB/s, and the ratio to `copy_` of the same number of bytes
(1.0 would be a kernel as fast as memory allows). Exit status 1 if any kernel disagrees with its twin.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device, reps: int) -> float:
    fn()
    _sync(device)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def copy_seconds(nbytes: int, device, reps: int) -> float:
    """Seconds of a device copy that reads and writes nbytes in total (nbytes/2 each way)."""
    import torch

    a = torch.empty(max(nbytes // 2, 1), dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    return median_seconds(lambda: b.copy_(a), device, reps)


def cases(device, dry: bool, reference=None, batch: int = 64):
    """(name, fn(backend), bytes moved, tolerance) per kernel, on deterministic inputs; with
    `reference` (torch.float64) every floating input is that dtype instead (the same values: the
    bf16 case's logits are its bf16 values), for the float64 answer each kernel is checked against."""
    import torch
    from varpo_kernels import (
        ensemble_head_stats,
        ensemble_stats,
        selective_log_softmax,
        weighted_kl,
        weighted_kl_from_logits,
    )

    g = torch.Generator(device="cpu").manual_seed(0)
    B, T, V = (2, 5, 300) if dry else (batch, 512, 50257)
    K, H = (10, 33) if dry else (10, 4096)
    N = B * T
    logits = (torch.randn(B, T, V, generator=g) * 2).to(device)
    logits_bf16 = logits.bfloat16()
    ids = torch.randint(0, V, (B, T), generator=g).to(device)
    mask = (torch.arange(T)[None, :] < torch.randint(1, T + 1, (B,), generator=g)[:, None]).to(device)
    other = (-torch.rand(B, T, generator=g) * 5).to(device)
    w = (torch.rand(B, generator=g) * 2).to(device)
    rew = torch.randn(N, K, generator=g).to(device)
    hid = torch.randn(N, H, generator=g).to(device)
    W = (torch.randn(K, H, generator=g) / H**0.5).to(device)
    bias = torch.randn(K, generator=g).to(device)
    if reference is not None:
        logits_bf16 = logits_bf16.to(reference)
        logits, other, w, rew, hid, W, bias = (x.to(reference) for x in (logits, other, w, rew, hid, W, bias))

    def fwd_bwd(backend, x):
        x = x.detach().clone().requires_grad_()
        lp = selective_log_softmax(x, ids, backend=backend)
        lp.sum().backward()
        return lp.detach(), x.grad

    def fused_bwd(backend):
        x = logits.detach().clone().requires_grad_()
        out = weighted_kl_from_logits(x, ids, other, mask, w, "k3", backend=backend)
        out.weighted_sum.sum().backward()
        return (*out, x.grad)

    f32, b16 = 4 * N * V, 2 * N * V
    return [
        ("selective_log_softmax fwd fp32", lambda b: selective_log_softmax(logits, ids, backend=b), f32 + 16 * N, 2e-5),
        ("selective_log_softmax fwd bf16", lambda b: selective_log_softmax(logits_bf16, ids, backend=b), b16 + 16 * N, 2e-5),
        ("selective_log_softmax fwd+bwd fp32", lambda b: fwd_bwd(b, logits), 3 * f32, 2e-5),
        ("weighted_kl_from_logits fwd k3 fp32",
         lambda b: weighted_kl_from_logits(logits, ids, other, mask, w, "k3", backend=b), f32 + 36 * N, 2e-5),
        ("weighted_kl_from_logits fwd+bwd k3 fp32", fused_bwd, 3 * f32, 2e-5),
        ("weighted_kl k3", lambda b: weighted_kl(other, other * 0.9, mask, w, "k3", backend=b), 4 * 5 * N, 1e-5),
        ("ensemble_stats", lambda b: ensemble_stats(rew, backend=b), 4 * N * (K + 4), 1e-5),
        ("ensemble_head_stats", lambda b: ensemble_head_stats(hid, W, bias, backend=b), 4 * (N * H + K * H + N * (K + 4)), 1e-4),
    ]


FLOAT64_TOL = 1e-4  # float32 arithmetic on logits of magnitude ~10 against the float64 answer


def max_error(a, b) -> float:
    import torch

    if isinstance(a, torch.Tensor):
        a, b = (a,), (b,)
    errs = []
    for x, y in zip(_flat(a), _flat(b)):
        errs.append(float((x.detach().double() - y.detach().double()).abs().max()) if x.numel() else 0.0)
    return max(errs)


def _flat(xs):
    import torch

    for x in xs:
        if isinstance(x, torch.Tensor):
            yield x
        else:
            yield from _flat(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, small shapes, no timing")
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args(argv)
    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton defines any kernel
    import torch
    from host import cpu_model

    if not a.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --dry-run on a CPU machine")
    device = torch.device("cpu" if a.dry_run else "cuda")
    rows = []
    # exactness against float64 on a batch of 8 (the timed batch of 64 in float64 would not fit beside it)
    small = [c[1] for c in cases(device, a.dry_run, batch=8)]
    exact = [c[1] for c in cases(device, a.dry_run, reference=torch.float64, batch=8)]
    for (name, fn, nbytes, tol), fn_small, fn64 in zip(cases(device, a.dry_run), small, exact):
        twin, tri = fn("torch"), fn("triton")
        err = max_error(tri, twin)
        # the float64 answer on the same input values (the PyTorch path in float64)
        err64 = max_error(fn_small("triton"), fn64("torch"))
        row = {"kernel": name, "max_abs_error_vs_torch_twin": err, "max_abs_error_vs_float64": err64,
               "tolerance": tol, "tolerance_vs_float64": FLOAT64_TOL, "ok": err <= tol and err64 <= FLOAT64_TOL}
        if not a.dry_run:
            t = median_seconds(lambda f=fn: f("triton"), device, a.reps)
            t_twin = median_seconds(lambda f=fn: f("torch"), device, max(3, a.reps // 4))
            t_copy = copy_seconds(nbytes, device, a.reps)
            row.update({"triton_s": t, "torch_twin_s": t_twin, "speedup_vs_twin": t_twin / t, "bytes_moved": nbytes,
                        "gb_per_s": nbytes / t / 1e9, "copy_gb_per_s": nbytes / t_copy / 1e9,
                        "bandwidth_vs_copy": t_copy / t})
        rows.append(row)
        print(json.dumps(row), flush=True)
    import triton

    res = {"command": "python benchmarks/gpu_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu (Triton interpreter): {cpu_model()}",
           "torch": torch.__version__, "triton": triton.__version__, "dry_run": a.dry_run, "kernels": rows,
           "all_ok": all(r["ok"] for r in rows)}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "gpu_kernels.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0 if res["all_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
