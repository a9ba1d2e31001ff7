"""Pipeline workers: the loop that drains the ledger, in the daemon's process and, with
``[pipeline] workers = N``, in N - 1 extra processes that use the other CPU cores.

Extra workers are plain processes (``spawn``) that share nothing but the database: each claims
messages with a conditional UPDATE and a claim token (``storage.repo.claim_next_message``), so
a message is stored by exactly one of them. They poll the ledger every quarter second when
idle, and the dispatcher polls the outbox. No cross-process locks or events on purpose:
``multiprocessing.Event.set`` waits for every sleeper to wake, so one worker killed mid-wait
(OOM killer, kill -9) would hang whoever rings it — the SMTP receiver included.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.context import SpawnProcess
from typing import Any

import httpx
import structlog

from mailingest.config import Config
from mailingest.config_sources import ocr_languages_for, pdf_passwords_for
from mailingest.connectors.registry import subscriptions
from mailingest.errors import MailingestError
from mailingest.models import Invoice
from mailingest.pipeline import extractors, schematron
from mailingest.pipeline.runner import Router, Runtime, process_next
from mailingest.routing.hooks import HookResults, enforce_blockers, run_hooks
from mailingest.routing.live import LiveRules
from mailingest.routing.lookups import AnswerCache, LookupResults, enforce_review, run_lookups
from mailingest.routing.rules import apply
from mailingest.storage import db
from mailingest.storage.blobs import BlobStore

log = structlog.get_logger("mailingest.workers")
SPAWN = multiprocessing.get_context("spawn")
EXTRA_WORKER_POLL = 0.25  # seconds; how long new mail may wait for an idle extra worker


def build_router(config: Config, *, watch: bool = True) -> Router:
    """The routing step: validation hooks, then enrichment lookups (``enrichment.<name>``),
    then the rules (hot-reloaded; see routing.live).

    A broken rule file stops the start with a clear error; later, a broken edit keeps the last
    good rules. The returned ``route(invoice, context, facts=None)`` never performs I/O when
    no hooks or lookups are configured.
    """
    live = LiveRules(config.rules.path, interval=config.rules.reload)
    if watch:
        live.start()
    first = config.rules.match == "first"
    hooks = [h for h in config.rules.hooks if h.enabled]
    lookups = [lk for lk in config.rules.lookups if lk.enabled]
    client = httpx.Client(follow_redirects=False) if hooks or lookups else None
    cache = AnswerCache()
    log.info(
        "routing rules loaded",
        path=str(config.rules.path),
        rules=[r.name for r in live.rules],
        hooks=[h.name for h in hooks],
        lookups=[lk.name for lk in lookups],
    )

    def route(invoice: Invoice, context: dict[str, Any], facts: dict[str, Any] | None = None) -> Invoice:
        if client is None:
            return apply(live.rules, invoice, first_match=first, context=context, facts=facts)
        facts = dict(facts or {})
        hooked: HookResults | None = None
        if hooks:
            invoice, hooked = run_hooks(client, hooks, invoice, context)
            facts["hooks"] = hooked.facts
        looked: LookupResults | None = None
        if lookups:
            invoice, looked = run_lookups(client, cache, lookups, invoice, context)
            facts["lookups"] = looked.facts
            facts["enrichment"] = {**(facts.get("enrichment") or {}), **looked.answers}
        routed = apply(live.rules, invoice, first_match=first, context=context, facts=facts)
        if hooked is not None:
            routed = enforce_blockers(routed, hooked)
        if looked is not None:
            routed = enforce_review(routed, looked)
        return routed

    route.live = live  # type: ignore[attr-defined]  # tests and the CLI reach the rule set here
    return route


def build_runtime(config: Config, engine: Any, blobs: BlobStore, worker: str) -> Runtime:
    schematron.configure(config.validation)  # [validation]: compile the official Schematron, if on
    extractors.configure(config.extraction)  # [extraction.plugins]: only the configured plugins run
    return Runtime(
        engine=engine,
        blobs=blobs,
        connectors=subscriptions(config),
        max_document_bytes=config.pipeline.max_document_bytes,
        lease=config.pipeline.lease,
        worker=worker,
        router=build_router(config),
        ocr_languages=functools.partial(ocr_languages_for, config.sources, config.extraction),
        pdf_passwords=functools.partial(pdf_passwords_for, config.sources, config.extraction),
        templates_dir=str(config.extraction.templates_dir) if config.extraction.templates_dir else None,
        review_below_confidence=config.pipeline.review_below_confidence,
    )


class Worker:
    """Runs the pipeline until stopped; woken at once by new mail, polls as a safety net."""

    def __init__(
        self, runtime: Runtime, wake: threading.Event, on_done: threading.Event, poll_interval: float
    ) -> None:
        self.runtime = runtime
        self.wake = wake
        self.on_done = on_done
        self.poll_interval = poll_interval
        self.stopping = False
        self.heartbeat = time.monotonic()

    def run(self) -> None:
        while not self.stopping:
            self.heartbeat = time.monotonic()
            try:
                did_work = process_next(self.runtime)
            except MailingestError as exc:
                log.error("pipeline step failed; retrying later", error=exc.detail)
                did_work = False
            except Exception:
                log.exception("pipeline step crashed; retrying later")
                did_work = False
            if did_work:
                self.on_done.set()
            elif not self.stopping:
                self.wake.wait(self.poll_interval)
                self.wake.clear()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()


def _process_main(config_json: str, index: int) -> None:
    """Entry point of an extra worker process."""
    # The daemon forwards SIGHUP (reload rules) to its workers; until the rules watcher takes the
    # signal over, it must not end the process (its default action).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from mailingest import logs

    config = Config.model_validate_json(config_json)
    logs.configure(config.log.level, config.log.format)
    engine = db.make_engine(config.storage_url, echo=config.storage.echo)
    blobs = BlobStore(config.data_dir / "blobs", in_database=config.storage.documents == "database")
    idle = threading.Event()  # never rung: this process polls
    poll = min(config.pipeline.poll_interval, EXTRA_WORKER_POLL)
    worker = Worker(build_runtime(config, engine, blobs, f"worker-{index}"), idle, threading.Event(), poll)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when workers stop

    def on_term(*_: object) -> None:
        worker.stopping = True  # noticed within one poll; touching locks in a handler could deadlock

    signal.signal(signal.SIGTERM, on_term)
    log.info("worker process started", worker=index)
    worker.run()
    engine.dispose()
    log.info("worker process stopped", worker=index)


class WorkerPool:
    """The extra worker processes; stopped with SIGTERM, each finishing its message in hand."""

    def __init__(self, config: Config, count: int) -> None:
        self.processes: list[SpawnProcess] = [
            SPAWN.Process(
                target=_process_main,
                args=(config.model_dump_json(), i + 2),
                name=f"mailingest-worker-{i + 2}",
                daemon=True,
            )
            for i in range(count)
        ]

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.processes)

    def signal(self, signum: int) -> None:
        """Pass a signal on to every running worker (SIGHUP: reload the routing rules)."""
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    def stop(self, timeout: float = 30.0) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: finish the message in hand, then exit
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()  # its message's claim will expire and be redone
                process.join()
