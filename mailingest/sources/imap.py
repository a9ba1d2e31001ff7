"""The IMAP source: one thread per (account, folder) turning new mail into ledger entries, and
acting on each message at the server only once its results are committed.

* **Nothing fetched twice.** The last UID taken is read back from the ledger (the highest UID
  recorded for this ``<account>/<folder>`` and UIDVALIDITY), so a restart resumes where it
  stopped. When UIDVALIDITY changes, old UIDs mean nothing: the folder is listed again from the
  start and the ledger's content hash recognises mail it already has — such messages are
  recorded as ``duplicate`` and not processed again.
* **Nothing marked early.** Bodies are fetched with ``BODY.PEEK[]``. A message is marked seen,
  flagged, moved or deleted only when the ledger says its results are committed (``processed``,
  or ``duplicate`` of a processed message); ``failed`` gets the ``on_failure`` action instead.
  Those actions are not remembered anywhere but the mailbox itself: at every (re)connect the
  folder is searched for messages the action has not been applied to yet (still there, still
  unseen, keyword missing) and the ledger tells which of them are finished — so a crash between
  commit and move only delays the move to the next start.
* **Filters** (``[sources.imap.filters]``, ``filters.py``) decide on ENVELOPE and BODYSTRUCTURE
  before any body is fetched; every decision is logged with its reason. Skipped mail never
  enters the ledger and gets ``skipped_action``; mail over ``max_message_bytes`` gets
  ``on_failure``.
* **Waiting.** IDLE when the server offers it (re-issued every ``min(idle_timeout,
  poll_interval)``, so ``poll_interval`` is also a safety-net rescan), else a poll every
  ``poll_interval`` ±10 %. While waiting, messages in flight are checked in the ledger twice a
  second, so post-processing follows processing closely and ``stop()`` is honoured quickly.
* **Failures** (network, TLS, login, protocol, storage) end the connection, are logged with
  their reason and retried after 1 s, 2 s, 4 s … up to ``reconnect_max``; the daemon stays up.
"""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import col, func, select

from mailingest.config import ImapAfterProcessing, ImapOnFailure, ImapSourceConfig
from mailingest.errors import ConfigError, MailingestError
from mailingest.ledger import Ledger
from mailingest.oauth import TokenProvider, TokenState
from mailingest.sources.base import Sink
from mailingest.sources.filters import decide, summarise
from mailingest.sources.imap_session import (
    IDLE_SLICE,
    SEEN,
    ImapSession,
    chunked,
    connect,
    new_mail_criteria,
    not_done_criteria,
)
from mailingest.storage.db import session_scope
from mailingest.storage.tables import Message
from mailingest.token_store import TokenStore

log = structlog.get_logger("mailingest.sources.imap")

SOURCE = "imap"
DONE, FAILED, WAITING, SKIPPED = "done", "failed", "waiting", "skipped"
_OUTCOMES = {"processed": DONE, "failed": FAILED}
STOP_GRACE = 3.0  # seconds stop() waits for watchers before cutting their sockets
# Seconds between ledger checks for finished messages while a backlog is fetched batch by batch.
# Each check looks up every message still in flight, so checking after every batch made a
# backfill quadratic (10,000 mails with nothing finishing: 200 checks of up to 10,000 UIDs).
FINISH_EVERY = 2.0
# Seconds a folder may go without a working connection before /healthz calls it unhealthy: long
# enough that a network blip or a server restart (retried after 1 s, 2 s, 4 s …) does not flap.
FAILING_GRACE = 300.0


class ConnectionStatus:
    """Whether one mailbox connection works, written by its thread and read by /healthz and
    /metrics. Locked, because the scrape runs on another thread; every call is a few assignments.

    ``failing_since`` starts at construction (never connected yet counts as failing) and is
    cleared by ``ok()``, i.e. by a successful SELECT, not by a bare login: a folder that logs in
    but cannot be selected is still failing. ``healthy`` forgives failures younger than ``grace``."""

    def __init__(self, grace: float = FAILING_GRACE) -> None:
        self.grace = grace
        self._lock = threading.Lock()
        self._connected = False
        self._last_error: str | None = None
        self._last_ok_at: float | None = None
        self._failing_since: float | None = time.time()

    def connected(self) -> None:
        with self._lock:
            self._connected = True

    def ok(self) -> None:
        with self._lock:
            self._connected = True
            self._last_error = None
            self._last_ok_at = time.time()
            self._failing_since = None

    def failed(self, error: str) -> None:
        with self._lock:
            self._connected = False
            self._last_error = error
            if self._failing_since is None:
                self._failing_since = time.time()

    def snapshot(self) -> dict[str, Any]:
        """``connected``, ``healthy``, ``last_error``, ``last_ok_at`` and ``failing_since`` (Unix
        times or None), as /healthz shows them."""
        with self._lock:
            failing_since = self._failing_since
            return {
                "connected": self._connected,
                "healthy": failing_since is None or time.time() - failing_since < self.grace,
                "last_error": self._last_error,
                "last_ok_at": self._last_ok_at,
                "failing_since": failing_since,
            }


