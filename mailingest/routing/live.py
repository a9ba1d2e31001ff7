"""The rules a running daemon uses, reloaded when the files change or on SIGHUP.

A broken file never takes the daemon down: the last good rules stay active, the error is
logged and kept in ``status()`` (``/healthz`` shows it under ``rules``). Polling mtimes every
``[rules] reload`` seconds from a daemon thread: no new dependency, works on every filesystem.
"""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from mailingest.errors import ConfigError
from mailingest.routing.loader import load_dir, snapshot
from mailingest.routing.model import Rule

log = structlog.get_logger("mailingest.routing")
_current: LiveRules | None = None  # the latest instance in this process, for status()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class LiveRules:
    """Holds the active rules; ``rules`` is swapped atomically on a good reload."""

    def __init__(self, path: Path, *, interval: float = 2.0) -> None:
        global _current
        self.path = path
        self.interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._hup = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self.loaded_at: str | None = None
        self.reloads = 0
        rules, problems = load_dir(path)
        if problems:  # at start a broken rule set is a configuration error, as before
            raise ConfigError("invalid routing rules:\n  " + "\n  ".join(str(p) for p in problems))
        self.rules: list[Rule] = rules
        self._seen = snapshot(path)
        self.loaded_at = _now()
        _current = self

    def reload(self) -> bool:
        """Load the files again; keep the old rules and record the error if they are broken."""
        with self._lock:
            self._seen = snapshot(self.path)
            rules, problems = load_dir(self.path)
            if problems:
                self.error = "; ".join(str(p) for p in problems)
                log.error(
                    "routing rules not reloaded; the last good rules stay active",
                    path=str(self.path),
                    error=self.error,
                )
                return False
            self.rules, self.error, self.loaded_at = rules, None, _now()
            self.reloads += 1
            log.info("routing rules reloaded", path=str(self.path), rules=[r.name for r in rules])
            return True

    def changed(self) -> bool:
        return snapshot(self.path) != self._seen

    def poll_once(self) -> None:
        if self._hup.is_set():
            self._hup.clear()
            self.reload()
        elif self.changed():
            self.reload()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval if self.interval > 0 else None)
            self._wake.clear()
            if self._stopping:
                return
            if self.interval <= 0 and not self._hup.is_set():
                continue
            try:
                self.poll_once()
            except Exception:
                log.exception("rules watcher failed once; continuing")

    def start(self) -> None:
        """Start the watcher thread and, in the main thread, catch SIGHUP (``kill -HUP``)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rules-watcher", daemon=True)
            self._thread.start()
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN, None):
            signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def request_reload(self) -> None:
        """From the SIGHUP handler: wake the watcher thread, which reloads (no I/O in the handler)."""
        self._hup.set()
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def status(self) -> dict[str, Any]:
        return {
            "ok": self.error is None,
            "path": str(self.path),
            "rules": len(self.rules),
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "error": self.error,
        }


def status() -> dict[str, Any] | None:
    """The ``rules`` entry for /healthz: None when no daemon loaded rules in this process."""
    return _current.status() if _current is not None else None
