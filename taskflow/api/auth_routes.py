"""Auth endpoints: register, login, refresh, logout, password change and the caller's own
profile."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from taskflow.api import keys
from taskflow.api.contracts import (
    BODY_PROBLEMS,
    PUBLIC,
    TOKEN,
    UNAVAILABLE,
    Operation,
    Reply,
    Routes,
    Shape,
    header_parameter,
)
from taskflow.api.headers import POSITION_HEADER
from taskflow.api.json_io import json_response, read_model
from taskflow.api.middlewares import register_problem_mapper
from taskflow.api.principal import REALM, require_user
from taskflow.api.problems import Problem
from taskflow.auth.passwords import PASSWORD_MAX, Password
from taskflow.auth.refresh import InvalidRefreshTokenError, RefreshToken, RefreshTokens
from taskflow.auth.throttle import AccountThrottledError
from taskflow.auth.tokens import InvalidTokenError, issue_access_token
from taskflow.commands.erasure import handle_erase_user
from taskflow.commands.user import EMAIL_MAX, DisplayName, Email, UserState
from taskflow.commands.user_handlers import (
    EmailTakenError,
    InvalidCredentialsError,
    Trace,
    authenticate_user,
    check_password,
    handle_change_password,
    handle_register_user,
    load_user,
)
from taskflow.privacy.data_keys import SubjectErasedError
from taskflow.projections.erasure_purge import purge_caches_of
from taskflow.services import Services

REFRESH_COOKIE = "taskflow_refresh"
COOKIE_PATH = "/api/auth"  # the refresh token travels to the auth endpoints only
CSRF_HEADER = "X-Requested-With"

ROUTES = Routes("auth")


class _Body(BaseModel):
    # Strict: a JSON object such as {"$ne": null} is never coerced into a string.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RegisterBody(_Body):
    """POST /api/auth/register."""

    email: Email
    display_name: DisplayName
    password: Password


class EraseBody(_Body):
    """DELETE /api/auth/me: the password again, so a stolen access token cannot erase."""

    password: Annotated[str, StringConstraints(min_length=1, max_length=PASSWORD_MAX)]


class ChangePasswordBody(_Body):
    """POST /api/auth/password: the current password, and the new one (the policy applies)."""

    current_password: Annotated[str, StringConstraints(min_length=1, max_length=PASSWORD_MAX)]
    new_password: Password


class LoginBody(_Body):
    """POST /api/auth/login: loosely checked, so a malformed e-mail is just a failed login."""

    email: Annotated[str, StringConstraints(min_length=1, max_length=EMAIL_MAX)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=PASSWORD_MAX)]


class SameSiteBody(BaseModel):
    """Any JSON object, `{}` will do: refresh and logout need an application/json body, which
    another site cannot send without a CORS preflight."""

    model_config = ConfigDict(extra="allow")


class RegisteredUser(Shape):
    """The public profile of a new account."""

    user_id: str
    email: str
    display_name: str


class Profile(Shape):
    """The caller's profile."""

    user_id: str
    email: str
    display_name: str
    roles: list[str]


class AccessToken(Shape):
    """A new access token (RFC 6749 §5.1); the refresh token travels in a cookie."""

    access_token: str = Field(description="a JWT for `Authorization: Bearer`")
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="seconds until the access token expires")


EMAIL, PASSWORD = "ada@example.com", "correct horse battery"  # the examples' account
REGISTER_UNAVAILABLE = {
    503: "MongoDB or Redis is unavailable. The account may have been created even so: a retry "
    "then answers 409, and logging in works"
}
SAME_SITE = {
    403: "an Origin that is not allowed, or neither Origin nor X-Requested-With",
    415: "the request is not application/json",
}
SAME_SITE_HEADER = header_parameter(
    CSRF_HEADER,
    {"type": "string", "minLength": 1},
    "any value; required when the request has no Origin header (a browser sends Origin, "
    "and another site cannot add this header without a CORS preflight)",
)
SAME_SITE_NOTE = (
    "Needs Content-Type application/json and an allowed Origin (or X-Requested-With without "
    "Origin)."
)


def setup_auth_routes(app: web.Application) -> None:
    """Register /api/auth/* routes."""
    ROUTES.add_to(app)