def token_status(state: TokenState) -> dict[str, Any]:
    """The OAuth2 part of a status entry: ``token_ok`` and ``refresh_token_expires_at``."""
    return {"token_ok": state.token_ok, "refresh_token_expires_at": state.refresh_token_expires_at}


# -- what the ledger knows about a folder ---------------------------------------------------------


def last_uid(engine: Engine, mailbox: str, uidvalidity: int) -> int:
    """Highest UID already in the ledger for this folder incarnation (0: none)."""
    with session_scope(engine) as session:
        found = session.exec(
            select(func.max(Message.uid)).where(
                Message.source == SOURCE, Message.mailbox == mailbox, Message.uidvalidity == uidvalidity
            )
        ).one()
    return int(found or 0)


def previous_uidvalidity(engine: Engine, mailbox: str) -> int | None:
    """The UIDVALIDITY of the folder's most recently recorded message (None: never read)."""
    with session_scope(engine) as session:
        return session.exec(
            select(Message.uidvalidity)
            .where(Message.source == SOURCE, Message.mailbox == mailbox)
            .order_by(col(Message.received_at).desc())
            .limit(1)
        ).first()


def outcomes(
    engine: Engine, mailbox: str, uidvalidity: int, uids: Sequence[int]
) -> dict[int, tuple[str, str]]:
    """UID → (message id, done | failed | waiting) for the UIDs the ledger knows.

    A duplicate takes the outcome of its original: it is finished when the original is, and a
    re-sent copy of a message that failed is treated as failed too."""
    original = aliased(Message)
    found: dict[int, tuple[str, str]] = {}
    with session_scope(engine) as session:
        for chunk in chunked(uids):
            rows = session.exec(
                select(Message.uid, Message.id, Message.status, original.status)
                .outerjoin(original, col(original.id) == col(Message.duplicate_of))
                .where(
                    Message.source == SOURCE,
                    Message.mailbox == mailbox,
                    Message.uidvalidity == uidvalidity,
                    col(Message.uid).in_(chunk),
                )
            ).all()
            for uid, msg_id, status, original_status in rows:
                if status == "duplicate":
                    status = original_status or "processed"
                if uid is not None:  # always set for imap rows; the column is nullable for other sources
                    found[uid] = (msg_id, _OUTCOMES.get(status, WAITING))
    return found


# -- one folder -----------------------------------------------------------------------------------


