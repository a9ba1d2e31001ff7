"""Credentials of the HTTP connector: static headers, or an OAuth 2.0 client-credentials token.

Secrets are resolved once, when the connector is built (a missing one fails at start-up, naming
its env variable or file — never its value). The OAuth2 token (RFC 6749 section 4.4) is cached
until shortly before ``expires_in`` runs out and shared by the delivery threads; a 401 from the
API drops it, so the next request fetches a fresh one.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote

import httpx

from mailingest.config_http import HttpAuthConfig
from mailingest.errors import DeliveryError, DestinationGone

MAX_MARGIN = 30.0  # refresh this many seconds before expiry (at most a tenth of the lifetime)


class Auth(Protocol):
    def headers(self) -> dict[str, str]: ...

    def invalidate(self) -> bool:
        """Forget a cached credential after a 401; True when a retry can use a fresh one."""
        ...


class StaticAuth:
    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def headers(self) -> dict[str, str]:
        return dict(self._headers)

    def invalidate(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"StaticAuth(headers={sorted(self._headers)})"  # names only, never values


class ClientCredentials:
    """OAuth 2.0 client credentials grant with a cached access token."""

    def __init__(
        self,
        config: HttpAuthConfig,
        client: httpx.Client,
        check: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert config.token_url and config.client_id and config.client_secret
        self.token_url, self.client_id, self.scope = config.token_url, config.client_id, config.scope
        self.client_auth = config.client_auth
        self._secret = config.client_secret.get()
        self._client, self._check, self._clock = client, check, clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.fetched = 0  # how many tokens were fetched (visible to tests and logs)

    def __repr__(self) -> str:
        return f"ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                self._token, self._expires_at = self._fetch()
            return {"authorization": f"Bearer {self._token}"}

    def invalidate(self) -> bool:
        with self._lock:
            self._token = None
        return True

    def _fetch(self) -> tuple[str, float]:
        self._check(self.token_url)
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        headers = {"accept": "application/json"}
        if self.client_auth == "basic":
            # RFC 6749 2.3.1: id and secret are form-urlencoded before the Basic encoding
            pair = f"{quote(self.client_id, safe='')}:{quote(self._secret, safe='')}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form |= {"client_id": self.client_id, "client_secret": self._secret}
        started = self._clock()
        try:
            response = self._client.post(self.token_url, data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"token endpoint: {type(exc).__name__}: {exc}") from exc
        excerpt = response.text[:500]
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise DeliveryError(
                f"token endpoint answered HTTP {response.status_code}",
                status_code=response.status_code,
                response=excerpt,
            )
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code != 200 or not isinstance(data, dict) or not data.get("access_token"):
            error = data.get("error") if isinstance(data, dict) else None
            raise DestinationGone(
                f"token endpoint refused the client credentials (HTTP {response.status_code}"
                + (f", {error}" if error else "")
                + ")",
                status_code=response.status_code,
                response=excerpt,
            )
        self.fetched += 1
        lifetime = float(data.get("expires_in") or 3600)
        return str(data["access_token"]), started + lifetime - min(MAX_MARGIN, lifetime / 10)


def make_auth(config: HttpAuthConfig, client: httpx.Client, check: Callable[[str], None]) -> Auth:
    """The credentials of one connector; secrets are read now (ConfigError when missing)."""
    if config.type == "bearer":
        assert config.token is not None
        return StaticAuth({"authorization": f"{config.scheme} {config.token.get()}"})
    if config.type == "basic":
        assert config.username is not None and config.password is not None
        pair = f"{config.username}:{config.password.get()}".encode()
        return StaticAuth({"authorization": "Basic " + base64.b64encode(pair).decode()})
    if config.type == "header":
        assert config.header is not None and config.value is not None
        return StaticAuth({config.header.lower(): config.value.get()})
    if config.type == "oauth2":
        return ClientCredentials(config, client, check)
    return StaticAuth({})
