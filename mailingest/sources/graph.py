"""The Microsoft Graph source: one thread per ``[[sources.graph]]`` mailbox folder, for tenants
that have turned IMAP off.

* **Listing: delta queries.** The first round lists the folder with
  ``/users/{user}/mailFolders/{folder}/messages/delta``, following ``@odata.nextLink`` pages;
  the final page's ``@odata.deltaLink`` asks "what changed since" in the next round. Entries
  marked ``@removed`` (the message left the folder) are never fetched.
* **Fetching: the whole MIME.** ``/messages/{id}/$value`` returns the message as RFC 822 with
  every attachment in it — file attachments and item attachments (an attached mail or meeting)
  alike — so the ordinary MIME unpacking handles them; no separate attachment calls.
* **Idempotency without UIDs.** The ledger's source key wants integer UIDs; Graph ids are long
  strings. The source therefore remembers, next to the deltaLink, which Graph id became which
  ledger message, so a message the delta query lists again (our own ``isRead`` PATCH changes it,
  and changed messages are re-listed) is not downloaded again. Should that map be lost (a crash
  between ``accept`` and the state write, a deleted state file), the ledger's sha256 duplicate
  detection still keeps the message from being processed twice.
* **State file, not a table.** The deltaLink and that map live in
  ``<data_dir>/state/graph-<name>.json``, replaced atomically (temp file, fsync, rename), so a
  restart resumes where it stopped. It is only this source's bookkeeping, read by nothing else,
  which is why it does not need a schema migration. A deltaLink belongs to one user and folder:
  when the configuration names another, the folder is listed again from the start.
* **Acting only after commit.** A fetched message is marked read, moved or given a category only
  when the ledger says its results are committed (``processed``, or ``duplicate`` of a processed
  message); ``failed`` gets ``on_failure``. Pending messages are checked twice a second while
  the source waits for the next poll, and survive restarts in the state file.
* **Failures.** 401 refreshes the token once and retries; 429/503 wait ``Retry-After``; network
  and other HTTP errors become ``SourceError``, are logged and retried after 1 s, 2 s, 4 s … up
  to five minutes. The daemon stays up; ``stop()`` returns within a few seconds.
"""

from __future__ import annotations

import email.utils
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from sqlalchemy.engine import Engine

from mailingest.config import GraphAction, GraphSourceConfig, Secret
from mailingest.errors import MailingestError, SourceError
from mailingest.ledger import Ledger
from mailingest.oauth import TokenState
from mailingest.sources.base import Sink
from mailingest.sources.imap import FAILING_GRACE, ConnectionStatus, token_status
from mailingest.storage import tables
from mailingest.storage.db import session_scope

log = structlog.get_logger("mailingest.sources.graph")

SOURCE = "graph"
SCOPE = "https://graph.microsoft.com/.default"
SELECT = "id,subject,from,receivedDateTime,hasAttachments"
DONE, FAILED, WAITING = "done", "failed", "waiting"
CHECK_SLICE = 0.5  # seconds between ledger checks for pending messages while waiting
STOP_GRACE = 4.0  # seconds stop() waits for the thread
BACKOFF_MAX = 300.0
THROTTLE_RETRIES = 5  # 429/503 answers in a row before a request counts as failed
RETRY_AFTER_MAX = 300.0
# Graph's well-known folder names, usable wherever a folder id is (lower-case, as documented).
WELL_KNOWN_FOLDERS = {
    "archive",
    "clutter",
    "conflicts",
    "conversationhistory",
    "deleteditems",
    "drafts",
    "inbox",
    "junkemail",
    "localfailures",
    "msgfolderroot",
    "outbox",
    "recoverableitemsdeletions",
    "scheduled",
    "searchfolders",
    "sentitems",
    "serverfailures",
    "syncissues",
}


class _Stopped(Exception):
    """Raised inside the fetch loop when stop() was called during a wait; ends the round."""


# -- persistent state -----------------------------------------------------------------------------


