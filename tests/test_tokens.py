"""Access-token issue and verification, including hostile tokens; pure, no servers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from taskflow.auth.tokens import (
    CLOCK_SKEW_SECONDS,
    InvalidTokenError,
    issue_access_token,
    verify_access_token,
)
from taskflow.settings import Settings

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
# 64 bytes, so that HS512 test tokens below raise no short-key warning (warnings are errors).
SECRET = "k" * 64
OTHER_SECRET = "o" * 64


def make_settings(keys: dict[str, str] | None = None, active: str = "k1") -> Settings:
    keys = keys or {"k1": SECRET}
    return Settings(
        jwt_keys={kid: SecretStr(secret) for kid, secret in keys.items()},
        jwt_active_kid=active,
        jwt_issuer="taskflow",
        jwt_audience="taskflow-api",
        access_token_ttl_seconds=900,
    )


SETTINGS = make_settings()


def claims(**changes: Any) -> dict[str, Any]:
    issued = int(NOW.timestamp())
    base: dict[str, Any] = {
        "sub": "user-1",
        "jti": "a" * 32,
        "typ": "access",
        "iss": "taskflow",
        "aud": "taskflow-api",
        "iat": issued,
        "nbf": issued,
        "exp": issued + 900,
        "roles": [],
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


def sign(
    payload: dict[str, Any],
    *,
    secret: str = SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
) -> str:
    headers = headers or {"kid": "k1", "typ": "at+jwt"}
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], secret: str = SECRET) -> str:
    """An HS256 token with any header at all (PyJWT refuses to encode some hostile ones)."""
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'at+jwt', **header})}.{b64(payload)}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def rejected(token: str, settings: Settings = SETTINGS, now: datetime = NOW) -> bool:
    with pytest.raises(InvalidTokenError):
        verify_access_token(settings, token, now)
    return True


def test_issued_token_verifies_and_carries_every_claim() -> None:
    """A fresh token verifies and says who, which roles, which jti and when it expires."""
    issued = issue_access_token(SETTINGS, "user-1", ["auditor"], NOW)
    verified = verify_access_token(SETTINGS, issued.token, NOW)
    assert verified == issued.claims
    assert verified.user_id == "user-1"
    assert verified.roles == ("auditor",)
    assert verified.expires_at == NOW + timedelta(seconds=900)
    assert len(verified.jti) == 32
    header = jwt.get_unverified_header(issued.token)
    assert header == {"alg": "HS256", "typ": "at+jwt", "kid": "k1"}
    payload = jwt.decode(issued.token, options={"verify_signature": False})
    assert {"typ": "access", "iss": "taskflow", "aud": "taskflow-api"}.items() <= payload.items()


@pytest.mark.parametrize("typ", ["JWT", "jwt", "refresh+jwt", None, 1])
def test_a_header_that_does_not_type_the_token_as_an_access_token_is_refused(typ: Any) -> None:
    """The header's `typ` is checked too (RFC 8725 §3.11): only "at+jwt" is an access token,
    however genuine the signature and claims."""
    header = {"kid": "k1"} if typ is None else {"kid": "k1", "typ": typ}
    token = forge(header, claims()) if typ is not None else sign(claims(), headers=header)
    assert rejected(token)


def test_each_token_gets_its_own_jti() -> None:
    """Two tokens issued at the same instant still have different ids (for the deny list)."""
    first = issue_access_token(SETTINGS, "user-1", [], NOW).claims.jti
    assert first != issue_access_token(SETTINGS, "user-1", [], NOW).claims.jti


def test_every_listed_kid_verifies_so_keys_can_rotate() -> None:
    """A token signed with the previous key still verifies after the active key changes."""
    before = make_settings({"k1": SECRET}, active="k1")
    after = make_settings({"k1": SECRET, "k2": OTHER_SECRET}, active="k2")
    old = issue_access_token(before, "user-1", [], NOW).token
    new = issue_access_token(after, "user-1", [], NOW).token
    assert jwt.get_unverified_header(new)["kid"] == "k2"
    assert verify_access_token(after, old, NOW).user_id == "user-1"
    assert verify_access_token(after, new, NOW).user_id == "user-1"


def test_a_retired_kid_no_longer_verifies() -> None:
    """Once a key is removed from the list, tokens signed with it are refused."""
    old = issue_access_token(make_settings({"k1": SECRET}), "user-1", [], NOW).token
    assert rejected(old, make_settings({"k2": OTHER_SECRET}, active="k2"))


def test_expiry_is_exact_against_the_given_clock() -> None:
    """Valid one second before `exp`, refused at `exp` and after."""
    token = issue_access_token(SETTINGS, "user-1", [], NOW).token
    assert verify_access_token(SETTINGS, token, NOW + timedelta(seconds=899))
    assert rejected(token, now=NOW + timedelta(seconds=900))
    assert rejected(token, now=NOW + timedelta(days=1))


def test_a_token_from_the_future_is_refused_beyond_the_clock_skew() -> None:
    """`nbf`/`iat` later than now (plus a few seconds of skew) means not yet valid."""
    token = issue_access_token(SETTINGS, "user-1", [], NOW).token
    assert verify_access_token(SETTINGS, token, NOW - timedelta(seconds=CLOCK_SKEW_SECONDS))
    assert rejected(token, now=NOW - timedelta(seconds=CLOCK_SKEW_SECONDS + 1))


def test_alg_none_is_refused() -> None:
    """An unsigned token (alg "none") is refused even with a valid kid and claims."""
    token = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{b64(claims())}."
    assert rejected(token)
    assert rejected(token + "c2ln")


def test_rs256_header_is_refused_whatever_the_signature() -> None:
    """HS/RS confusion: a header saying RS256 is refused, RSA-signed or HMAC-signed."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert rejected(sign(claims(), secret=private, algorithm="RS256"))  # type: ignore[arg-type]
    header = b64({"alg": "RS256", "typ": "JWT", "kid": "k1"})
    genuine = issue_access_token(SETTINGS, "user-1", [], NOW).token
    _, payload, signature = genuine.split(".")
    assert rejected(f"{header}.{payload}.{signature}")


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_refused(algorithm: str) -> None:
    """The algorithm list is fixed to HS256: a correctly keyed HS384/HS512 token is refused."""
    assert rejected(sign(claims(), algorithm=algorithm))


