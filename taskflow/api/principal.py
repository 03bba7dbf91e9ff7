"""Who is calling: the bearer access token verified, checked against the deny list."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from taskflow.api.keys import DENY_LIST, SERVICES
from taskflow.api.middlewares import register_problem_mapper
from taskflow.api.problems import Problem
from taskflow.auth.denylist import AuthUnavailableError, DenyGuard
from taskflow.auth.tokens import InvalidTokenError, verify_access_token
from taskflow.commands.user_handlers import load_user
from taskflow.privacy.data_keys import Standing
from taskflow.services import Services

REALM = 'Bearer realm="taskflow"'


class _NoTokenError(InvalidTokenError):
    """No bearer token was sent at all (RFC 6750 §3.1: then no error code in the challenge)."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    user_id: str
    roles: tuple[str, ...]
    jti: str
    expires_at: datetime
    family_id: str = ""


async def require_user(request: web.Request) -> Principal:
    """The caller named by `Authorization: Bearer`; 401 for any token problem, 503 fail-closed."""
    services = request.app[SERVICES]
    claims = verify_access_token(services.settings, _bearer(request), datetime.now(UTC))
    if await request.app[DENY_LIST].is_denied(claims.jti, claims.family_id):
        raise InvalidTokenError("logged out, or its session was revoked")
    await require_standing(services, claims.user_id)
    return Principal(
        user_id=claims.user_id,
        roles=claims.roles,
        jti=claims.jti,
        expires_at=claims.expires_at,
        family_id=claims.family_id,
    )


async def require_standing(services: Services, user_id: str) -> None:
    """InvalidTokenError unless `user_id` is a live user: a token of an unknown or erased user
    is refused (cached, so this costs no I/O on most requests; docs/privacy.md)."""
    standing = await services.keys.standing(user_id)
    if standing is Standing.UNKNOWN:  # no data key: registered before keys existed, or nobody
        user = await load_user(services.store, user_id)
        services.keys.settle(user_id, exists=user is not None and not user.erased)
        standing = await services.keys.standing(user_id)
    if standing is not Standing.LIVE:
        raise InvalidTokenError("the token's user does not exist")


@dataclass(frozen=True)
class GuardedCaller:
    """A caller whose token is verified but not yet checked against the deny list: `guard`
    must go with the read (taskflow.projections.task_queries.ReadGuard), which checks it in its
    own Redis round trip and refuses a logged-out token as `require_user` would."""

    user_id: str
    guard: DenyGuard


async def guarded_caller(request: web.Request) -> GuardedCaller:
    """The caller named by `Authorization: Bearer`, its deny-list check left to the read (the
    standing check is made here: it is cached, so it costs no round trip)."""
    services = request.app[SERVICES]
    claims = verify_access_token(services.settings, _bearer(request), datetime.now(UTC))
    await require_standing(services, claims.user_id)
    return GuardedCaller(claims.user_id, request.app[DENY_LIST].guard(claims.jti, claims.family_id))


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _NoTokenError("no bearer token")
    return token


@register_problem_mapper
def auth_problem(exc: Exception) -> Problem | None:
    """401 for a bad token (saying nothing an attacker could use), 503 when we cannot check."""
    if isinstance(exc, InvalidTokenError):
        challenge = REALM if isinstance(exc, _NoTokenError) else f'{REALM}, error="invalid_token"'
        return Problem(
            401,
            "invalid-token",
            "Authentication required",
            "invalid or expired token",
            headers={"WWW-Authenticate": challenge},
        )
    if isinstance(exc, AuthUnavailableError):
        return Problem(
            503,
            "auth-unavailable",
            "Authentication is unavailable",
            "Credentials cannot be checked right now; try again shortly.",
            headers={"Retry-After": "1"},
        )
    return None