@dataclass
class GraphState:
    """What the source must remember across restarts (see the module docstring)."""

    path: Path
    user: str
    folder: str
    delta_link: str | None = None
    messages: dict[str, str] = field(default_factory=dict)  # Graph id → ledger message id
    pending: set[str] = field(default_factory=set)  # Graph ids still owed their action

    @classmethod
    def load(cls, path: Path, user: str, folder: str) -> GraphState:
        """Read the state; missing, unreadable or for another user/folder → start afresh (the
        ledger's duplicate detection covers anything listed again)."""
        state = cls(path, user, folder)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return state
        except (OSError, ValueError) as exc:
            log.warning("graph state unreadable; listing the folder again", path=str(path), error=str(exc))
            return state
        if data.get("user") != user or data.get("folder") != folder:
            log.warning("graph source now reads another mailbox or folder; listing it from the start")
            return state
        state.delta_link = data.get("delta_link")
        state.messages = dict(data.get("messages", {}))
        state.pending = set(data.get("pending", [])) & set(state.messages)
        return state

    def save(self) -> None:
        """Write atomically: a crash leaves either the old or the new file, never half of one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "user": self.user,
            "folder": self.folder,
            "delta_link": self.delta_link,
            "messages": self.messages,
            "pending": sorted(self.pending),
        }
        fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise SourceError(f"cannot write graph state {self.path}: {exc.strerror}") from exc


def outcome(engine: Engine, msg_id: str) -> str | None:
    """done | failed | waiting for a ledger message (None: not in the ledger). A duplicate takes
    the outcome of its original, as for IMAP."""
    with session_scope(engine) as session:
        msg = session.get(tables.Message, msg_id)
        if msg is None:
            return None
        status = msg.status
        if status == "duplicate":
            original = session.get(tables.Message, msg.duplicate_of) if msg.duplicate_of else None
            status = original.status if original is not None else "processed"
    return {"processed": DONE, "failed": FAILED}.get(status, WAITING)


# -- HTTP -----------------------------------------------------------------------------------------


def _retry_after(response: httpx.Response, fallback: float) -> float:
    """Seconds from ``Retry-After`` (delta-seconds or an HTTP date), capped; else the fallback."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_MAX)
    if value:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return fallback
        return min(max(0.0, when.timestamp() - time.time()), RETRY_AFTER_MAX)
    return fallback


