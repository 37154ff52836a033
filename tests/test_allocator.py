"""varpo.allocator: freed large blocks stay in malloc's heap; CPU tensors of 2 MiB and more on huge pages.

Each case runs in a fresh interpreter: both settings act on process-wide state that torch and glibc
fix at the first allocation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from varpo.allocator import THP_ENV, thp_mode


def _run(code: str, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if k != THP_ENV}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**base, **env}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert thp_mode(f) == "madvise"
    f.write_text("[never]\n")
    assert thp_mode(f) == "never"
    assert thp_mode(tmp_path / "absent") is None


@pytest.mark.skipif(thp_mode() in (None, "never"), reason="this kernel has no transparent huge pages to turn on")
def test_kept_memory_on_huge_pages_serves_every_later_large_tensor_without_page_faults():
    """The defaults together (runtime.keep_freed_memory and runtime.huge_pages): six 64 MiB tensors one
    after another land in the first one's memory, already mapped."""
    r = _run("""
        import json, resource, torch
        from varpo.allocator import huge_pages, keep_freed_memory
        on = keep_freed_memory(), huge_pages()[0]
        def fresh():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            x = torch.empty(64 << 20, dtype=torch.uint8); x.fill_(1)   # 64 MiB: glibc alone would mmap it
            return x.data_ptr(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        runs = [fresh() for _ in range(6)]
        print(json.dumps({"on": on, "ptrs": [p for p, _ in runs], "faults": [f for _, f in runs]}))
    """)
    if not r["on"][0]:
        pytest.skip("not glibc: keep_freed_memory reports it did nothing, which is its contract there")
    assert r["on"][1]
    assert len(set(r["ptrs"])) == 1
    assert r["faults"][0] >= (64 << 20) // (2 << 20)  # the first touch did fault (on 2 MiB pages)
    assert sum(r["faults"][1:]) < (64 << 20) // 4096 // 100  # the others: (almost) none


def test_keep_freed_memory_off_faults_every_large_tensor_in_again():
    r = _run("""
        import json, resource, torch
        def fresh():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            x = torch.empty(64 << 20, dtype=torch.uint8); x.fill_(1)
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        fresh()
        print(json.dumps({"faults": fresh()}))
    """, **{THP_ENV: "0"})
    assert r["faults"] >= (64 << 20) // 4096 // 2  # glibc unmapped it on free: its pages come back fresh


HUGE = """
    import json, torch
    {before}
    from varpo.allocator import huge_pages
    on, why = huge_pages()
    x = torch.empty(8 << 20, dtype=torch.uint8)
    print(json.dumps({{"on": on, "why": why, "aligned": x.data_ptr() % 4096 == 0}}))
"""


@pytest.mark.skipif(thp_mode() in (None, "never"), reason="this kernel has no transparent huge pages to turn on")
def test_huge_pages_turn_on_before_the_first_allocation():
    r = _run(HUGE.format(before=""))
    assert r == {"on": True, "why": "", "aligned": True}


@pytest.mark.skipif(thp_mode() in (None, "never"), reason="this kernel has no transparent huge pages to turn on")
def test_huge_pages_say_why_not_after_torch_allocated_or_when_the_user_said_0():
    late = _run(HUGE.format(before="torch.ones(4)"))
    assert not late["on"] and "already allocated" in late["why"] and f"export {THP_ENV}=1" in late["why"]
    assert not late["aligned"]
    user = _run(HUGE.format(before=""), **{THP_ENV: "0"})
    assert not user["on"] and f"{THP_ENV}=0" in user["why"] and not user["aligned"]


def test_huge_pages_off_in_the_kernel_is_reported(monkeypatch):
    import varpo.allocator as alloc

    monkeypatch.setattr(alloc, "thp_mode", lambda: "never")
    monkeypatch.delenv(THP_ENV, raising=False)
    assert alloc.huge_pages() == (False, "the kernel's transparent huge pages are never")
    assert THP_ENV not in os.environ  # nothing set where it cannot act
