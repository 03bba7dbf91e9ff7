"""Rate limits in Redis (the `limits` library): per client IP on login and registration, per
user (else per IP) on everything else, refresh and /api/auth/me included, so that a page that
calls /me on load does not spend the login budget. Every answer of a limited route carries the
RateLimit-* headers, errors included. Logins are also throttled per account (auth/throttle.py).

When Redis cannot answer, limits fail OPEN (the request goes on, a warning is logged and
counted): authenticated endpoints already fail closed on the deny-list check, and login is
bounded by argon2's cost, so availability wins here. docs/operations.md records the choice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from aiohttp import web
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis

from taskflow.api.problems import Problem
from taskflow.auth.tokens import InvalidTokenError, verify_access_token
from taskflow.metrics import RATE_LIMITED
from taskflow.settings import Settings

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_UNLIMITED = {"/api/health", "/api/ready", "/metrics"}
# The routes that take a password from anyone: a small budget per address.
_AUTH_BUCKET = frozenset({"/api/auth/login", "/api/auth/register"})
_HEADERS = web.RequestKey("rate_limit_headers", dict[str, str])


@dataclass(frozen=True)
class RateLimits:
    limiter: MovingWindowRateLimiter
    auth: RateLimitItem
    api: RateLimitItem
    settings: Settings

    @classmethod
    def create(cls, settings: Settings, redis: Redis) -> RateLimits:
        """Limits stored through the process's own Redis pool (closed with it)."""
        storage = RedisStorage(
            settings.redis_url,
            implementation="redispy",
            key_prefix="tf:ratelimit",
            wrap_exceptions=True,
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]  # accepted at runtime
        )
        return cls(
            MovingWindowRateLimiter(storage),
            parse(settings.rate_limit_auth),
            parse(settings.rate_limit_api),
            settings,
        )

    def scope(self, request: web.Request) -> tuple[str, RateLimitItem, str]:
        """Which limit applies: per IP on auth endpoints, per user (else per IP) elsewhere."""
        ip = client_ip(request, self.settings)
        if request.path in _AUTH_BUCKET:
            return "auth", self.auth, f"ip:{ip}"
        return "api", self.api, self._user(request) or f"ip:{ip}"

    def _user(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        try:  # only a genuine token names a user: a forged one must not spend a victim's budget
            claims = verify_access_token(self.settings, token.strip(), datetime.now(UTC))
        except InvalidTokenError:
            return None
        return f"user:{claims.user_id}"


# The app's limits; None when RATE_LIMIT_ENABLED is false.
RATE_LIMITS: web.AppKey[RateLimits | None] = web.AppKey("rate_limits")


def client_ip(request: web.Request, settings: Settings) -> str:
    """The caller's address; behind a trusted proxy, the last X-Forwarded-For hop it added."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    if settings.trust_forwarded_for and forwarded:
        return forwarded.split(",")[-1].strip()
    return request.remote or "unknown"


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request against its scope's limit; 429 with Retry-After past it."""
    limits = request.app[RATE_LIMITS]
    if limits is None or request.path in _UNLIMITED or request.method == "OPTIONS":
        return await handler(request)
    scope, item, key = limits.scope(request)
    try:
        allowed = await limits.limiter.hit(item, scope, key)
        stats = await limits.limiter.get_window_stats(item, scope, key)
    except Exception as exc:  # limits wraps storage errors; fail open, see module docstring
        log.warning("rate_limit_unavailable", error=repr(exc))
        RATE_LIMITED.labels("unavailable").inc()
        return await handler(request)
    reset = max(0, math.ceil(stats.reset_time - time.time()))
    headers = {
        "RateLimit-Limit": str(item.amount),
        "RateLimit-Remaining": str(max(stats.remaining, 0)),
        "RateLimit-Reset": str(reset),
    }
    if not allowed:
        RATE_LIMITED.labels(scope).inc()
        raise Problem(
            429,
            "rate-limited",
            "Too many requests",
            f"Limit {item.amount} per {item.multiples} {item.GRANULARITY.name}; retry later.",
            headers={**headers, "Retry-After": str(max(reset, 1))},
        )
    request[_HEADERS] = headers  # set on the answer whatever it is (`add_rate_limit_headers`)
    return await handler(request)


async def add_rate_limit_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the RateLimit-* headers on every answer of a limited route, the
    problem answers the edge middleware makes of errors (401, 404, ...) included."""
    headers = request.get(_HEADERS) if isinstance(request, web.Request) else None
    if headers:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