@ROUTES.route(
    Operation(
        "post",
        "/api/auth/register",
        "register",
        "Create an account",
        (
            Reply(
                201,
                "Registered; Location is the profile",
                RegisteredUser,
                ("ETag", "Location", POSITION_HEADER),
            ),
        ),
        {
            **BODY_PROBLEMS,
            409: "the e-mail address is taken",
            422: "a field is invalid (each is named); a password that is too common, too easy "
            "to guess or the e-mail itself is refused",
            **REGISTER_UNAVAILABLE,
        },
        body=RegisterBody,
        example={"email": EMAIL, "password": PASSWORD, "display_name": "Ada"},
        security=PUBLIC,
    )
)
async def register(request: web.Request) -> web.Response:
    """Create an account: 201 with its public profile, 409 if the e-mail is taken."""
    body = await read_model(request, RegisterBody)
    services = _services(request)
    outcome = await handle_register_user(
        services.accounts,
        email=body.email,
        display_name=body.display_name,
        password=body.password,
        trace=Trace(request[keys.REQUEST_ID], request[keys.CORRELATION_ID]),
    )
    assert outcome.state is not None  # a registration always leaves a user
    headers = {"ETag": f'"{outcome.version}"', "Location": "/api/auth/me"}
    if outcome.position is not None:
        headers[POSITION_HEADER] = str(outcome.position)
    user = outcome.state
    public = {"user_id": user.user_id, "email": user.email, "display_name": user.display_name}
    return json_response(public, status=201, headers=headers)


@ROUTES.route(
    Operation(
        "post",
        "/api/auth/login",
        "login",
        "Exchange e-mail and password for an access token and a refresh cookie",
        (Reply(200, "Signed in", AccessToken, ("Set-Cookie",)),),
        {
            **BODY_PROBLEMS,
            401: "wrong e-mail or password",
            422: "a field is invalid",
            429: "too many requests from this address, or too many wrong passwords for this "
            "account (Retry-After says how long to wait)",
        }
        | UNAVAILABLE,
        body=LoginBody,
        example={"email": EMAIL, "password": PASSWORD},
        security=PUBLIC,
    )
)
async def login(request: web.Request) -> web.Response:
    """Exchange e-mail and password for an access token and a new refresh-token family."""
    body = await read_model(request, LoginBody)
    services = _services(request)
    user = await authenticate_user(services.accounts, body.email, body.password)
    refresh_token = await _refresh_tokens(services).issue(user.user_id, _now())
    return _signed_in(services, user, refresh_token)


@ROUTES.route(
    Operation(
        "post",
        "/api/auth/refresh",
        "refresh",
        "Rotate the refresh cookie and get a new access token",
        (
            Reply(
                200,
                "A new access token and the family's next refresh token",
                AccessToken,
                ("Set-Cookie",),
            ),
        ),
        {
            401: "no, an expired, or a reused refresh token (reuse revokes the family)",
            **SAME_SITE,
        }
        | UNAVAILABLE,
        security=({"refreshCookie": []},),
        parameters=(SAME_SITE_HEADER,),
        body=SameSiteBody,
        example={},
        description=(
            "A refresh token presented twice revokes its whole family, and every access token "
            "issued with it, unless the second time comes within REFRESH_GRACE_SECONDS of the "
            "first (two tabs): then both get the same successor. " + SAME_SITE_NOTE
        ),
    )
)
async def refresh(request: web.Request) -> web.Response:
    """Rotate the refresh cookie: a new access token and the family's next refresh token."""
    require_same_site(request)
    presented = request.cookies.get(REFRESH_COOKIE)
    if not presented:
        raise InvalidRefreshTokenError("no refresh token")
    services = _services(request)
    refresh_token = await _refresh_tokens(services).rotate(presented, _now())
    user = await load_user(services.store, refresh_token.user_id)
    if user is None or user.erased:
        raise InvalidRefreshTokenError("the token's user does not exist")
    return _signed_in(services, user, refresh_token)


