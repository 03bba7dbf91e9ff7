"""User command handlers (register, change password) and the user look-ups login needs.

E-mail uniqueness is a set-wide rule the user aggregate cannot check alone (docs/design.md): the
normalised address is reserved by a unique `_id` insert into `email_reservations` before
UserRegistered is appended, and the log's unique stream version (a commit's `_id`) decides
between registrations that reuse an orphaned reservation. The reservation's `_id` is a keyed
hash (HMAC-SHA-256 under EMAIL_HASH_KEY) of the normalised address, never the address
(docs/privacy.md); so is the Redis cache of it. Password hashes live in `credentials`
(taskflow/auth/credentials.py), named by the user's events.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pymongo import ReadPreference, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from taskflow import names
from taskflow.auth.credentials import Credentials, is_legacy
from taskflow.auth.passwords import (
    PasswordHashing,
    WeakPasswordError,
    check_new_password,
)
from taskflow.auth.throttle import AccountThrottle
from taskflow.commands.aggregates import USER
from taskflow.commands.errors import InvalidCommandError, UserAlreadyRegisteredError
from taskflow.commands.runner import Context, Outcome, PreconditionFailedError, execute, load
from taskflow.commands.user import ChangePassword, RegisterUser, UserState, normalize_email
from taskflow.events.store import ConcurrencyError, EventStore
from taskflow.settings import Settings

Document = dict[str, Any]
Clock = Callable[[], datetime]
IdFactory = Callable[[], str]
log = structlog.get_logger(__name__)

# A reservation whose user stream is still empty this long after it was made belongs to a
# registration that crashed between reserving and appending; a younger one is still in flight.
ORPHAN_AFTER = timedelta(seconds=30)
EMAIL_CACHE_SECONDS = 24 * 3600


class EmailTakenError(Exception):
    """The normalised e-mail address belongs to another account (or a registration in flight)."""

    def __init__(self) -> None:
        super().__init__("this e-mail address is already registered")


@dataclass(frozen=True)
class Accounts:
    """What the user handlers work with: the log, the auth collections, Redis, the e-mail key."""

    store: EventStore
    db: AsyncDatabase[Document]
    redis: Redis
    credentials: Credentials
    email_key: bytes
    throttle: AccountThrottle
    passwords: PasswordHashing

    @classmethod
    def create(
        cls, store: EventStore, db: AsyncDatabase[Document], redis: Redis, settings: Settings
    ) -> Accounts:
        key = settings.email_hash_key.get_secret_value().encode()
        throttle = AccountThrottle(
            redis, settings.login_free_failures, settings.login_backoff_cap_seconds
        )
        passwords = PasswordHashing.from_settings(settings)
        return cls(store, db, redis, Credentials(db), key, throttle, passwords)

    def email_digest(self, normalized: str) -> str:
        """The keyed hash an address is reserved and looked up by."""
        return hmac.new(self.email_key, normalized.encode(), hashlib.sha256).hexdigest()


class InvalidCredentialsError(Exception):
    """Wrong e-mail or password: deliberately one error for both."""


@dataclass(frozen=True)
class Trace:
    """The request a command comes from, for commit metadata once the actor is known."""

    request_id: str
    correlation_id: str

    def context(self, actor: str) -> Context:
        return Context(actor=actor, request_id=self.request_id, correlation_id=self.correlation_id)


@dataclass(frozen=True)
class _Reservation:
    digest: str
    user_id: str
    reserved_at: datetime
    owned: bool  # made by this registration, which may therefore release it


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_user_id() -> str:
    return uuid.uuid4().hex


async def handle_register_user(
    accounts: Accounts,
    *,
    email: str,
    display_name: str,
    password: str,
    trace: Trace,
    clock: Clock = utc_now,
    ids: IdFactory = new_user_id,
    orphan_after: timedelta = ORPHAN_AFTER,
) -> Outcome[UserState]:
    """Register an account; EmailTakenError if the normalised e-mail is registered already."""
    await _check_policy(password, email=_normalized_or_raw(email), display_name=display_name)
    store = accounts.store
    user_id = ids()
    # The hash is stored before the event that names it, so no event names a missing one.
    password_hash = await accounts.passwords.hash(password)
    credential_id = await accounts.credentials.add(user_id, password_hash)
    command = RegisterUser(
        user_id=user_id, email=email, display_name=display_name, credential_id=credential_id
    )
    reservations = _reservations(accounts.db)
    try:
        reservation = await _reserve(
            store,
            reservations,
            accounts.email_digest(command.email),
            user_id,
            clock(),
            orphan_after,
        )
    except EmailTakenError:
        await accounts.credentials.discard(credential_id)
        raise
    command = command.model_copy(update={"user_id": reservation.user_id})
    try:
        return await execute(
            store,
            USER,
            reservation.user_id,
            command,
            trace.context(reservation.user_id),
            clock(),
            expected_version=0,
            new_stream=True,  # no log read: the unique version key decides between registrations
        )
    except (PreconditionFailedError, UserAlreadyRegisteredError, ConcurrencyError):
        await accounts.credentials.discard(credential_id)
        raise EmailTakenError() from None  # another registration won the user id
    except Exception:
        await accounts.credentials.discard(credential_id)
        if reservation.owned:
            await _release(store, reservations, reservation, clock(), orphan_after)
        raise


async def handle_change_password(
    accounts: Accounts,
    *,
    user_id: str,
    current_password: str,
    new_password: str,
    context: Context,
    clock: Clock = utc_now,
) -> Outcome[UserState]:
    """Replace the password after checking the current one; InvalidCredentialsError if wrong."""
    state, version = await load(accounts.store, USER, USER.stream_id(user_id))
    if state is None:
        raise InvalidCredentialsError("wrong password")
    await check_password(accounts, state, current_password, clock())
    await _check_policy(new_password, email=state.email, display_name=state.display_name)
    new_hash = await accounts.passwords.hash(new_password)
    credential_id = await accounts.credentials.add(user_id, new_hash)
    command = ChangePassword(user_id=user_id, credential_id=credential_id)
    try:
        # Pinned to the version the current password was checked against: a concurrent change
        # wins, and the credential this one stored is never named.
        return await execute(
            accounts.store, USER, user_id, command, context, clock(), expected_version=version
        )
    except Exception:
        await accounts.credentials.discard(credential_id)
        raise


async def load_user(store: EventStore, user_id: str) -> UserState | None:
    """The account's current state (cached snapshot first), or None if it does not exist."""
    state, _ = await load(store, USER, USER.stream_id(user_id))
    return state


