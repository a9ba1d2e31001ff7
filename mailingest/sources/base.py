"""The source seam.

A source hands each raw message to a ``Sink`` — ``Ledger.accept`` in the daemon — which commits
it to the ledger (bytes + row) and returns the message id. Only after ``accept`` returned may a
source acknowledge the message upstream (SMTP ``250``, moving a dropped file). Sources that act
on the message after *processing* (IMAP: flag, move, delete) ask the ledger for the message's
status (``Ledger.status``) and act once it is ``processed`` or ``failed`` — i.e. only after the
results are committed. The (source, mailbox, uidvalidity, uid) key makes ``accept`` idempotent
for sources that can re-deliver.
"""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    def __call__(
        self,
        raw: bytes,
        *,
        source: str,
        mailbox: str | None = None,
        uidvalidity: int | None = None,
        uid: int | None = None,
        envelope_from: str | None = None,
        filename: str | None = None,
    ) -> str: ...


class Source(Protocol):
    """Started once by the daemon with the sink; stopped on shutdown (must return promptly)."""

    name: str

    def start(self, sink: Sink) -> None: ...

    def stop(self) -> None: ...
