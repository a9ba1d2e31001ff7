"""``mailingest auth``: authorise a mailbox with the OAuth2 device-code flow (RFC 8628).

A person runs it once per mailbox on any machine with the config: it asks the provider for a
user code, prints where to enter it, polls the token endpoint until they have signed in, and
stores the refresh token encrypted (``mailingest.token_store``) where the daemon picks it up —
even a running daemon, at its next token request. Nothing secret is printed.

Exit codes follow the CLI contract: 0 stored, 1 denied, expired or the provider failed,
2 usage or configuration error (unknown account, no ``token_key``, no device endpoint).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

import httpx

from mailingest.config import Config, load_config
from mailingest.config_base import Secret
from mailingest.config_sources import ImapOAuth2, ImapSourceConfig
from mailingest.errors import ConfigError, SourceError
from mailingest.oauth import json_body, oauth_error
from mailingest.token_store import TokenStore, fingerprint, new_key

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5.0  # RFC 8628 3.2: when the answer gives none
SLOW_DOWN_STEP = 5.0  # RFC 8628 3.5: every slow_down adds 5 seconds
DEFAULT_EXPIRES = 900.0  # a device code's usual lifetime, when the answer gives none


def _account(config: Config, name: str) -> tuple[ImapSourceConfig, ImapOAuth2, Secret]:
    accounts = {a.name: a for a in config.sources.imap}
    account = accounts.get(name)
    if account is None:
        known = ", ".join(sorted(accounts)) or "none configured"
        raise ConfigError(f"no [[sources.imap]] account named {name!r} (accounts: {known})")
    oauth2 = account.oauth2
    if account.auth != "oauth2" or oauth2 is None:
        raise ConfigError(f'imap account {name} does not use auth = "oauth2"')
    if oauth2.token_key is None:
        raise ConfigError(
            f"imap account {name}: [sources.imap.oauth2] needs token_key to store the token "
            '(e.g. token_key = { env = "MAILINGEST_TOKEN_KEY" }; `mailingest auth --new-key` prints a key)'
        )
    return account, oauth2, oauth2.token_key


def _post(http: httpx.Client, url: str, form: dict[str, str]) -> httpx.Response:
    try:
        return http.post(url, data=form, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise SourceError(f"request to {url} failed: {type(exc).__name__}: {exc}") from exc


def _number(body: dict[str, Any], key: str, default: float) -> float:
    try:
        return float(body.get(key, default))
    except (TypeError, ValueError):
        return default


def authorise(config: Config, name: str, *, out: TextIO = sys.stdout) -> int:
    """Run the device-code flow for account ``name`` and store the refresh token."""
    account, oauth2, key = _account(config, name)
    device_url = oauth2.effective_device_code_url
    if device_url is None:
        raise ConfigError(
            f"imap account {name}: provider 'custom' needs device_code_url for `mailingest auth`"
        )
    store = TokenStore.for_account(config.data_dir, account.name, key)
    store.check_key()  # fail on a missing or malformed key before a person signs in for nothing
    # a configured token the new one is to supersede; read now so a missing secret fails early
    configured = oauth2.refresh_token.get() if oauth2.refresh_token is not None else None
    base = {"client_id": oauth2.client_id}
    if oauth2.effective_scope:
        base["scope"] = oauth2.effective_scope
    with httpx.Client(timeout=account.connect_timeout) as http:
        response = _post(http, device_url, base)
        if response.status_code != 200:
            raise SourceError(f"device authorization at {device_url} refused: {oauth_error(response)[1]}")
        device = json_body(response, f"device authorization at {device_url}")
        try:
            device_code, user_code = str(device["device_code"]), str(device["user_code"])
            uri = str(device.get("verification_uri") or device["verification_url"])  # Google: _url
        except KeyError as exc:
            raise SourceError(f"device authorization at {device_url} answered without {exc}") from None
        interval = _number(device, "interval", DEFAULT_INTERVAL)
        deadline = time.monotonic() + _number(device, "expires_in", DEFAULT_EXPIRES)
        print(f"To authorise mailbox {account.username} (account {name}):", file=out)
        print(f"  1. open   {uri}", file=out)
        print(f"  2. enter  {user_code}", file=out)
        if device.get("verification_uri_complete"):
            print(f"  (or open {device['verification_uri_complete']})", file=out)
        print("Waiting for the sign-in to finish ...", file=out, flush=True)

        form = base | {"grant_type": DEVICE_GRANT, "device_code": device_code}
        if oauth2.client_secret is not None:  # Google's device clients have one
            form["client_secret"] = oauth2.client_secret.get()
        url = oauth2.effective_token_url
        while True:
            time.sleep(interval)
            if time.monotonic() > deadline:
                print(
                    "mailingest auth: the code expired before the sign-in finished; run again",
                    file=sys.stderr,
                )
                return 1
            response = _post(http, url, form)
            if response.status_code == 200:
                break
            code, text = oauth_error(response)
            if code == "authorization_pending":
                continue
            if code == "slow_down":
                interval += SLOW_DOWN_STEP
                continue
            if code == "expired_token":
                print(
                    "mailingest auth: the code expired before the sign-in finished; run again",
                    file=sys.stderr,
                )
                return 1
            if code == "access_denied":
                print(f"mailingest auth: the sign-in was denied ({text}); nothing stored", file=sys.stderr)
                return 1
            raise SourceError(f"token endpoint {url} refused: {text}")
    body = json_body(response, f"token endpoint {url}")
    refresh = body.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        raise SourceError(
            f"token endpoint {url} answered without a refresh token; the scope must allow offline access "
            "(Microsoft: offline_access)"
        )
    store.save(refresh, based_on=fingerprint(configured) if configured is not None else None)
    print(f"Authorised. Refresh token stored encrypted in {store.path}", file=out)
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of the ``auth`` subcommand (``mailingest.cli``)."""
    if args.new_key:
        print(new_key())
        return 0
    if not args.account:
        print("mailingest auth: name an ACCOUNT (or use --new-key)", file=sys.stderr)
        return 2
    return authorise(load_config(args.config), args.account)
