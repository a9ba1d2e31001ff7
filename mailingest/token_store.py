"""Refresh tokens kept encrypted at rest: ``<data_dir>/tokens/<account>.json.enc``.

A refresh token is as good as the mailbox password, and providers rotate it, so the newest one
must outlive a restart without sitting in clear text on disk. The file is a Fernet token
(AES-128-CBC + HMAC-SHA256, from ``cryptography``) of a small JSON object; the key is the
``token_key`` secret of ``[sources.imap.oauth2]`` (``mailingest auth --new-key`` prints one).

Each stored token remembers a fingerprint (SHA-256) of the configured ``refresh_token`` it was
based on. The stored token is used while the configured secret still holds that token (or no
token is configured); once a person puts a different token into the secret, that one is newer
and wins. Writes go to a temporary file (mode 0600) that replaces the old one atomically, so a
crash leaves either the old or the new token, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from mailingest.config_base import Secret
from mailingest.errors import ConfigError

FORMAT_VERSION = 1


def fingerprint(refresh_token: str) -> str:
    """Identifies a configured token without storing it a second time."""
    return hashlib.sha256(refresh_token.encode()).hexdigest()


def new_key() -> str:
    return Fernet.generate_key().decode()


@dataclass(frozen=True)
class StoredToken:
    refresh_token: str
    based_on: str | None  # fingerprint of the configured refresh token it supersedes
    saved_at: str  # ISO 8601, UTC; for people reading `mailingest auth` output and logs

    def supersedes(self, configured: str | None) -> bool:
        """Whether this token is newer than the configured one (see the module docstring)."""
        return configured is None or self.based_on == fingerprint(configured)


class TokenStore:
    """One account's encrypted token file. Not locked: the ``TokenProvider`` that owns it
    serialises its own calls, and the atomic replace keeps a concurrent reader consistent."""

    def __init__(self, path: Path, key: Secret) -> None:
        self.path = path
        self.key = key

    @classmethod
    def for_account(cls, data_dir: Path, account: str, key: Secret) -> TokenStore:
        return cls(data_dir / "tokens" / f"{account}.json.enc", key)

    def _fernet(self) -> Fernet:
        """Read the key every time, like other secrets, so a corrected key needs no restart."""
        try:
            return Fernet(self.key.get().encode())
        except ValueError as exc:  # cryptography's "Fernet key must be 32 url-safe base64-encoded bytes"
            raise ConfigError(
                f"token_key for {self.path} is not a Fernet key ({exc}); "
                "`mailingest auth --new-key` prints one"
            ) from None

    def check_key(self) -> None:
        """ConfigError unless ``token_key`` can be read and is a Fernet key."""
        self._fernet()

    def load(self) -> StoredToken | None:
        """The stored token, None when there is no file yet; ConfigError naming the file when it
        cannot be read or decrypted (a wrong key cannot heal by retrying)."""
        fernet = self._fernet()
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read token file {self.path}: {exc.strerror}") from exc
        try:
            data = json.loads(fernet.decrypt(blob))
            return StoredToken(
                refresh_token=str(data["refresh_token"]),
                based_on=data.get("based_on"),
                saved_at=str(data.get("saved_at", "")),
            )
        except InvalidToken:
            raise ConfigError(
                f"cannot decrypt token file {self.path}: token_key is not the key it was written with "
                "(restore that key, or delete the file and run `mailingest auth` again)"
            ) from None
        except (ValueError, KeyError, TypeError):  # decrypted, but not what this module writes
            raise ConfigError(
                f"token file {self.path} holds no refresh token; run `mailingest auth` again"
            ) from None

    def save(self, refresh_token: str, *, based_on: str | None) -> StoredToken:
        """Encrypt and atomically replace the file (directory 0700, file 0600)."""
        stored = StoredToken(refresh_token, based_on, datetime.now(UTC).isoformat(timespec="seconds"))
        payload = {"version": FORMAT_VERSION, **asdict(stored)}
        blob = self._fernet().encrypt(json.dumps(payload).encode())
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:  # mkstemp creates the file with mode 0600 already
            with os.fdopen(fd, "wb") as out:
                out.write(blob)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:  # make the rename itself durable
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return stored