async def find_user_by_email(accounts: Accounts, email: str) -> UserState | None:
    """The account registered under `email` (any spelling of it), or None."""
    try:
        normalized = normalize_email(email)
    except InvalidCommandError:
        return None
    digest = accounts.email_digest(normalized)
    key = names.email_user_key(digest)
    cached = await accounts.redis.get(key)
    user_id = (
        _text(cached)
        if cached is not None
        else await _reserved_user(accounts.db, digest, normalized)
    )
    user = None if user_id is None else await load_user(accounts.store, user_id)
    if user is not None and user.erased:
        return None
    if user is not None and cached is None:
        # Safe to cache for long: a reservation is released only while its stream is empty,
        # or by an erasure, which deletes this entry too.
        await accounts.redis.set(key, user.user_id, ex=EMAIL_CACHE_SECONDS)
    return user


async def authenticate_user(
    accounts: Accounts, email: str, password: str, now: datetime | None = None
) -> UserState:
    """The account whose e-mail and password these are; InvalidCredentialsError otherwise, and
    AccountThrottledError while the account must wait (taskflow/auth/throttle.py)."""
    account = accounts.email_digest(_normalized_or_raw(email))
    await accounts.throttle.attempt(account, now or utc_now())  # known account or not
    user = await find_user_by_email(accounts, email)
    if user is None:
        # So an unknown e-mail takes as long as a wrong password.
        await accounts.passwords.verify_dummy(password)
        raise InvalidCredentialsError("wrong e-mail or password")
    if not await password_matches(accounts, user, password):
        raise InvalidCredentialsError("wrong e-mail or password")
    await accounts.throttle.succeeded(account)
    return user


async def check_password(
    accounts: Accounts, user: UserState, password: str, now: datetime | None = None
) -> None:
    """InvalidCredentialsError unless `password` is the user's, throttled as logins are (a
    stolen access token must not make a way around the login's limits)."""
    account = f"user:{user.user_id}"
    await accounts.throttle.attempt(account, now or utc_now())
    if not await password_matches(accounts, user, password):
        raise InvalidCredentialsError("wrong password")
    await accounts.throttle.succeeded(account)