@pytest.mark.parametrize(
    "header",
    [
        {"kid": "nope"},
        {"kid": "../../etc/passwd"},
        {"kid": 7},
        {"kid": None},
        {"kid": ["k1"]},
        {"kid": {"$ne": None}},
        {},
    ],
    ids=["unknown", "path", "number", "null", "list", "operator", "missing"],
)
def test_unknown_missing_or_hostile_kid_is_refused(header: dict[str, Any]) -> None:
    """Only a string kid naming a configured key is used; anything else is refused."""
    assert verify_access_token(SETTINGS, forge({"kid": "k1"}, claims()), NOW)  # forge() is sound
    assert rejected(forge(header, claims()))


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": "someone-else"},
        {"aud": None},
        {"iss": "evil"},
        {"iss": None},
        {"typ": "refresh"},
        {"typ": None},
        {"sub": None},
        {"sub": ""},
        {"jti": None},
        {"exp": None},
        {"roles": "auditor"},
        {"roles": None},
        {"exp": True},
        {"exp": 10**30},
    ],
    ids=lambda changes: "-".join(f"{k}={v}" for k, v in changes.items()),
)
def test_wrong_or_missing_claims_are_refused(changes: dict[str, Any]) -> None:
    """A correctly signed token for another audience/issuer/type, or with bad claims, is refused."""
    assert rejected(sign(claims(**changes)))


def test_a_token_signed_with_another_secret_under_our_kid_is_refused() -> None:
    """Knowing a kid is not enough: the signature must come from that kid's secret."""
    assert rejected(sign(claims(), secret=OTHER_SECRET))


def test_a_tampered_payload_or_signature_is_refused() -> None:
    """Changing any part of a genuine token breaks it."""
    genuine = issue_access_token(SETTINGS, "user-1", [], NOW).token
    header, _, signature = genuine.split(".")
    forged = b64(claims(sub="admin", roles=["auditor"]))
    assert rejected(f"{header}.{forged}.{signature}")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert rejected(f"{header}.{genuine.split('.')[1]}.{flipped}")


@pytest.mark.parametrize(
    "token",
    [secrets.token_urlsafe(32), "", "a.b.c", "...", "Bearer x", "x" * 10_000],
    ids=["refresh-token", "empty", "dots", "only-dots", "scheme", "huge"],
)
def test_strings_that_are_not_jwts_are_refused(token: str) -> None:
    """An opaque refresh token (or any other non-JWT) used as an access token is refused."""
    assert rejected(token)
