"""Per-credential rate limits, vendor confinement, API latency metrics and access log lines:
one middleware in front of every route (``install_rate_limits``).

* Token bucket in memory per credential (API key id or OAuth2 client id): capacity N, refilled
  at N per period (``[api] rate_limit = "600/minute"``, overrides by scope or kind in
  ``[api] rate_limits``; the most generous matching entry wins). Buckets are per process: with
  several daemon processes behind one address each enforces its own budget.
* Every response to a request that carried a valid credential has the IETF draft
  (draft-ietf-httpapi-ratelimit-headers) headers ``RateLimit-Policy: "name";q=N;w=SECONDS`` and
  ``RateLimit: "name";r=REMAINING;t=SECONDS_UNTIL_FULL``. Over the limit: 429 problem+json with
  ``Retry-After``.
* Anonymous requests (loopback-open reads, open probes) are not limited: they carry no
  credential to count against, and the loopback-open mode exists only on a loopback listener.
* A vendor-portal credential gets 403 on every path outside ``/v1/portal`` — also on the open
  ones (``/healthz``, ``/metrics``, ``/docs``), which a vendor has no business reading.
* One structured access-log line per request (``api.request``: method, route, status,
  duration_ms, credential) and the ``mailingest_api_request_duration_seconds`` histogram.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import Response

from mailingest.api.auth import Authenticator, Principal
from mailingest.api.metrics import MailingestRegistry
from mailingest.config import ApiConfig, parse_rate

log = structlog.get_logger("mailingest.api")
PORTAL_PREFIX = "/v1/portal"
_NEXT = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Policy:
    name: str
    limit: int
    window: float  # seconds in which ``limit`` requests refill

    @property
    def rate(self) -> float:
        return self.limit / self.window


@dataclass
class Decision:
    allowed: bool
    remaining: int
    reset: int  # seconds until the bucket is full again
    retry_after: int  # seconds until one request is allowed (0 when allowed)


class TokenBuckets:
    """Thread-safe token buckets keyed by credential id (pure logic; ``clock`` injectable)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, last refill time)
        self._lock = threading.Lock()

    def take(self, key: str, policy: Policy) -> Decision:
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(policy.limit), now))
            tokens = min(float(policy.limit), tokens + (now - last) * policy.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
        reset = math.ceil((policy.limit - tokens) / policy.rate)
        retry = 0 if allowed else max(1, math.ceil((1.0 - tokens) / policy.rate))
        return Decision(allowed, int(tokens), reset, retry)


def policy_for(api: ApiConfig, principal: Principal) -> Policy | None:
    """The most generous configured rate among the credential's scopes and kind, else the
    default ``rate_limit``; None when that is off."""
    candidates: list[Policy] = []
    for name in [*sorted(principal.scopes), principal.kind]:
        if name in api.rate_limits:
            parsed = parse_rate(api.rate_limits[name])
            if parsed is None:
                return None
            candidates.append(Policy(name, *parsed))
    if candidates:
        return max(candidates, key=lambda p: p.rate)
    parsed = parse_rate(api.rate_limit)
    return Policy("default", *parsed) if parsed else None


def _problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def install_rate_limits(
    app: FastAPI,
    authenticator: Authenticator,
    api: ApiConfig,
    registry: object | None = None,
    buckets: TokenBuckets | None = None,
) -> TokenBuckets:
    """Add the middleware; returns the buckets (tests inspect or share them)."""
    buckets = buckets or TokenBuckets()
    histogram = registry.api_requests if isinstance(registry, MailingestRegistry) else None

    async def dispatch(request: Request, call_next: _NEXT) -> Response:
        started = time.perf_counter()
        principal: Principal | None = None
        headers: dict[str, str] = {}
        response: Response | None = None
        if request.headers.get("authorization", "").lower().startswith("bearer "):
            try:
                principal = await run_in_threadpool(authenticator.resolve, request)
            except HTTPException:  # a bad credential: the route's own dependency answers 401
                principal = None
        if principal is not None:
            request.state.resolved = principal
            if principal.vendor is not None and not request.url.path.startswith(PORTAL_PREFIX):
                response = _problem(
                    403, "Forbidden", f"vendor-portal credential {principal.key_id} may only use /v1/portal"
                )
            policy = policy_for(api, principal)
            if response is None and policy is not None:
                decision = buckets.take(f"{principal.kind}:{principal.key_id}", policy)
                headers = {
                    "RateLimit-Policy": f'"{policy.name}";q={policy.limit};w={int(policy.window)}',
                    "RateLimit": f'"{policy.name}";r={decision.remaining};t={decision.reset}',
                }
                if not decision.allowed:
                    response = _problem(
                        429,
                        "Too Many Requests",
                        f"rate limit {policy.limit} per {int(policy.window)} s exceeded for "
                        f"{principal.key_id}; retry in {decision.retry_after} s",
                        headers={"Retry-After": str(decision.retry_after)},
                    )
        if response is None:
            response = await call_next(request)
        response.headers.update(headers)
        route = getattr(request.scope.get("route"), "path", None) or "unmatched"
        duration = time.perf_counter() - started
        if histogram is not None:
            histogram.labels(request.method, route, str(response.status_code)).observe(duration)
        log.info(
            "api.request",
            method=request.method,
            route=route,
            path=request.url.path,
            status=response.status_code,
            duration_ms=round(duration * 1000, 1),
            credential=principal.key_id if principal else None,
            client=request.client.host if request.client else None,
        )
        return response

    app.add_middleware(BaseHTTPMiddleware, dispatch=dispatch)
    return buckets
