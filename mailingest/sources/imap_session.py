"""One IMAP connection, reduced to what a folder watcher needs, with errors translated at the edge.

Whatever imapclient, imaplib, ``socket`` or ``ssl`` raise leaves this module as ``SourceError``
naming the account and the step, so the watcher in ``imap.py`` handles exactly one exception
type and logs a reason a person can act on ("login refused", "certificate not trusted", ...).
All UID lists are chunked, because servers cap the length of a command line.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientError, LoginError

from mailingest.config import ImapSourceConfig
from mailingest.errors import SourceError
from mailingest.oauth import TokenProvider

UID_CHUNK = 500  # UIDs per command: keeps command lines far below servers' limits (Dovecot: 64 KiB)
# Bytes of bodies fetched per round trip, so a batch of big mails never sits in memory at once.
FETCH_BYTES = 32 * 2**20
IDLE_SLICE = 0.5  # seconds per idle_check: how quickly stop() and finished post-processing are noticed
SEEN, DELETED = b"\\Seen", b"\\Deleted"
HEADER_ITEMS = [b"ENVELOPE", b"BODYSTRUCTURE", b"RFC822.SIZE", b"FLAGS"]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message}); fix it or set verify_certificate = false"
    if isinstance(exc, LoginError):
        return f"login refused: {_text(exc)}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _text(exc) or type(exc).__name__


def _text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else ""
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


def _words(response: tuple[Any, ...]) -> str:
    return " ".join(w.decode(errors="replace") if isinstance(w, bytes) else str(w) for w in response[1:])


def chunked(uids: Sequence[int], size: int = UID_CHUNK) -> Iterator[list[int]]:
    for start in range(0, len(uids), size):
        yield list(uids[start : start + size])


def ssl_context(config: ImapSourceConfig) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not config.verify_certificate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class ImapSession:
    """A logged-in connection to one account (``connect`` opens it)."""

    def __init__(self, client: Any, label: str) -> None:
        self._client = client
        self.label = label
        caps = set(client.capabilities())
        self.can_move = b"MOVE" in caps
        self.can_uid_expunge = b"UIDPLUS" in caps
        self.can_idle = b"IDLE" in caps
        self._folders_known: set[str] = set()

    @contextlib.contextmanager
    def _step(self, what: str) -> Iterator[None]:
        try:
            yield
        except (IMAPClientError, OSError) as exc:
            raise SourceError(f"{self.label}: {what}: {_reason(exc)}") from exc

    def select(self, folder: str) -> int:
        """Select the folder read-write; returns its UIDVALIDITY."""
        with self._step(f"cannot select folder {folder!r}"):
            info = self._client.select_folder(folder)
        return int(info[b"UIDVALIDITY"])

    def search(self, criteria: list[Any]) -> list[int]:
        with self._step("search failed"):
            return sorted(int(uid) for uid in self._client.search(criteria))

    def headers(self, uids: Sequence[int]) -> dict[int, dict[bytes, Any]]:
        """ENVELOPE, BODYSTRUCTURE, RFC822.SIZE and FLAGS by UID: all the filters decide on, so a
        message they refuse is never downloaded. A UID expunged meanwhile is simply absent."""
        out: dict[int, dict[bytes, Any]] = {}
        with self._step("fetching headers failed"):
            for chunk in chunked(uids):
                for uid, data in self._client.fetch(chunk, HEADER_ITEMS).items():
                    if all(item in data for item in HEADER_ITEMS):  # else an unsolicited FETCH (flags)
                        out[int(uid)] = data
        return out

    def bodies(self, sizes: dict[int, int]) -> Iterator[tuple[int, bytes]]:
        """Raw messages in UID order, fetched with BODY.PEEK[] so nothing is marked \\Seen early.

        Round trips are grouped by size (``FETCH_BYTES``), not by count alone."""
        group: list[int] = []
        total = 0
        for uid in sorted(sizes):
            if group and total + sizes[uid] > FETCH_BYTES:
                yield from self._fetch_bodies(group)
                group, total = [], 0
            group.append(uid)
            total += sizes[uid]
        if group:
            yield from self._fetch_bodies(group)

    def _fetch_bodies(self, uids: list[int]) -> Iterator[tuple[int, bytes]]:
        with self._step("fetching messages failed"):
            got = self._client.fetch(uids, [b"BODY.PEEK[]"])
        for uid in uids:
            data = got.get(uid)
            if data is not None and b"BODY[]" in data:  # a message expunged meanwhile has no entry
                yield uid, bytes(data[b"BODY[]"])

    def add_flags(self, uids: Sequence[int], flags: Sequence[bytes]) -> None:
        with self._step(f"cannot set {b' '.join(flags).decode()}"):
            for chunk in chunked(uids):
                self._client.add_flags(chunk, list(flags), silent=True)

    def ensure_folder(self, folder: str) -> None:
        """Create (and subscribe) a target folder the first time it is needed."""
        if folder in self._folders_known:
            return
        with self._step(f"cannot create folder {folder!r}"):
            if not self._client.folder_exists(folder):
                try:
                    self._client.create_folder(folder)
                except IMAPClientError:
                    if not self._client.folder_exists(folder):  # else another watcher just made it
                        raise
                with contextlib.suppress(IMAPClientError):  # subscribing only helps mail clients show it
                    self._client.subscribe_folder(folder)
        self._folders_known.add(folder)

    def move(self, uids: Sequence[int], folder: str) -> None:
        """MOVE when the server has it, else COPY + \\Deleted (+ UID EXPUNGE with UIDPLUS).

        Without UIDPLUS the copies stay flagged \\Deleted instead of a plain EXPUNGE, which would
        also purge messages *someone else* flagged for deletion; the watcher ignores deleted ones."""
        self.ensure_folder(folder)
        with self._step(f"cannot move to {folder!r}"):
            for chunk in chunked(uids):
                if self.can_move:
                    self._client.move(chunk, folder)
                else:
                    self._client.copy(chunk, folder)
                    self._client.add_flags(chunk, [DELETED], silent=True)
                    if self.can_uid_expunge:
                        self._client.uid_expunge(chunk)

    def delete(self, uids: Sequence[int]) -> None:
        with self._step("cannot delete"):
            for chunk in chunked(uids):
                self._client.add_flags(chunk, [DELETED], silent=True)
                if self.can_uid_expunge:
                    self._client.uid_expunge(chunk)

    def noop(self) -> None:
        with self._step("connection check failed"):
            self._client.noop()

    def idle(self, duration: float, wake: Callable[[], bool]) -> bool:
        """IDLE for up to ``duration`` seconds; True when the folder should be looked at again.

        That is new mail (EXISTS) or an untagged NO/BAD — Dovecot, for one, reports a mailbox
        deleted and recreated under the session only that way. Returns early (False) as soon as
        ``wake()`` is true — checked every ``IDLE_SLICE`` — so a stop request or finished
        post-processing never waits for the next mail. A check that comes back empty long before
        its timeout means the socket woke without a full response (typically: the server closed
        it); leaving IDLE then lets DONE surface the real error.

        The answer to DONE is read too: Dovecot 2.3 computes changes that happened just before
        IDLE began but sends them only with its next output, which DONE provokes."""
        deadline = time.monotonic() + duration
        changed = False
        with self._step("IDLE failed"):
            self._client.idle()
            while not changed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or wake():
                    break
                timeout = min(IDLE_SLICE, remaining)
                started = time.monotonic()
                responses = self._client.idle_check(timeout=timeout)
                changed = self._changed(responses)
                if not responses and time.monotonic() - started < timeout / 2:
                    break
            _, tail = self._client.idle_done()
            return self._changed(tail) or changed

    def _changed(self, responses: Sequence[tuple[Any, ...]]) -> bool:
        changed = False
        for response in responses:
            if response[0] == b"BYE":
                raise SourceError(f"{self.label}: server closed the connection: {_words(response)}")
            changed = changed or response[0] in (b"NO", b"BAD") or response[1:2] == (b"EXISTS",)
        return changed

    def close(self) -> None:
        """Log out politely; the connection may already be gone, which is fine when closing."""
        with contextlib.suppress(IMAPClientError, OSError):
            self._client.logout()
        with contextlib.suppress(IMAPClientError, OSError):
            self._client.shutdown()

    def interrupt(self) -> None:
        """From another thread: unblock a pending read so the watcher notices it should stop."""
        with contextlib.suppress(OSError, AttributeError):
            self._client.socket().shutdown(socket.SHUT_RDWR)


def _oauth2_login(client: Any, username: str, tokens: TokenProvider) -> None:
    """SASL XOAUTH2 with a cached token; if the server refuses it (revoked early, or the server
    clock says expired), the token is dropped and one fresh token gets one more try."""
    token = tokens.token()
    try:
        client.oauth2_login(username, token)
    except LoginError:
        tokens.invalidate(token)
        client.oauth2_login(username, tokens.token())


def connect(config: ImapSourceConfig, credential: str | TokenProvider) -> ImapSession:
    """Connect (TLS, STARTTLS or plain), log in with a password or an OAuth2 access token (SASL
    XOAUTH2); the caller owns the returned session."""
    port = config.effective_port
    label = f"imap account {config.name} ({config.host}:{port})"
    client: Any = None
    try:
        context = ssl_context(config) if config.security != "none" else None
        client = IMAPClient(
            config.host,
            port,
            ssl=config.security == "tls",
            ssl_context=context,
            timeout=SocketTimeout(connect=config.connect_timeout, read=config.read_timeout),
        )
        if config.security == "starttls":
            client.starttls(context)
        if isinstance(credential, TokenProvider):
            _oauth2_login(client, config.username, credential)
        else:
            client.login(config.username, credential)
        return ImapSession(client, label)
    except (IMAPClientError, OSError, SourceError) as exc:
        if client is not None:
            with contextlib.suppress(IMAPClientError, OSError):
                client.shutdown()
        if isinstance(exc, SourceError):  # from the token endpoint: already says what and why
            raise
        raise SourceError(f"{label}: cannot connect: {_reason(exc)}") from exc


def new_mail_criteria(config: ImapSourceConfig, after_uid: int) -> list[Any]:
    """SEARCH for messages after ``after_uid`` (not deleted; unseen / since when configured)."""
    criteria: list[Any] = ["UID", f"{after_uid + 1}:*", "UNDELETED"]
    if config.only_unseen:
        criteria.append("UNSEEN")
    if config.since is not None:
        criteria += ["SINCE", config.since]
    return criteria


def not_done_criteria(action: str, flag: str) -> list[Any] | None:
    """SEARCH keys for messages on which ``action`` has not been carried out yet (None: never)."""
    return {
        "move": ["UNDELETED"],
        "delete": ["UNDELETED"],
        "seen": ["UNDELETED", "UNSEEN"],
        "flag": ["UNDELETED", "UNKEYWORD", flag],
    }.get(action)