@ROUTES.route(
    Operation(
        "post",
        "/api/auth/logout",
        "logout",
        "Deny-list the access token and revoke the refresh family",
        (Reply(204, "Signed out; the refresh cookie is cleared", headers=("Set-Cookie",)),),
        TOKEN | SAME_SITE | UNAVAILABLE,
        security=({"bearerAuth": [], "refreshCookie": []}, {"bearerAuth": []}),
        parameters=(SAME_SITE_HEADER,),
        body=SameSiteBody,
        example={},
        description=(
            "The family is the access token's own: the bearer token alone ends the session. "
            + SAME_SITE_NOTE
        ),
    )
)
async def logout(request: web.Request) -> web.Response:
    """Deny the access token until it expires, revoke the refresh family, drop the cookie.

    The family is the one the access token names (`fam`), so a logout that carries only the
    bearer token ends the session too; a refresh cookie sent along is revoked as well.
    """
    require_same_site(request)
    principal = await require_user(request)
    services = _services(request)
    now = _now()
    await request.app[keys.DENY_LIST].deny(principal.jti, principal.expires_at, now)
    tokens = _refresh_tokens(services)
    if principal.family_id:
        await tokens.revoke_family(principal.family_id, principal.user_id, now, reason="logout")
    presented = request.cookies.get(REFRESH_COOKIE)
    if presented:
        await tokens.revoke_family_of(presented, now, reason="logout")
    response = web.Response(status=204)
    response.del_cookie(
        REFRESH_COOKIE,
        path=COOKIE_PATH,
        secure=services.settings.cookie_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


@ROUTES.route(
    Operation(
        "post",
        "/api/auth/password",
        "changePassword",
        "Change the caller's password and sign out every other session",
        (Reply(204, "Changed; this session goes on", headers=(POSITION_HEADER,)),),
        {
            **BODY_PROBLEMS,
            401: "no valid access token, or the current password is wrong",
            412: "another password change landed first",
            422: "a field is invalid; a new password that is too common, too easy to guess or "
            "the e-mail itself is refused",
            429: "too many requests, or too many wrong passwords for this account "
            "(Retry-After says how long to wait)",
            **UNAVAILABLE,
        },
        body=ChangePasswordBody,
        example={"current_password": PASSWORD, "new_password": "a brand new passphrase 42"},
        description=(
            "Every refresh family of the user but the caller's own is revoked: the other "
            "sessions cannot refresh, and their access tokens are refused at once (the deny "
            "list's family check); their change feeds end within CHANGE_FEED_AUTH_CHECK_SECONDS."
        ),
    )
)
async def change_password(request: web.Request) -> web.Response:
    """Replace the caller's password and end their other sessions: every refresh family but
    the caller's own is revoked, and the access tokens issued in them are refused at once."""
    principal = await require_user(request)
    body = await read_model(request, ChangePasswordBody)
    services = _services(request)
    trace = Trace(request[keys.REQUEST_ID], request[keys.CORRELATION_ID])
    outcome = await handle_change_password(
        services.accounts,
        user_id=principal.user_id,
        current_password=body.current_password,
        new_password=body.new_password,
        context=trace.context(principal.user_id),
    )
    await _refresh_tokens(services).revoke_families_of_user(
        principal.user_id, _now(), reason="password-changed", keep=principal.family_id
    )
    headers = {} if outcome.position is None else {POSITION_HEADER: str(outcome.position)}
    return web.Response(status=204, headers=headers)


@ROUTES.route(
    Operation(
        "get",
        "/api/auth/me",
        "me",
        "The caller's profile",
        (Reply(200, "The profile", Profile),),
        {401: "no valid access token, or its user does not exist"} | UNAVAILABLE,
    )
)
async def me(request: web.Request) -> web.Response:
    """The caller's profile, read from the user aggregate."""
    principal = await require_user(request)
    user = await load_user(_services(request).store, principal.user_id)
    if user is None or user.erased:
        raise InvalidTokenError("the token's user does not exist")
    return json_response(_profile(user), headers={"Cache-Control": "private, no-cache"})


@ROUTES.route(
    Operation(
        "delete",
        "/api/auth/me",
        "eraseMe",
        "Erase the caller's account and personal data (needs the password again)",
        (Reply(204, "Erased; the refresh cookie is cleared", headers=("Set-Cookie",)),),
        {
            **BODY_PROBLEMS,
            401: "no valid access token, or a wrong password",
            422: "the password is missing",
            **UNAVAILABLE,
        },
        body=EraseBody,
        example={"password": PASSWORD},
        description=(
            "Crypto-shredding (docs/privacy.md): the account's data key is destroyed, so the "
            "e-mail, name and task texts stored in the event log can never be read again; its "
            "sessions and tokens are refused from now on, its task views lose their texts, and "
            "the e-mail can be registered anew. The log keeps the events (types, versions, "
            "positions, times) and still verifies; auditors see the personal fields as erased "
            '(`data["~erased"]`, see CommitPage).'
        ),
    )
)
async def erase_me(request: web.Request) -> web.Response:
    """Erase the caller's account (docs/privacy.md): 204, then every token of theirs is refused."""
    principal = await require_user(request)
    body = await read_model(request, EraseBody)
    services = _services(request)
    user = await load_user(services.store, principal.user_id)
    if user is None or user.erased:
        raise InvalidTokenError("the token's user does not exist")
    await check_password(services.accounts, user, body.password)
    await handle_erase_user(
        services.accounts,
        services.keys,
        _refresh_tokens(services),
        user_id=user.user_id,
        context=Trace(request[keys.REQUEST_ID], request[keys.CORRELATION_ID]).context(user.user_id),
    )
    await purge_caches_of(services.redis, user.user_id)
    response = web.Response(status=204)
    response.del_cookie(
        REFRESH_COOKIE,
        path=COOKIE_PATH,
        secure=services.settings.cookie_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


def _signed_in(services: Services, user: UserState, refresh_token: RefreshToken) -> web.Response:
    settings = services.settings
    access = issue_access_token(
        settings, user.user_id, user.roles, _now(), family_id=refresh_token.family_id
    )
    body = {
        "access_token": access.token,
        "token_type": "Bearer",
        "expires_in": settings.access_token_ttl_seconds,
    }
    response = json_response(body, headers={"Cache-Control": "no-store"})  # RFC 6749 §5.1
    response.set_cookie(
        REFRESH_COOKIE,
        refresh_token.token,
        max_age=settings.refresh_token_ttl_seconds,
        path=COOKIE_PATH,
        secure=settings.cookie_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


def _profile(user: UserState) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "email": user.email,
        "display_name": user.display_name,
        "roles": list(user.roles),
    }


def _services(request: web.Request) -> Services:
    return request.app[keys.SERVICES]


def _refresh_tokens(services: Services) -> RefreshTokens:
    settings = services.settings
    return RefreshTokens(
        services.db,
        services.redis,
        settings.refresh_token_ttl_seconds,
        grace_seconds=settings.refresh_grace_seconds,
    )


def require_same_site(request: web.Request) -> None:
    """Refresh and logout act on the cookie, which a browser sends with any site's request:
    they need `application/json` (a form or a `text/plain` fetch from another site cannot send
    it without a CORS preflight) and an allowed Origin, or, without Origin, the custom header
    X-Requested-With (which no other site can add without a preflight either)."""
    if request.content_type != "application/json":
        raise Problem(
            415, "unsupported-media-type", "Unsupported media type", "Send application/json."
        )
    origin = request.headers.get("Origin")
    if origin is not None:
        allowed = request.app[keys.SETTINGS].cors_origins
        if origin not in allowed and urlsplit(origin).netloc != request.host:
            raise Problem(403, "cross-site-request", "Forbidden", "This origin may not do that.")
    elif not request.headers.get(CSRF_HEADER):
        raise Problem(
            403,
            "cross-site-request",
            "Forbidden",
            f"Send an Origin header or {CSRF_HEADER} with this request.",
        )


def _now() -> datetime:
    return datetime.now(UTC)


@register_problem_mapper
def auth_api_problem(exc: Exception) -> Problem | None:
    """The auth API's refusals, each under a stable type."""
    challenge = {"WWW-Authenticate": REALM}
    if isinstance(exc, AccountThrottledError):
        return Problem(
            429,
            "login-throttled",
            "Too many failed attempts",
            "Too many wrong passwords for this account; wait before trying again.",
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(exc, SubjectErasedError):  # a command racing its user's erasure
        return Problem(
            401,
            "invalid-token",
            "Authentication required",
            "invalid or expired token",
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    if isinstance(exc, EmailTakenError):
        return Problem(
            409, "email-taken", "E-mail already registered", "This e-mail address is taken."
        )
    if isinstance(exc, InvalidCredentialsError):
        return Problem(
            401,
            "invalid-credentials",
            "Login failed",
            "Wrong e-mail or password.",
            headers=challenge,
        )
    if isinstance(exc, InvalidRefreshTokenError):
        return Problem(
            401,
            "invalid-refresh-token",
            "Session expired",
            "invalid or expired refresh token",
            headers=challenge,
        )
    return None
