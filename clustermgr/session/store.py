"""A session's state: one SQLite database in the session's folder.

The daemon is the only writer while it runs (one connection, its own thread); clients
read the database directly only to list sessions and to collect from a session whose
daemon is gone.  Task states: ``pending`` -> ``running`` (claimed by exactly one worker,
``attempts`` + 1) -> ``completed`` (its result stored once) or ``failed`` (the error's type,
message and remote traceback kept); a running task whose worker died goes back to
``pending`` until ``max_attempts``.  On resume, tasks left ``running`` by a killed daemon
go back to ``pending``: none had a stored result, so nothing runs twice to a result.

The daemon claims tasks in batches (:meth:`Store.claim_many`) and stores a batch's outcomes
in one transaction (:meth:`Store.finish_many`): one commit per batch, not per task, with
the same guard per task (only the worker holding the claim stores, once).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,          -- cloudpickled (fn, args, kwargs)
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    worker INTEGER,
    submitted REAL NOT NULL,
    started REAL,
    finished REAL,
    result BLOB,                    -- cloudpickled value, written once
    error_type TEXT, error_message TEXT, error_traceback TEXT
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL
);
"""

STATES = ("pending", "running", "completed", "failed")


class Store:
    """The database of one session.  Not thread-safe: one owner thread per instance."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        self.db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None,
                                  check_same_thread=False)
        if not readonly:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- meta --------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set(self, **items: Any) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in items.items()])

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    # --- events ------------------------------------------------------------------------

    def event(self, kind: str, **detail: Any) -> None:
        self.db.execute("INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)",
                        (time.time(), kind, json.dumps(detail)))

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT id, at, kind, detail FROM events WHERE id > ? ORDER BY id", (after,))
        return [{"id": i, "at": at, "kind": kind, **json.loads(d)} for i, at, kind, d in rows]

    # --- tasks -------------------------------------------------------------------------

    def add_tasks(self, payloads: Iterable[bytes]) -> list[int]:
        """Insert tasks (committed before this returns); their ids, in order."""
        now = time.time()
        ids = []
        with self.db:
            for payload in payloads:
                cur = self.db.execute("INSERT INTO tasks (payload, submitted) VALUES (?, ?)", (payload, now))
                ids.append(int(cur.lastrowid))  # type: ignore[arg-type]
        return ids

    def claim_many(self, worker: int, n: int) -> list[tuple[int, bytes]]:
        """Atomically hand the *n* oldest pending tasks to *worker* (one transaction)."""
        now = time.time()
        with self.db:
            rows = self.db.execute("SELECT id, payload FROM tasks WHERE state = 'pending' "
                                   "ORDER BY id LIMIT ?", (n,)).fetchall()
            self.db.executemany("UPDATE tasks SET state = 'running', worker = ?, attempts = attempts + 1, "
                                "started = ? WHERE id = ? AND state = 'pending'",
                                [(worker, now, row[0]) for row in rows])
        return [(int(i), bytes(p)) for i, p in rows]

    def finish_many(self, worker: int, outcomes: list[tuple[int, tuple]]) -> None:
        """Store a batch's outcomes in one transaction: ``(task, ("ok", result))`` or
        ``(task, ("err", type, message, traceback))``; each only if *worker* holds its
        claim.  A failed task's event is written in the same transaction."""
        now = time.time()
        done = [(o[1], now, t, worker) for t, o in outcomes if o[0] == "ok"]
        bad = [(now, o[1], o[2], o[3], t, worker) for t, o in outcomes if o[0] == "err"]
        resumed = [(o[1], t, worker) for t, o in outcomes if o[0] == "resume"]
        back = [(t, worker) for t, o in outcomes if o[0] == "requeue"]
        with self.db:
            if resumed:  # preempted with a checkpoint: it runs from there, uncharged
                self.db.executemany("UPDATE tasks SET state = 'pending', worker = NULL, payload = ?, "
                                    "attempts = attempts - 1 WHERE id = ? AND state = 'running' "
                                    "AND worker = ?", resumed)
            if back:  # not started (after a preemption in its batch)
                self.db.executemany("UPDATE tasks SET state = 'pending', worker = NULL, attempts = "
                                    "attempts - 1 WHERE id = ? AND state = 'running' AND worker = ?", back)
            self.db.executemany("UPDATE tasks SET state = 'completed', result = ?, finished = ? "
                                "WHERE id = ? AND state = 'running' AND worker = ?", done)
            if bad:
                self.db.executemany("UPDATE tasks SET state = 'failed', finished = ?, error_type = ?, "
                                    "error_message = ?, error_traceback = ? "
                                    "WHERE id = ? AND state = 'running' AND worker = ?", bad)
                self.db.executemany("INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)",
                                    [(now, "task failed", json.dumps({"task": b[4], "worker": worker,
                                                                      "error": f"{b[1]}: {b[2]}"}))
                                     for b in bad])

    def fail(self, task: int, worker: int, kind: str, message: str, tb: str) -> None:
        with self.db:
            self.db.execute("UPDATE tasks SET state = 'failed', finished = ?, error_type = ?, "
                            "error_message = ?, error_traceback = ? "
                            "WHERE id = ? AND state = 'running' AND worker = ?",
                            (time.time(), kind, message, tb, task, worker))

    def release(self, task: int, worker: int, count_attempt: bool = True) -> None:
        """Back to pending (its worker died or was removed)."""
        undo = 0 if count_attempt else 1
        with self.db:
            self.db.execute("UPDATE tasks SET state = 'pending', worker = NULL, attempts = attempts - ? "
                            "WHERE id = ? AND state = 'running' AND worker = ?", (undo, task, worker))

    def attempts(self, task: int) -> int:
        return int(self.db.execute("SELECT attempts FROM tasks WHERE id = ?", (task,)).fetchone()[0])

    def requeue_interrupted(self) -> int:
        """On resume: tasks a dead daemon left running go back to pending."""
        with self.db:
            cur = self.db.execute("UPDATE tasks SET state = 'pending', worker = NULL WHERE state = 'running'")
        return cur.rowcount

    def has_pending(self) -> bool:
        return self.db.execute("SELECT 1 FROM tasks WHERE state = 'pending' LIMIT 1").fetchone() is not None

    def count_pending(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM tasks WHERE state = 'pending'").fetchone()[0]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for state, n in self.db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state"):
            out[state] = n
        out["total"] = sum(out[s] for s in STATES)
        return out

    def finished(self, ids: list[int] | None = None) -> list[tuple]:
        """(id, state, result, error_type, error_message, error_traceback) of finished tasks."""
        sql = ("SELECT id, state, result, error_type, error_message, error_traceback FROM tasks "
               "WHERE state IN ('completed', 'failed')")
        if ids is None:
            return self.db.execute(sql + " ORDER BY id").fetchall()
        marks = ",".join("?" * len(ids))
        return self.db.execute(sql + f" AND id IN ({marks}) ORDER BY id", ids).fetchall()

    def task_info(self, task: int) -> dict[str, Any] | None:
        """A task's row, without its payload and result: for ``explain``."""
        cur = self.db.execute("SELECT id, state, attempts, worker, submitted, started, finished, error_type, "
                              "error_message, error_traceback FROM tasks WHERE id = ?", (task,))
        row = cur.fetchone()
        return None if row is None else dict(zip([c[0] for c in cur.description], row, strict=True))

    def task_state(self, task: int) -> str | None:
        row = self.db.execute("SELECT state FROM tasks WHERE id = ?", (task,)).fetchone()
        return None if row is None else row[0]
