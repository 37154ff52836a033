"""varpo.allocator.keep_freed_memory: large CPU tensors come from malloc's heap and stay mapped after
they are freed, instead of a fresh mmap returned to the kernel on free.

Each case runs in a fresh interpreter: mallopt settings are process-wide."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# A 64 MiB tensor (above glibc's largest mmap threshold, 32 MiB): where it lies in /proc/self/maps,
# whether the heap still covers it after it is freed, and the page faults of touching it twice.
PROBE = """
    import json, resource, torch
    {setup}
    def heap():
        for line in open("/proc/self/maps"):
            if line.rstrip().endswith("[heap]"):
                lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
                return lo, hi
        return 0, 0
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f0 = faults(); x = torch.empty(64 << 20, dtype=torch.uint8); x.fill_(1); f1 = faults()
    start, end = x.data_ptr(), x.data_ptr() + x.numel()
    lo, hi = heap(); in_heap = lo <= start and end <= hi
    del x
    lo, hi = heap(); kept = lo <= start and end <= hi
    f2 = faults(); y = torch.empty(64 << 20, dtype=torch.uint8); y.fill_(1); f3 = faults()
    print(json.dumps({{"on": on, "in_heap": in_heap, "kept_after_free": kept, "first": f1 - f0, "second": f3 - f2}}))
"""

# faults of touching 64 MiB of fresh pages, at least: 2 MiB pages where the kernel's transparent huge
# pages are `always`, 16384 on 4 KiB pages; memory already mapped takes none
FRESH = (64 << 20) // (2 << 20)


def _probe(setup: str) -> dict:
    code = textwrap.dedent(PROBE.format(setup=setup))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_serves_large_tensors_from_the_heap_and_keeps_them_mapped():
    r = _probe("from varpo.allocator import keep_freed_memory\n    on = keep_freed_memory()")
    if not r["on"]:
        pytest.skip("not glibc: keep_freed_memory reports it did nothing, which is its contract there")
    assert r["in_heap"] and r["kept_after_free"]
    assert r["first"] >= FRESH  # the first touch faults its pages in


def test_without_it_a_large_tensor_is_a_fresh_mapping_every_time():
    r = _probe("on = None")
    assert not r["in_heap"]
    # glibc unmapped it on free: the next one of the same size faults all its pages in again
    assert r["second"] >= FRESH
