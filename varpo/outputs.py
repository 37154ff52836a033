"""Machine-readable outputs beside every rich table: JSON files, JSONL streams, tables."""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, data: Any) -> Path:
    """Atomic JSON write (temp file + rename), so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def append_jsonl(path: str | Path, row: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row, default=_jsonable) + "\n")
        f.flush()


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# metrics.jsonl keys that measure the machine (wall and CPU time, throughput), not the run, and the
# work those timings are divided into (matrix-product FLOPs and bytes per phase: varpo.ppo.phase_flops)
TIMING_KEYS = ("time/", "episodes_per_s", "tokens_per_s", "flops/", "bytes/")


def without_timings(row: dict) -> dict:
    """A metrics row less its timing keys: what a resumed or repeated run must reproduce exactly."""
    return {k: v for k, v in row.items() if not k.startswith(TIMING_KEYS)}


def print_table(title: str, rows: Iterable[dict], columns: list[str] | None = None, fmt: str = "{:.4g}") -> None:
    """Render rows (list of dicts) as a rich table on stderr; stdout stays free for JSON."""
    rows = list(rows)
    if not rows:
        return
    columns = columns or list(rows[0].keys())
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if isinstance(rows[0].get(c), (int, float)) else "left")
    for r in rows:
        table.add_row(*[fmt.format(v) if isinstance(v, float) else str(v) for v in (r.get(c, "") for c in columns)])
    console.print(table)


def progress(transient: bool = False):
    """A rich progress bar with elapsed and remaining time, for long loops."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, transient=transient, disable=os.environ.get("VARPO_NO_PROGRESS") == "1",
    )


class PhaseTimer:
    """Wall seconds per named phase of a step, summed while a phase recurs: `with timer("update"): ...`;
    `timer.timings` is what a metrics row reports as time/<phase>."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    def reset(self) -> None:
        self.timings = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0
