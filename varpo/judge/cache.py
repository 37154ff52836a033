"""Persistent answer cache of the judges: SQLite in WAL mode (varpo.result_cache), one connection per
thread, many writer processes.

An answer is committed the moment it is validated, so a run killed at any point loses nothing it
already paid for. Keys are SHA-256 digests of everything that determines the answer (endpoint,
model, template hash, bounds, prompt, response, sampling parameters) and never of the API key,
which is not stored anywhere. Only the key, the interval and the judge's raw answer are kept.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..result_cache import SqliteStore, digest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    low REAL NOT NULL,
    high REAL NOT NULL,
    raw TEXT NOT NULL,
    model TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(*, base_url: str, model: str, template_sha256: str, bounds: tuple[float, float], prompt: str,
              response: str, temperature: float, max_tokens: int) -> str:
    return digest(base_url=base_url.rstrip("/"), model=model, template=template_sha256, bounds=list(bounds),
                  prompt=prompt, response=response, temperature=temperature, max_tokens=max_tokens)


class JudgeCache(SqliteStore):
    """get(key) -> (low, high) | None; put(key, low, high, raw, model). Thread- and process-safe
    (the connection handling is varpo.result_cache's, shared with the remote reward's cache)."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0):
        super().__init__(path, _SCHEMA, busy_timeout_s)

    def get(self, key: str) -> tuple[float, float] | None:
        row = self._conn().execute("SELECT low, high FROM answers WHERE key = ?", (key,)).fetchone()
        return (float(row[0]), float(row[1])) if row else None

    def put(self, key: str, low: float, high: float, raw: str, model: str) -> None:
        # first writer wins: two processes that paid for the same answer keep the earlier one
        self._conn().execute(
            "INSERT OR IGNORE INTO answers (key, low, high, raw, model, created) VALUES (?, ?, ?, ?, ?, ?)",
            (key, float(low), float(high), raw, model, time.time()),
        )

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM answers").fetchone()[0])