class FolderWatcher:
    """Owns one connection to one folder of one account, in its own thread."""

    def __init__(
        self,
        config: ImapSourceConfig,
        folder: str,
        sink: Sink,
        engine: Engine,
        tokens: TokenProvider | None = None,
        grace: float = FAILING_GRACE,
    ) -> None:
        self.config = config
        self.tokens = tokens  # the account's, shared by its folders; None: password login
        self.folder = folder
        self.mailbox = f"{config.name}/{folder}"
        self.sink = sink
        self.engine = engine
        self.stopping = threading.Event()
        self.log = log.bind(account=config.name, folder=folder)
        self.thread = threading.Thread(target=self._run, name=f"imap:{self.mailbox}", daemon=True)
        self._session: ImapSession | None = None
        self._uidvalidity: int | None = None
        self._last_uid = 0
        self._pending: dict[int, str] = {}  # UID → message id, fetched and not yet post-processed
        self._checked_at = 0.0
        self._cycle_ok = False
        self.status = ConnectionStatus(grace)

    def interrupt(self) -> None:
        session = self._session
        if session is not None:
            session.interrupt()

    def _run(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            self._cycle_ok = False
            try:
                session = connect(self.config, self._credential())
            except MailingestError as exc:
                self.status.failed(exc.detail)
                self.log.error("imap connection failed; will retry", error=exc.detail, retry_in=delay)
            else:
                self._session = session
                self.status.connected()
                try:
                    self._serve(session)
                except MailingestError as exc:
                    self.status.failed(exc.detail)
                    self.log.error("imap connection lost; will reconnect", error=exc.detail, retry_in=delay)
                except Exception as exc:
                    # A bug here must not silently end mail intake for this folder (the daemon
                    # has no other way to notice): log it with its traceback, reconnect later.
                    self.status.failed(f"{type(exc).__name__}: {exc}")
                    self.log.exception("imap watcher crashed; will reconnect", retry_in=delay)
                finally:
                    session.close()  # stop() may still interrupt() a LOGOUT the server never answers
                    self._session = None
            if self._cycle_ok:
                delay = 1.0  # the connection worked for a while: the next failure starts over
            if self.stopping.wait(delay):
                break
            delay = min(delay * 2, self.config.reconnect_max)

    def _credential(self) -> str | TokenProvider:
        if self.tokens is not None:
            return self.tokens
        assert self.config.password is not None  # the config requires it for password auth
        return self.config.password.get()

    def _serve(self, session: ImapSession) -> None:
        """Loop until stopped: (re)select, take new mail, post-process, wait.

        The folder is selected again every cycle: it is cheap, and the only reliable way to learn
        that UIDVALIDITY changed (servers announce it inconsistently, Dovecot as an untagged NO).
        """
        fresh = True  # a new connection: owed actions are looked for once
        idle = self.config.idle and session.can_idle
        while not self.stopping.is_set():
            uidvalidity = session.select(self.folder)
            self.status.ok()  # here, not after the fetch: a long backlog must not look like an outage
            if uidvalidity != self._uidvalidity:
                known = self._uidvalidity or previous_uidvalidity(self.engine, self.mailbox)
                if known is not None and known != uidvalidity:
                    self.log.warning(
                        "UIDVALIDITY changed; listing the folder again (mail already seen is recognised)",
                        old=known,
                        new=uidvalidity,
                    )
                self._uidvalidity = uidvalidity
                self._last_uid = last_uid(self.engine, self.mailbox, uidvalidity)
                fresh = True
            if fresh:
                self._pending.clear()  # UIDs of another UIDVALIDITY mean nothing any more
                self._catch_up(session)
                self.log.info(
                    "watching imap folder", uidvalidity=uidvalidity, last_uid=self._last_uid, idle=idle
                )
                fresh = False
            self._take_new(session)
            self._cycle_ok = True
            if idle:
                session.idle(min(self.config.idle_timeout, self.config.poll_interval), self._should_wake)
            else:
                self._poll_wait(session)

    def _catch_up(self, session: ImapSession) -> None:
        """Apply actions owed from before this connection (a crash, a stop, a lost connection)."""
        if not self._last_uid:
            return
        rules: list[tuple[str, ImapAfterProcessing | ImapOnFailure]] = [
            (DONE, self.config.after_processing),
            (FAILED, self.config.on_failure),
        ]
        for outcome, rule in rules:
            criteria = not_done_criteria(rule.action, rule.flag)
            if criteria is None:
                continue
            uids = session.search(["UID", f"1:{self._last_uid}", *criteria])
            known = outcomes(self.engine, self.mailbox, self._uidvalidity or 0, uids)
            ready = {uid: msg_id for uid, (msg_id, got) in known.items() if got == outcome}
            self._pending.update({uid: msg_id for uid, (msg_id, got) in known.items() if got == WAITING})
            if ready:
                self._act(session, outcome, ready)

    def _take_new(self, session: ImapSession) -> None:
        """Post-process what finished, decide on and fetch what is new, until a SEARCH finds
        nothing new.

        That empty SEARCH is deliberately the last command before IDLE: some servers (Dovecot)
        report in IDLE only mail that arrives after IDLE began, so any command in between would
        widen the window in which a new mail waits for the next cycle instead of being pushed.

        A message the filters skip is not put in the ledger; ``_last_uid`` moving past it is all
        that remembers it, so it is decided on once per run and its ``skipped_action`` applied
        once. After a restart ``_last_uid`` comes from the ledger, so skipped mail above the last
        taken UID is decided on again — cheap (headers only), and applying the action again is
        harmless (a flag set twice; a moved message is no longer there to find).

        During a long backlog finished messages are looked for every ``FINISH_EVERY`` seconds,
        not after every batch; once the backlog is fetched, IDLE's wake check takes over."""
        assert self._uidvalidity is not None
        finished_at = -FINISH_EVERY  # the first round always checks
        while not self.stopping.is_set():
            if time.monotonic() - finished_at >= FINISH_EVERY:
                self._finish(session)
                finished_at = time.monotonic()
            found = session.search(new_mail_criteria(self.config, self._last_uid))
            uids = [uid for uid in found if uid > self._last_uid]  # "n:*" always matches the last UID
            if not uids:
                return
            batch = uids[: self.config.batch_size]
            wanted: dict[int, int] = {}  # UID → size, for the body fetch
            refused: dict[str, list[int]] = {FAILED: [], SKIPPED: []}
            for uid, data in session.headers(batch).items():
                summary = summarise(data)
                decision = decide(
                    summary.sender,
                    summary.subject,
                    summary.attachments,
                    summary.size,
                    summary.flags,
                    self.config,
                )
                emit = self.log.warning if decision.failed else self.log.info
                emit("imap filter decision", uid=uid, decision=decision.verdict, reason=decision.reason)
                if decision.take:
                    wanted[uid] = summary.size
                else:
                    refused[FAILED if decision.failed else SKIPPED].append(uid)
            if refused[FAILED]:
                self._act(session, FAILED, dict.fromkeys(refused[FAILED]), reason="too large")
            if refused[SKIPPED]:
                self._act(session, SKIPPED, dict.fromkeys(refused[SKIPPED]), reason="filtered out")
            for uid, raw in session.bodies(wanted):
                msg_id = self.sink(
                    raw, source=SOURCE, mailbox=self.mailbox, uidvalidity=self._uidvalidity, uid=uid
                )
                self._last_uid = uid
                self._pending[uid] = msg_id
                self.log.info("imap message fetched", uid=uid, size=len(raw), message=msg_id)
            self._last_uid = max(self._last_uid, *batch)  # also past the refused and vanished ones

    def _finish(self, session: ImapSession) -> None:
        """Act on fetched messages whose results the ledger now holds."""
        if not self._pending or self._uidvalidity is None:
            return
        known = outcomes(self.engine, self.mailbox, self._uidvalidity, list(self._pending))
        for uid in [uid for uid in self._pending if uid not in known]:
            self.log.warning("imap message no longer in the ledger; leaving it alone", uid=uid)
            del self._pending[uid]
        for outcome in (DONE, FAILED):
            ready = {uid: msg_id for uid, (msg_id, got) in known.items() if got == outcome}
            if ready:
                self._act(session, outcome, ready)
                for uid in ready:
                    del self._pending[uid]

    def _act(
        self,
        session: ImapSession,
        outcome: str,
        messages: Mapping[int, str | None],
        reason: str | None = None,
    ) -> None:
        """Carry out the outcome's action (after_processing, on_failure or skipped_action)."""
        action, folder, flag = self._rule(outcome)
        uids = sorted(messages)
        if action == "seen":
            session.add_flags(uids, [SEEN])
        elif action == "flag":
            session.add_flags(uids, [flag.encode()])
        elif action == "move":
            session.move(uids, folder)
        elif action == "delete":
            session.delete(uids)
        target = folder if action == "move" else flag if action == "flag" else None
        for uid in uids:
            self.log.info(
                "imap message post-processed",
                uid=uid,
                message=messages[uid],
                outcome=outcome,
                action=action,
                target=target,
                reason=reason,
            )

    def _rule(self, outcome: str) -> tuple[str, str, str]:
        """(action, folder, flag) configured for an outcome."""
        if outcome == SKIPPED:
            rules = self.config.filters
            return rules.skipped_action, rules.skipped_folder, rules.skipped_flag
        rule = self.config.after_processing if outcome == DONE else self.config.on_failure
        return rule.action, rule.folder, rule.flag

    def _should_wake(self) -> bool:
        """Stop requested, or (checked at most every IDLE_SLICE) an in-flight message finished."""
        if self.stopping.is_set():
            return True
        now = time.monotonic()
        if not self._pending or self._uidvalidity is None or now - self._checked_at < IDLE_SLICE:
            return False
        self._checked_at = now
        known = outcomes(self.engine, self.mailbox, self._uidvalidity, list(self._pending))
        return len(known) < len(self._pending) or any(got != WAITING for _, got in known.values())

    def _poll_wait(self, session: ImapSession) -> None:
        """Sleep ``poll_interval`` ±10 % (jitter spreads many folders' polls apart); a NOOP every
        ``idle_timeout`` keeps long intervals from running into the server's inactivity logout."""
        deadline = time.monotonic() + self.config.poll_interval * random.uniform(0.9, 1.1)
        keepalive = time.monotonic() + self.config.idle_timeout
        while not self._should_wake():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.stopping.wait(min(IDLE_SLICE, remaining))
            if time.monotonic() >= keepalive:
                session.noop()
                keepalive = time.monotonic() + self.config.idle_timeout


# -- the account, as the daemon sees it -----------------------------------------------------------


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class ImapSource:
    """One ``[[sources.imap]]`` account: a FolderWatcher per configured folder."""

    def __init__(
        self,
        config: ImapSourceConfig,
        ledger: Ledger,
        data_dir: Path | None = None,
        *,
        grace: float = FAILING_GRACE,
    ) -> None:
        self.config = config
        self.grace = grace  # see ConnectionStatus
        self.data_dir = data_dir  # where the encrypted OAuth2 token store lives (token_key)
        self.name = f"imap:{config.name}"
        self.ledger = ledger
        self.watchers: list[FolderWatcher] = []
        self.tokens: TokenProvider | None = None

    def start(self, sink: Sink) -> None:
        """Start watching; a secret that cannot be read stops the daemon's start (ConfigError).

        OAuth2 token trouble does not: the token endpoint may be down or the refresh token
        revoked, and the watchers retry (and log why) until it works again."""
        cfg = self.config
        if cfg.oauth2 is not None and cfg.auth == "oauth2":
            for secret in (cfg.oauth2.client_secret, cfg.oauth2.refresh_token, cfg.oauth2.token_key):
                if secret is not None:
                    secret.get()
            store = None
            if cfg.oauth2.token_key is not None:
                if self.data_dir is None:
                    raise ConfigError(f"imap account {cfg.name}: token_key is set but no data_dir was given")
                store = TokenStore.for_account(self.data_dir, cfg.name, cfg.oauth2.token_key)
            self.tokens = TokenProvider(cfg.name, cfg.oauth2, timeout=cfg.connect_timeout, store=store)
        elif cfg.password is not None:
            cfg.password.get()
        if not cfg.verify_certificate and cfg.security != "none":
            log.warning(
                "IMAP CERTIFICATE VERIFICATION IS OFF: anyone on the network path can read this "
                "account's password and mail",
                account=cfg.name,
                host=cfg.host,
            )
        if cfg.security == "none" and not _is_loopback(cfg.host):
            log.warning("IMAP without TLS: the password crosses the network in clear", account=cfg.name)
        for folder in cfg.folders:
            watcher = FolderWatcher(cfg, folder, sink, self.ledger.engine, self.tokens, self.grace)
            self.watchers.append(watcher)
            watcher.thread.start()
        log.info(
            "imap account started",
            account=cfg.name,
            host=cfg.host,
            port=cfg.effective_port,
            security=cfg.security,
            folders=cfg.folders,
        )

    def status(self) -> dict[str, dict[str, Any]]:
        """Per ``<account>/<folder>``: the connection's ``ConnectionStatus.snapshot()`` with
        ``source``, ``account`` and ``folder``, plus ``token_status()`` for OAuth2 accounts."""
        tokens = self.tokens
        entries: dict[str, dict[str, Any]] = {}
        for watcher in list(self.watchers):
            entry = {"source": SOURCE, "account": self.config.name, "folder": watcher.folder}
            entry |= watcher.status.snapshot()
            if tokens is not None:
                entry |= token_status(tokens.state)
            entries[watcher.mailbox] = entry
        return entries

    def stop(self) -> None:
        """Returns within about STOP_GRACE + 1 s: watchers notice the stop within IDLE_SLICE,
        one stuck in a slow read has its socket cut."""
        for watcher in self.watchers:
            watcher.stopping.set()
        deadline = time.monotonic() + STOP_GRACE
        for watcher in self.watchers:
            watcher.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for watcher in self.watchers:
            if watcher.thread.is_alive():
                watcher.interrupt()
                watcher.thread.join(timeout=1.0)
        finished = not any(watcher.thread.is_alive() for watcher in self.watchers)
        self.watchers.clear()
        if self.tokens is not None and finished:  # one stuck in a token request may still use it
            self.tokens.close()
        self.tokens = None
