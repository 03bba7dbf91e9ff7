"""Access tokens: HS256 JWTs chosen by `kid`, issued and verified as pure functions of `now`."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import jwt
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from taskflow.settings import Settings

# A fixed list, never read from the token: the header's `alg` cannot pick "none" or an RSA/HMAC
# confusion (https://datatracker.ietf.org/doc/html/rfc8725#section-3.1).
ALGORITHMS = ["HS256"]
ACCESS = "access"
# The header's explicit type (RFC 8725 §3.11, RFC 9068): a JWT of another kind signed with the
# same key is not an access token.
HEADER_TYPE = "at+jwt"
# Tolerated clock difference between the API instance that issued a token and the one checking
# it, for `iat`/`nbf` only: an expired token is expired.
CLOCK_SKEW_SECONDS = 5
_REQUIRED = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]


class InvalidTokenError(Exception):
    """The access token is missing, malformed, forged, expired or not meant for this API."""


@dataclass(frozen=True)
class AccessClaims:
    """What a verified access token says: who, with which roles, until when."""

    user_id: str
    jti: str
    roles: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    family_id: str = ""  # the refresh-token family the token was issued with ("" for none)


@dataclass(frozen=True)
class AccessToken:
    """An encoded access token and the claims it carries."""

    token: str
    claims: AccessClaims


NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=256)]
# Seconds since the epoch that a datetime can hold (before year 10000).
Timestamp = Annotated[int, Field(ge=0, lt=253_402_300_800)]


class _Payload(BaseModel):
    """The claims TaskFlow relies on, strictly typed (a bool is not a timestamp)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    sub: NonEmpty
    jti: NonEmpty
    typ: Literal["access"]
    iat: Timestamp
    nbf: Timestamp
    exp: Timestamp
    roles: list[NonEmpty]
    fam: Annotated[str, StringConstraints(max_length=256)] = ""


def issue_access_token(
    settings: Settings,
    user_id: str,
    roles: Sequence[str],
    now: datetime,
    *,
    jti: str | None = None,
    family_id: str = "",
) -> AccessToken:
    """A token for `user_id` signed with the active key, valid from `now` for the configured TTL.

    `family_id` names the refresh-token family it comes with: revoking the family (logout,
    reuse, erasure) refuses the token at once (principal.py, auth/denylist.py).
    """
    issued = int(now.timestamp())
    payload: dict[str, Any] = {
        "sub": user_id,
        "jti": jti or uuid.uuid4().hex,
        "typ": ACCESS,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + settings.access_token_ttl_seconds,
        "roles": list(roles),
        "fam": family_id,
    }
    kid = settings.jwt_active_kid
    headers = {"kid": kid, "typ": HEADER_TYPE}
    token = jwt.encode(payload, _key(settings, kid), algorithm=ALGORITHMS[0], headers=headers)
    return AccessToken(token=token, claims=_claims(_Payload.model_validate(payload)))


def verify_access_token(settings: Settings, token: str, now: datetime) -> AccessClaims:
    """The claims of a genuine, current access token for this API; InvalidTokenError otherwise."""
    keys = tuple((kid, secret.get_secret_value()) for kid, secret in settings.jwt_keys.items())
    payload, claims = _verified(token, keys, settings.jwt_audience, settings.jwt_issuer)
    _check_times(payload, int(now.timestamp()))  # every time: only the times change with `now`
    return claims


# A client sends the same token with every request until it expires. Everything but the time
# checks is a pure function of the token string and the keys, so its result is remembered (the
# signature check and parsing were about a tenth of a request's CPU, docs/benchmarks.md), and
# so are the claims built from it (frozen, so one object can serve every request).
# Failures are not remembered: lru_cache does not cache an exception.
@functools.lru_cache(maxsize=4096)
def _verified(
    token: str, keys: tuple[tuple[str, str], ...], audience: str, issuer: str
) -> tuple[_Payload, AccessClaims]:
    secrets = dict(keys)
    try:
        payload = jwt.decode(
            token,
            secrets[_kid(token, secrets)].encode(),
            algorithms=ALGORITHMS,
            audience=audience,
            issuer=issuer,
            # Time claims are checked by the caller against its `now`, not PyJWT's own clock.
            options={
                "require": _REQUIRED,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
        verified = _Payload.model_validate(payload)
    except (jwt.PyJWTError, ValidationError) as exc:
        raise InvalidTokenError("invalid or expired token") from exc
    return verified, _claims(verified)


def _kid(token: str, keys: Mapping[str, str]) -> str:
    """The header's key id, if it names one of our keys and the header types the token as an
    access token (anything else is not our token)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidTokenError("invalid or expired token") from exc
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys or header.get("typ") != HEADER_TYPE:
        raise InvalidTokenError("invalid or expired token")
    return kid


def _key(settings: Settings, kid: str) -> bytes:
    return settings.jwt_keys[kid].get_secret_value().encode()


def _check_times(claims: _Payload, now: int) -> None:
    not_yet = claims.nbf > now + CLOCK_SKEW_SECONDS or claims.iat > now + CLOCK_SKEW_SECONDS
    if not_yet or now >= claims.exp:
        raise InvalidTokenError("invalid or expired token")


def _claims(payload: _Payload) -> AccessClaims:
    return AccessClaims(
        user_id=payload.sub,
        jti=payload.jti,
        roles=tuple(payload.roles),
        issued_at=datetime.fromtimestamp(payload.iat, UTC),
        expires_at=datetime.fromtimestamp(payload.exp, UTC),
        family_id=payload.fam,
    )
