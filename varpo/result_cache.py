"""Persistent result caches for remote scorers (LLM judges, reward servers): SQLite in WAL mode,
one connection per thread, many writer processes.

A result is committed the moment it is received, so a run killed at any point loses nothing it
already paid for. Keys are SHA-256 digests (`digest`) of everything that determines the result and
never of a secret (an API key is not stored anywhere). `SqliteStore` holds the connection
handling; the judge's `JudgeCache` (its own table of intervals) and `JsonResultCache` (a JSON
value per key, used by the remote reward) build on it.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path


def digest(**fields) -> str:
    """SHA-256 of the fields as canonical JSON (sorted keys): the cache key of one result."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class SqliteStore:
    """A SQLite file with `schema` applied, opened once per thread. Thread- and process-safe."""

    def __init__(self, path: str | Path, schema: str, busy_timeout_s: float = 60.0):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._conn().execute(schema)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # autocommit (isolation_level=None): every put is its own durable transaction
            conn = sqlite3.connect(self.path, timeout=self._busy_ms / 1000, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed result survives a killed process (not a power cut)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                try:
                    c.close()
                except sqlite3.ProgrammingError:
                    pass  # a connection owned by a finished thread
            self._all.clear()
        self._local = threading.local()


_JSON_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    model TEXT NOT NULL,
    created REAL NOT NULL
)
"""


class JsonResultCache(SqliteStore):
    """get(key) -> dict | None; put(key, value, model). The first writer of a key wins."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0):
        super().__init__(path, _JSON_SCHEMA, busy_timeout_s)

    def get(self, key: str) -> dict | None:
        row = self._conn().execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict, model: str) -> None:
        self._conn().execute("INSERT OR IGNORE INTO results (key, value, model, created) VALUES (?, ?, ?, ?)",
                             (key, json.dumps(value), model, time.time()))

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM results").fetchone()[0])
