"""The benchmark scripts import their siblings by bare name (`from host import machine`), as a
script run from benchmarks/ does; the tests of their pure parts import them the same way, so
benchmarks/ goes on sys.path here, once. That is safe only because no module in benchmarks/ carries
the top-level name of an installed package (tests/package/test_no_shadowing.py)."""
import sys
from pathlib import Path

BENCHMARKS = str(Path(__file__).resolve().parents[2] / "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.append(BENCHMARKS)  # after site-packages: an installed package always wins a name clash
