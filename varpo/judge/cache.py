"""Persistent answer cache: SQLite in WAL mode, one connection per thread, many writer processes.

An answer is committed the moment it is validated, so a run killed at any point loses nothing it
already paid for. Keys are SHA-256 digests of everything that determines the answer (endpoint,
model, template hash, bounds, prompt, response, sampling parameters) and never of the API key,
which is not stored anywhere. Only the key, the interval and the judge's raw answer are kept.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

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
    blob = json.dumps(
        {"base_url": base_url.rstrip("/"), "model": model, "template": template_sha256, "bounds": list(bounds),
         "prompt": prompt, "response": response, "temperature": temperature, "max_tokens": max_tokens},
        sort_keys=True, ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class JudgeCache:
    """get(key) -> (low, high) | None; put(key, low, high, raw, model). Thread- and process-safe."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._conn().execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # autocommit (isolation_level=None): every put is its own durable transaction
            conn = sqlite3.connect(self.path, timeout=self._busy_ms / 1000, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed answer survives a killed process (not a power cut)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

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

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                try:
                    c.close()
                except sqlite3.ProgrammingError:
                    pass  # a connection owned by a finished thread
            self._all.clear()
        self._local = threading.local()
