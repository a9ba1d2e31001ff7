"""``mailingest serve``: wire sources, pipeline worker, outbox dispatcher and API in one process.

Threads: the SMTP receiver (aiosmtpd's own loop), the drop-directory poller, one per IMAP
(account, folder), one pipeline worker (plus ``[pipeline] workers - 1`` worker processes), the
dispatcher (with a small delivery pool); the API runs on the main thread's asyncio loop under
uvicorn. SIGTERM/SIGINT stop intake first, let the
worker finish the message in hand (an unfinished one is simply processed again at the next
start), then stop delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import structlog
import uvicorn

from mailingest import __version__, systemd
from mailingest.config import Config, parse_listen
from mailingest.connectors.dispatcher import Dispatcher
from mailingest.connectors.registry import build_connectors
from mailingest.errors import MailingestError, SourceError
from mailingest.ledger import Ledger
from mailingest.sources.base import Source
from mailingest.sources.drop import DropSource
from mailingest.sources.graph import GraphSource
from mailingest.sources.imap import ImapSource
from mailingest.sources.smtp import SmtpSource
from mailingest.storage import db, repo
from mailingest.storage.blobs import BlobStore
from mailingest.workers import EXTRA_WORKER_POLL, Worker, WorkerPool, build_runtime

log = structlog.get_logger("mailingest.daemon")


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT and stops
    intake and workers in order (uvicorn would re-raise the signal after serving)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine = db.make_engine(config.storage_url, echo=config.storage.echo)
        self.wake = threading.Event()  # rung by sources on new mail
        self.work_done = threading.Event()  # rung by the pipeline when there is something to deliver
        self.blobs = BlobStore(config.data_dir / "blobs", in_database=config.storage.documents == "database")
        self.ledger = Ledger(self.engine, self.blobs, self.wake)
        self.sources: list[Source] = []
        self.stop_event = threading.Event()
        self.smtp_port: int | None = None

    def _prepare(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        db.upgrade(self.engine)
        with db.session_scope(self.engine) as session:
            reclaimed = repo.release_stale_claims(session)
        if reclaimed:
            log.warning("resuming messages interrupted by the last stop", count=reclaimed)
        connectors = build_connectors(self.config)
        outbox = self.config.outbox
        self.dispatcher = Dispatcher(
            self.engine,
            connectors,
            schedule=outbox.retry_schedule,
            concurrency=outbox.concurrency,
            # extra worker processes cannot ring the dispatcher: poll as often as they poll the ledger
            poll_interval=outbox.poll_interval
            if self.config.pipeline.workers == 1
            else min(outbox.poll_interval, EXTRA_WORKER_POLL),
            wake=self.work_done,
        )
        runtime = build_runtime(self.config, self.engine, self.blobs, "worker-1")
        self.worker = Worker(runtime, self.wake, self.work_done, self.config.pipeline.poll_interval)
        self.worker_thread = threading.Thread(target=self.worker.run, name="pipeline", daemon=True)
        self.pool = WorkerPool(self.config, self.config.pipeline.workers - 1)
        if self.pool.processes and threading.current_thread() is threading.main_thread():
            self._forward_sighup()
        self.dispatch_thread = threading.Thread(
            target=self.dispatcher.run_forever, name="dispatcher", daemon=True
        )

    def _forward_sighup(self) -> None:
        """``kill -HUP`` reloads the rules here (the watcher's handler) and in every worker."""
        previous = signal.getsignal(signal.SIGHUP)

        def on_hup(signum: int, frame: Any) -> None:
            if callable(previous):
                previous(signum, frame)
            self.pool.signal(signum)

        signal.signal(signal.SIGHUP, on_hup)

    def _start_sources(self) -> None:
        src = self.config.sources
        if src.drop.enabled:
            self.sources.append(DropSource(src.drop, self.config.drop_path, self.ledger))
        if src.smtp.enabled:
            smtp = SmtpSource(src.smtp)
            self.sources.append(smtp)
        self.sources.extend(
            ImapSource(account, self.ledger, self.config.data_dir) for account in src.imap if account.enabled
        )
        self.sources.extend(GraphSource(g, self.ledger, self.config.data_dir) for g in src.graph if g.enabled)
        for source in self.sources:
            source.start(self.ledger.accept)
            if isinstance(source, SmtpSource):
                self.smtp_port = source.port

    def health(self) -> dict[str, Any]:
        return {
            "pipeline": "ok" if self.worker_thread.is_alive() and self.pool.alive() else "stopped",
            "dispatcher": "ok" if self.dispatch_thread.is_alive() else "stopped",
        }

    def sources_status(self) -> dict[str, dict[str, Any]]:
        """Mailbox connections (IMAP folders, Graph mailboxes) by ``<source>:<account>/<folder>``.

        Kept out of ``health()`` on purpose: that also feeds the systemd watchdog, and restarting
        the daemon cannot fix a mail server that is down or a revoked token."""
        status: dict[str, dict[str, Any]] = {}
        for source in list(self.sources):
            if isinstance(source, (ImapSource, GraphSource)):
                status.update({f"{v['source']}:{k}": v for k, v in source.status().items()})
        return status

    def _bind_api(self) -> socket.socket | None:
        """Bind the API port before anything starts, so a busy port is a clear error, not a crash."""
        if not self.config.api.enabled:
            return None
        host, port = parse_listen(self.config.api.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP;
        # with proto 0 every small response waits ~40 ms on Nagle + delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise SourceError(
                f"cannot listen for the API on {self.config.api.listen}: {exc.strerror}"
            ) from exc
        sock.listen(128)
        sock.set_inheritable(False)
        return sock

    def run(self) -> None:
        self._prepare()
        api_socket = self._bind_api()
        try:
            self._start_sources()
        except MailingestError:
            for source in self.sources:
                source.stop()
            if api_socket is not None:
                api_socket.close()
            raise
        self.worker_thread.start()
        self.pool.start()
        self.dispatch_thread.start()
        watchdog_stop = threading.Event()
        systemd.start_watchdog(watchdog_stop, lambda: all(v == "ok" for v in self.health().values()))
        log.info(
            "mailingest started",
            version=__version__,
            data_dir=str(self.config.data_dir.resolve()),
            storage=self.engine.url.render_as_string(hide_password=True),
            smtp_port=self.smtp_port,
            api=self.config.api.listen if self.config.api.enabled else None,
            drop=str(self.config.drop_path) if self.config.sources.drop.enabled else None,
            connectors=sorted(self.dispatcher.connectors),
            workers=self.config.pipeline.workers,
        )
        try:
            if api_socket is not None:
                asyncio.run(self._serve_api(api_socket))
            else:
                self._wait_for_signal()
        finally:
            watchdog_stop.set()
            self.shutdown()

    async def _serve_api(self, sock: socket.socket) -> None:
        from mailingest.api.app import create_app

        server = _ApiServer(
            uvicorn.Config(
                create_app(
                    self.engine,
                    self.health,
                    config=self.config,
                    sources_status=self.sources_status,
                    wake=self.wake,
                ),
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, server)
        serve = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serve.done():
            await asyncio.sleep(0.05)
        if serve.done():
            serve.result()
            raise MailingestError(f"API could not listen on {self.config.api.listen}")
        self._ready()
        await serve

    def _ready(self) -> None:
        systemd.notify("READY=1\nSTATUS=receiving mail")
        log.info("ready")

    def _request_stop(self, server: uvicorn.Server | None = None) -> None:
        log.info("stop requested; finishing work in hand")
        systemd.notify("STOPPING=1")
        self.stop_event.set()
        if server is not None:
            server.should_exit = True

    def _wait_for_signal(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._request_stop())
        self._ready()
        while not self.stop_event.wait(0.5):
            pass

    def shutdown(self) -> None:
        for source in self.sources:
            source.stop()
        self.worker.stop()
        self.pool.stop()
        self.worker_thread.join(timeout=30)
        self.dispatcher.stop()
        self.dispatch_thread.join(timeout=30)
        self.dispatcher.close()
        self.engine.dispose()
        log.info("mailingest stopped")
