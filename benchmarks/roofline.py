"""This machine's own ceilings, measured: the matrix-product peak (FLOP/s of a large square product
at a given dtype and torch thread count) and the memory bandwidth (bytes/s of a large tensor copy),
and a run's utilisation of them per phase (FLOPs / seconds / peak; generation's bytes / seconds /
bandwidth). `ppo_vs_trl.py` runs the probe in a child with its runs' thread count and dtype.

    python benchmarks/roofline.py --threads 1 --dtype float32          # JSON on stdout
    python benchmarks/roofline.py --device cuda --dtype bfloat16

On a GPU the same figures are the card's (CUDA events around the same products and copy)."""
from __future__ import annotations

import argparse
import functools
import json
import time

DTYPES = ("float32", "bfloat16", "float16", "float64")


def _timer(device: str):
    import torch

    if device.startswith("cuda"):
        def run(fn):
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000.0
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return run


def matmul_peak(dtype: str = "float32", device: str = "cpu", sizes: tuple[int, ...] | None = None,
                budget_s: float = 1.5) -> dict:
    """The best FLOP/s of n×n @ n×n products over a few sizes (2n³ FLOPs each), each size repeated
    for about budget_s / len(sizes) seconds after one warm-up product."""
    import torch

    dt = getattr(torch, dtype)
    sizes = sizes or ((4096, 8192) if device.startswith("cuda") else (512, 1024, 2048))
    timed = _timer(device)
    best, per_size = 0.0, {}
    for n in sizes:
        a, b = torch.randn(n, n, device=device).to(dt), torch.randn(n, n, device=device).to(dt)
        out = torch.empty(n, n, device=device, dtype=dt)
        product = functools.partial(torch.mm, a, b, out=out)
        timed(product)  # warm-up: kernels chosen, pages touched
        spent, rate = 0.0, 0.0
        while spent < budget_s / len(sizes):
            s = timed(product)
            spent += s
            rate = max(rate, 2 * n**3 / s)
        per_size[n] = rate
        best = max(best, rate)
    return {"flops_per_s": best, "per_size": per_size, "dtype": dtype, "device": device,
            "threads": torch.get_num_threads()}


def memory_bandwidth(device: str = "cpu", nbytes: int = 256 * 2**20, repeats: int = 5) -> dict:
    """Bytes/s of copying a large float32 tensor into another (read + write counted, STREAM's
    convention), best of `repeats` after one warm-up copy."""
    import torch

    n = nbytes // 4
    src, dst = torch.rand(n, device=device), torch.empty(n, device=device)
    timed = _timer(device)
    timed(lambda: dst.copy_(src))
    best = min(timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return {"bytes_per_s": 2 * n * 4 / best, "bytes": 2 * n * 4, "device": device, "threads": torch.get_num_threads()}


def probe(dtype: str = "float32", device: str = "cpu", threads: int | None = None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return {"matmul": matmul_peak(dtype, device), "memory": memory_bandwidth(device)}


def utilisation(flops: dict[str, float], seconds: dict[str, float], peak_flops_per_s: float,
                generate_bytes: float | None = None, bandwidth: float | None = None) -> dict:
    """Per phase: achieved FLOP/s (FLOPs / seconds) and its share of the peak (MFU); for generation
    also bytes/s and their share of the measured bandwidth. A phase without time or FLOPs is None."""
    rate = {ph: (flops[ph] / seconds[ph] if flops.get(ph) and seconds.get(ph) else None) for ph in flops}
    out = {"flops_per_s": rate,
           "mfu": {ph: (r / peak_flops_per_s if r is not None and peak_flops_per_s else None) for ph, r in rate.items()}}
    if generate_bytes and seconds.get("generate") and bandwidth:
        out["generate_bytes_per_s"] = generate_bytes / seconds["generate"]
        out["generate_bandwidth_fraction"] = out["generate_bytes_per_s"] / bandwidth
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float32", choices=DTYPES)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    a = ap.parse_args(argv)
    print(json.dumps(probe(a.dtype, a.device, a.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
