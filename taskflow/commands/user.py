"""The user aggregate: its state, its commands, and the pure `decide`/`evolve` functions."""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

from taskflow.commands.errors import (
    InvalidCommandError,
    UserAlreadyRegisteredError,
    UserErasedError,
    UserNotFoundError,
)
from taskflow.events.task_values import EntityId, printable, trimmed
from taskflow.events.user_events import (
    UserErased,
    UserEvent,
    UserPasswordChanged,
    UserRegistered,
    UserRoleGranted,
)

__all__ = [
    "ChangePassword",
    "CredentialId",
    "DisplayName",
    "Email",
    "EraseUser",
    "GrantRole",
    "RegisterUser",
    "Role",
    "UserCommand",
    "UserState",
    "decide",
    "evolve",
    "fold",
    "normalize_email",
]

EMAIL_MAX = 254  # RFC 5321's limit on a forward path
DISPLAY_NAME_MAX = 100


# Control, format (zero-width space, soft hyphen, bidi marks), surrogate, private-use and
# unassigned code points: invisible or unstable, they would make look-alikes of an address.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def normalize_email(raw: str) -> str:
    """`raw` in NFKC, trimmed and lower-cased; InvalidCommandError(field="email") unless sane.

    NFKC folds compatibility look-alikes (full-width letters, ligatures) into one spelling, and
    invisible characters are refused rather than stripped, so `a@b.c` plus a zero-width space
    can be neither a second account nor a way into the first (docs/reliability.md D4).
    """
    email = unicodedata.normalize("NFKC", raw).strip().lower()
    local, _, domain = email.partition("@")
    labels = domain.split(".")
    if (
        len(email) > EMAIL_MAX
        or email.count("@") != 1
        or not local
        or len(labels) < 2
        or not all(labels)
        or any(ch.isspace() or unicodedata.category(ch) in _INVISIBLE_CATEGORIES for ch in email)
    ):
        raise InvalidCommandError("email", "is not a valid e-mail address")
    return email


def _email_field(raw: str) -> str:
    # Inside a pydantic model only ValueError becomes a ValidationError, so translate.
    try:
        return normalize_email(raw)
    except InvalidCommandError as exc:
        raise ValueError(exc.message) from exc


Email = Annotated[str, AfterValidator(_email_field)]
"""A normalised e-mail address (see `normalize_email`)."""

DisplayName = Annotated[str, printable(), trimmed(DISPLAY_NAME_MAX)]
"""A display name: surrounding whitespace trimmed, 1 to 100 characters left."""

CredentialId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
"""The id of a stored password hash (taskflow/auth/credentials.py); never the hash itself."""

Role = Literal["auditor"]
"""The roles that can be granted."""


class UserState(BaseModel):
    """A user account as its events describe it; `version` counts the events folded into it.

    An erased account keeps its id, roles and times; its e-mail and name are "".
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str
    email: str
    display_name: str
    credential_id: str
    roles: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    version: int
    erased: bool = False


class _UserCommand(BaseModel):
    """An intention aimed at one user account."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: EntityId


class RegisterUser(_UserCommand):
    """Create an account (the handler reserves the e-mail address and stores the credential)."""

    email: Email
    display_name: DisplayName
    credential_id: CredentialId


class ChangePassword(_UserCommand):
    """Make the stored credential `credential_id` the account's password."""

    credential_id: CredentialId


class GrantRole(_UserCommand):
    """Give the account a role."""

    role: Role


class EraseUser(_UserCommand):
    """Forget the account's personal data (the handler destroys its data key)."""


UserCommand = RegisterUser | ChangePassword | GrantRole | EraseUser


def decide(state: UserState | None, command: UserCommand, now: datetime) -> list[UserEvent]:
    """The events that `command` causes on `state` at `now`; a DomainError if it is refused."""
    if isinstance(command, RegisterUser):
        if state is not None:
            raise UserAlreadyRegisteredError(command.user_id)
        return [UserRegistered(occurred_at=now, **command.model_dump())]
    if state is None:
        raise UserNotFoundError(command.user_id)
    if command.user_id != state.user_id:
        raise InvalidCommandError("user_id", "does not match the user the command was sent to")
    if isinstance(command, EraseUser):
        return [] if state.erased else [UserErased(user_id=state.user_id, occurred_at=now)]
    if state.erased:
        raise UserErasedError(state.user_id)
    if isinstance(command, ChangePassword):
        return _change_password(state, command, now)
    return _grant(state, command, now)


def _change_password(state: UserState, command: ChangePassword, now: datetime) -> list[UserEvent]:
    if command.credential_id == state.credential_id:
        return []
    return [
        UserPasswordChanged(
            user_id=state.user_id, occurred_at=now, credential_id=command.credential_id
        )
    ]


def _grant(state: UserState, command: GrantRole, now: datetime) -> list[UserEvent]:
    if command.role in state.roles:
        return []
    return [UserRoleGranted(user_id=state.user_id, occurred_at=now, role=command.role)]


def evolve(state: UserState | None, event: UserEvent) -> UserState:
    """The state after `event`; ValueError for an event that cannot follow `state`."""
    if isinstance(event, UserRegistered):
        return _registered(state, event)
    if state is None:
        raise ValueError(f"{event.event_type} cannot come before UserRegistered")
    update = {**_changes(state, event), "updated_at": event.occurred_at}
    return state.model_copy(update={**update, "version": state.version + 1})


def _registered(state: UserState | None, event: UserRegistered) -> UserState:
    if state is not None:
        raise ValueError(f"user {event.user_id!r} is registered twice")
    return UserState(
        **event.model_dump(exclude={"occurred_at"}),
        roles=(),
        created_at=event.occurred_at,
        updated_at=event.occurred_at,
        version=1,
    )


def _changes(state: UserState, event: UserEvent) -> dict[str, Any]:
    """The fields that `event` sets on `state`."""
    match event:
        case UserPasswordChanged(credential_id=credential_id):
            return {"credential_id": credential_id}
        case UserRoleGranted(role=role):
            return {"roles": state.roles if role in state.roles else (*state.roles, role)}
        case UserErased():
            return {"erased": True, "email": "", "display_name": ""}
    raise TypeError(f"the user aggregate does not know {type(event).__name__}")


def fold(events: Iterable[UserEvent], state: UserState | None = None) -> UserState | None:
    """The state after `events`, starting from `state` (None, or a snapshot)."""
    return functools.reduce(evolve, events, state)