def _graph_error(response: httpx.Response) -> str:
    """``HTTP 403 ErrorAccessDenied: Access is denied.`` from Graph's (or the token endpoint's)
    error body, falling back to the status line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return f"HTTP {response.status_code} {err.get('code')}: {err.get('message')}"
        if isinstance(err, str):  # the token endpoint: {"error": "invalid_client", ...}
            return f"HTTP {response.status_code} {err}: {body.get('error_description', '')}".strip()
    return f"HTTP {response.status_code} {response.reason_phrase}"


class GraphHTTPError(SourceError):
    """Graph answered with an error status (kept apart so 404 and 410 can be told apart)."""

    def __init__(self, detail: str, response: httpx.Response) -> None:
        super().__init__(detail)
        self.status = response.status_code


class GraphClient:
    """Graph over httpx with an app-only token: cached, refreshed a minute (or half its lifetime)
    before it runs out, refreshed once more on a 401; throttling answers are waited out."""

    def __init__(self, config: GraphSourceConfig, secret: Secret, stopping: threading.Event) -> None:
        self.config = config
        self.secret = secret  # read at every token request, so a rotated secret is picked up
        self.stopping = stopping
        self.http = httpx.Client(timeout=config.timeout)
        self.base = config.graph_url.rstrip("/")
        self.user_path = f"{self.base}/users/{quote(config.user, safe='@')}"
        self._token: str | None = None
        self._refresh_at = 0.0
        self.token_state = TokenState()  # replaced whole, read by status() from another thread

    def close(self) -> None:
        self.http.close()

    def token(self) -> str:
        if self._token is None or time.monotonic() >= self._refresh_at:
            self._token = None
            url = f"{self.config.authority.rstrip('/')}/{self.config.tenant_id}/oauth2/v2.0/token"
            form = {
                "grant_type": "client_credentials",
                "client_id": self.config.client_id,
                "client_secret": self.secret.get(),
                "scope": SCOPE,
            }
            try:
                response = self.http.post(url, data=form)
            except httpx.HTTPError as exc:
                raise SourceError(f"graph token request failed: {exc}") from exc
            if response.status_code != 200:
                self.token_state = TokenState(token_ok=False)  # a wrong or expired client secret
                raise SourceError(f"graph token request refused: {_graph_error(response)}")
            try:
                body = response.json()
                token, lifetime = str(body["access_token"]), float(body.get("expires_in", 3599))
            except (ValueError, KeyError, TypeError) as exc:
                raise SourceError("graph token endpoint answered without an access token") from exc
            self._token = token
            self._refresh_at = time.monotonic() + lifetime - min(60.0, lifetime / 2)
            self.token_state = TokenState(token_ok=True)
            log.info("graph token obtained", source=self.config.name, expires_in=lifetime)
        return self._token

    def request(self, method: str, url: str, *, json_body: Any = None) -> httpx.Response:
        """One Graph call; returns a 2xx response or raises SourceError (``_Stopped`` when
        stop() interrupts a throttling wait)."""
        refreshed = False
        throttled = 0
        while True:
            headers = {"Authorization": f"Bearer {self.token()}"}
            try:
                response = self.http.request(method, url, headers=headers, json=json_body)
            except httpx.HTTPError as exc:
                raise SourceError(f"graph {method} failed: {type(exc).__name__}: {exc}") from exc
            if response.status_code == 401 and not refreshed:
                self._token = None  # revoked or expired early: one fresh token, one more try
                refreshed = True
                continue
            if response.status_code in (429, 503) and throttled < THROTTLE_RETRIES:
                throttled += 1
                wait = _retry_after(response, fallback=2.0**throttled)
                log.warning(
                    "graph throttled; waiting",
                    source=self.config.name,
                    status=response.status_code,
                    wait=wait,
                )
                if self.stopping.wait(wait):
                    raise _Stopped
                continue
            if response.is_success:
                return response
            raise GraphHTTPError(f"graph {method} {response.url.path}: {_graph_error(response)}", response)


# -- the source -----------------------------------------------------------------------------------


class GraphSource:
    """One ``[[sources.graph]]`` entry: a thread polling one folder of one mailbox."""

    def __init__(
        self, config: GraphSourceConfig, ledger: Ledger, data_dir: Path, *, grace: float = FAILING_GRACE
    ) -> None:
        self.config = config
        self.name = f"graph:{config.name}"
        self.connection = ConnectionStatus(grace)
        self.ledger = ledger
        self.mailbox = f"{config.name}/{config.folder}"
        self.state_path = data_dir / "state" / f"graph-{config.name}.json"
        self.stopping = threading.Event()
        self.log = log.bind(source=config.name, folder=config.folder)
        self.thread = threading.Thread(target=self._run, name=f"graph:{config.name}", daemon=True)
        self._folders: dict[str, str] = {}  # configured folder → id or well-known name for Graph
        self.client = GraphClient(config, config.client_secret, self.stopping)
        self.state = GraphState(self.state_path, config.user, config.folder)
        self.sink: Sink = ledger.accept

    def start(self, sink: Sink) -> None:
        """Start polling; a client secret that cannot be read stops the daemon's start."""
        self.config.client_secret.get()
        self.sink = sink
        self.state = GraphState.load(self.state_path, self.config.user, self.config.folder)
        self.thread.start()
        self.log.info(
            "graph source started",
            user=self.config.user,
            resumed=self.state.delta_link is not None,
            pending=len(self.state.pending),
        )

    def status(self) -> dict[str, dict[str, Any]]:
        """The one folder's entry, shaped as ``ImapSource.status()``; the app-only token's
        ``token_ok`` (a refused client secret) is reported like an OAuth2 account's."""
        entry = {"source": SOURCE, "account": self.config.name, "folder": self.config.folder}
        entry |= self.connection.snapshot() | token_status(self.client.token_state)
        return {self.mailbox: entry}

    def stop(self) -> None:
        """Returns within about STOP_GRACE: waits end at once; a request in flight is abandoned
        to its timeout (the thread is a daemon thread, and nothing it owes is lost: pending
        actions and the deltaLink are in the state file)."""
        self.stopping.set()
        self.thread.join(timeout=STOP_GRACE)
        if self.thread.is_alive():
            self.log.warning("graph source still busy in a request at stop; leaving it")
        else:
            self.client.close()

    # -- the loop ---------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                self._sync()
                self.connection.ok()
                delay = 1.0
                self._wait(self.config.poll_interval)
                continue
            except _Stopped:
                break
            except MailingestError as exc:
                self.connection.failed(exc.detail)
                self.log.error("graph round failed; will retry", error=exc.detail, retry_in=delay)
            except Exception as exc:
                # A bug here must not silently end mail intake for this mailbox (the daemon has
                # no other way to notice): log it with its traceback, retry later.
                self.connection.failed(f"{type(exc).__name__}: {exc}")
                self.log.exception("graph source crashed; will retry", retry_in=delay)
            if self.stopping.wait(delay):  # no ledger checks here: they may be what failed
                break
            delay = min(delay * 2, BACKOFF_MAX)

    def _wait(self, seconds: float) -> None:
        """Sleep, acting on pending messages as soon as the ledger has their results."""
        deadline = time.monotonic() + seconds
        while True:
            self._finish()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.stopping.wait(min(CHECK_SLICE, remaining)):
                raise _Stopped

    def _sync(self) -> None:
        """One delta round: every page up to the next deltaLink."""
        self._finish()
        url = self.state.delta_link
        if url is None:
            folder = quote(self._folder_ref(self.config.folder), safe="")
            url = f"{self.client.user_path}/mailFolders/{folder}/messages/delta?$select={SELECT}"
        while url is not None:
            if self.stopping.is_set():
                raise _Stopped
            try:
                page = self.client.request("GET", url).json()
            except GraphHTTPError as exc:
                if exc.status != 410 or self.state.delta_link is None:
                    raise
                # syncStateNotFound: the deltaLink expired. List again; known ids are skipped.
                self.log.warning("graph delta link expired; listing the folder again", error=exc.detail)
                self.state.delta_link = None
                self.state.save()
                self._sync()
                return
            except ValueError as exc:
                raise SourceError("graph delta page is not JSON") from exc
            for item in page.get("value", []):
                self._take(item)
            url = page.get("@odata.nextLink")
            if url is None:
                self.state.delta_link = page.get("@odata.deltaLink")
                self.state.save()

    def _take(self, item: dict[str, Any]) -> None:
        graph_id = str(item.get("id", ""))
        if not graph_id:
            return
        if "@removed" in item:
            msg_id = self.state.messages.pop(graph_id, None)
            if msg_id is not None:
                owed = graph_id in self.state.pending
                self.state.pending.discard(graph_id)
                self.state.save()
                self.log.info("graph message left the folder", graph_id=graph_id, message=msg_id, owed=owed)
            return
        if graph_id in self.state.messages:
            return  # changed (by our own action, or the user), not new
        response = self.client.request(
            "GET", f"{self.client.user_path}/messages/{quote(graph_id, safe='')}/$value"
        )
        raw = response.content
        msg_id = self.sink(raw, source=SOURCE, mailbox=self.mailbox)
        self.state.messages[graph_id] = msg_id
        self.state.pending.add(graph_id)
        self.state.save()
        sender = ((item.get("from") or {}).get("emailAddress") or {}).get("address")
        self.log.info(
            "graph message fetched",
            graph_id=graph_id,
            received=item.get("receivedDateTime"),
            sender=sender,
            attachments=item.get("hasAttachments"),
            size=len(raw),
            message=msg_id,
        )

    # -- after commit -----------------------------------------------------------------------------

    def _finish(self) -> None:
        """Act on fetched messages whose results the ledger now holds."""
        for graph_id in sorted(self.state.pending):
            msg_id = self.state.messages[graph_id]
            got = outcome(self.ledger.engine, msg_id)
            if got == WAITING:
                continue
            if got is None:
                self.log.warning("graph message no longer in the ledger; leaving it alone", graph_id=graph_id)
            else:
                rule = self.config.after_processing if got == DONE else self.config.on_failure
                self._act(graph_id, msg_id, got, rule)
            self.state.pending.discard(graph_id)
            self.state.save()

    def _act(self, graph_id: str, msg_id: str, got: str, rule: GraphAction) -> None:
        url = f"{self.client.user_path}/messages/{quote(graph_id, safe='')}"
        target: str | None = None
        try:
            if rule.action == "read":
                self.client.request("PATCH", url, json_body={"isRead": True})
            elif rule.action == "flag":
                target = rule.category
                current = self.client.request("GET", f"{url}?$select=categories").json()
                categories = list(current.get("categories") or [])
                if target not in categories:  # PATCH replaces the list: keep the user's categories
                    self.client.request("PATCH", url, json_body={"categories": [*categories, target]})
            elif rule.action == "move":
                target = rule.folder
                destination = self._folder_ref(rule.folder)
                self.client.request("POST", f"{url}/move", json_body={"destinationId": destination})
        except GraphHTTPError as exc:
            if exc.status != 404:
                raise
            self.log.warning("graph message gone before its action; leaving it", graph_id=graph_id)
            return
        self.log.info(
            "graph message post-processed",
            graph_id=graph_id,
            message=msg_id,
            outcome=got,
            action=rule.action,
            target=target,
        )

    def _folder_ref(self, folder: str) -> str:
        """What Graph accepts for a folder: well-known names and ids as they are; anything else is
        looked up once as the display name of a top-level folder (falling back to an id)."""
        if folder.lower() in WELL_KNOWN_FOLDERS:
            return folder.lower()
        if folder not in self._folders:
            name = folder.replace("'", "''")  # OData string literal
            response = self.client.request(
                "GET",
                f"{self.client.user_path}/mailFolders?$filter="
                + quote(f"displayName eq '{name}'", safe="")
                + "&$select=id",
            )
            found = response.json().get("value") or []
            self._folders[folder] = str(found[0]["id"]) if found else folder
        return self._folders[folder]