async def password_matches(accounts: Accounts, user: UserState, password: str) -> bool:
    """Whether `password` is the user's current one (its hash read from `credentials`)."""
    password_hash = await accounts.credentials.hash_of(user.credential_id)
    if password_hash is None and is_legacy(user.credential_id):
        # Registered before hashes left the log: file them under their legacy ids, once.
        stored = await accounts.store.read_stored(USER.stream_id(user.user_id))
        await accounts.credentials.adopt_legacy(user.user_id, stored)
        password_hash = await accounts.credentials.hash_of(user.credential_id)
    if password_hash is None:
        await accounts.passwords.verify_dummy(password)
        return False
    return await accounts.passwords.verify(password_hash, password)


async def _reserve(
    store: EventStore,
    reservations: AsyncCollection[Document],
    digest: str,
    user_id: str,
    now: datetime,
    orphan_after: timedelta,
) -> _Reservation:
    """Reserve the address (by its digest) for `user_id`, or take over an orphaned reservation."""
    for _ in range(2):  # a second try only if a failed registration released it meanwhile
        try:
            await reservations.insert_one({"_id": digest, "user_id": user_id, "reserved_at": now})
            return _Reservation(digest, user_id, now, owned=True)
        except DuplicateKeyError:
            held = await reservations.find_one({"_id": digest})
        if held is not None:
            return await _orphan(store, held, now, orphan_after)
    raise EmailTakenError()


async def _orphan(
    store: EventStore, held: Document, now: datetime, orphan_after: timedelta
) -> _Reservation:
    """The held reservation, if its registration never appended; EmailTakenError otherwise."""
    # A reservation without a time (written by hand, say) is treated as an old one.
    reserved_at = _utc(held.get("reserved_at") or datetime.min)
    _, version = await load(store, USER, USER.stream_id(held["user_id"]))
    if version > 0 or now - reserved_at < orphan_after:
        raise EmailTakenError()
    return _Reservation(held["_id"], held["user_id"], reserved_at, owned=False)


async def _release(
    store: EventStore,
    reservations: AsyncCollection[Document],
    reservation: _Reservation,
    now: datetime,
    orphan_after: timedelta,
) -> None:
    """Give back the e-mail of a failed registration while nobody else may be reusing it."""
    if now - reservation.reserved_at >= orphan_after / 2:
        return  # others may take it over by now; it stays an orphan, reusable later
    try:
        _, version = await load(store, USER, USER.stream_id(reservation.user_id), fresh=True)
        if version == 0:
            await reservations.delete_one(
                {"_id": reservation.digest, "user_id": reservation.user_id}
            )
    except Exception as exc:  # the original failure matters more; an orphan is reusable anyway
        log.warning("email_reservation_not_released", error=repr(exc))


async def _reserved_user(db: AsyncDatabase[Document], digest: str, email: str) -> str | None:
    held = await _reservations(db).find_one({"_id": digest})
    if held is None:
        # Reserved before addresses were hashed, and `taskflow audit rewrite-legacy` has not
        # re-keyed it yet (one more read for an unknown address until it has).
        held = await _reservations(db).find_one({"_id": email})
    return None if held is None else str(held["user_id"])


def reservations_of(db: AsyncDatabase[Document]) -> AsyncCollection[Document]:
    """The e-mail reservations (for erasure, which frees an address, and the legacy rewrite)."""
    return _reservations(db)


def _reservations(db: AsyncDatabase[Document]) -> AsyncCollection[Document]:
    return db.get_collection(
        names.EMAIL_RESERVATIONS,
        write_concern=WriteConcern("majority", j=True),
        read_preference=ReadPreference.PRIMARY,
    )


async def _check_policy(password: str, *, email: str, display_name: str) -> None:
    try:
        await check_new_password(password, email=email, display_name=display_name)
    except WeakPasswordError as exc:
        raise InvalidCommandError("password", str(exc)) from None


def _normalized_or_raw(email: str) -> str:
    """The normalised address, or (not an address at all) the text as typed, folded."""
    try:
        return normalize_email(email)
    except InvalidCommandError:
        return email.strip().casefold()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _utc(moment: datetime) -> datetime:
    """BSON dates are UTC; a client opened without tz_aware hands them back naive."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
