"""Property tests of the pure user aggregate and of e-mail normalisation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from taskflow.commands.errors import (
    DomainError,
    InvalidCommandError,
    UserAlreadyRegisteredError,
    UserErasedError,
    UserNotFoundError,
)
from taskflow.commands.user import (
    EMAIL_MAX,
    ChangePassword,
    EraseUser,
    GrantRole,
    RegisterUser,
    UserCommand,
    UserState,
    decide,
    evolve,
    fold,
    normalize_email,
)
from taskflow.events.user_events import UserErased, UserEvent, UserPasswordChanged

USER_ID = "user-1"
START = datetime(2025, 1, 1, tzinfo=UTC)

labels = st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True)
emails = st.builds(
    lambda local, host, tld, pad: f"{pad}{local}@{host}.{tld}{pad}",
    st.from_regex(r"[A-Za-z0-9._+-]{1,30}", fullmatch=True),
    labels,
    labels,
    st.sampled_from(["", " ", "\t"]),
)
# Display names hold no control or bidi characters (task_values.printable).
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
display_names = st.text(
    st.characters(exclude_categories=["Cc", "Cs"], exclude_characters=BIDI),
    min_size=1,
    max_size=100,
).filter(str.strip)
credentials = st.sampled_from(["cred-a", "cred-b", "cred-c"])
registrations = st.builds(
    RegisterUser,
    user_id=st.just(USER_ID),
    email=emails,
    display_name=display_names,
    credential_id=credentials,
)
commands: st.SearchStrategy[UserCommand] = st.one_of(
    st.builds(ChangePassword, user_id=st.just(USER_ID), credential_id=credentials),
    st.just(GrantRole(user_id=USER_ID, role="auditor")),
    st.just(EraseUser(user_id=USER_ID)),
    registrations,
)


def _registered(command: RegisterUser) -> UserState:
    state = fold(decide(None, command, START))
    assert state is not None
    return state


def _check_invariants(state: UserState, events: list[UserEvent]) -> None:
    assert fold(events) == state
    assert state.version == len(events)
    if state.erased:  # nothing personal is left in an erased account's state
        assert (state.email, state.display_name) == ("", "")
    else:
        assert state.email == normalize_email(state.email)
        assert 1 <= len(state.display_name) <= 100
    assert len(set(state.roles)) == len(state.roles)
    assert state.created_at <= state.updated_at
    # No event carries a credential, only the id of one (taskflow/auth/credentials.py).
    assert all("password_hash" not in e.model_dump() for e in events)


@given(first=registrations, rest=st.lists(commands, max_size=10))
def test_any_command_sequence_folds_and_keeps_invariants(
    first: RegisterUser, rest: list[UserCommand]
) -> None:
    """Only a second registration is refused; every state reached is valid and counts its events."""
    state: UserState | None = None
    events: list[UserEvent] = []
    for step, command in enumerate([first, *rest]):
        if state is not None and isinstance(command, RegisterUser):
            with pytest.raises(UserAlreadyRegisteredError):
                decide(state, command, START)
            continue
        if state is not None and state.erased and not isinstance(command, EraseUser):
            with pytest.raises(UserErasedError):
                decide(state, command, START)
            continue
        new_events = decide(state, command, START + timedelta(minutes=step))
        events += new_events
        state = fold(new_events, state)
        assert state is not None
        _check_invariants(state, events)


@given(command=registrations)
def test_registration_folds_to_the_commanded_values(command: RegisterUser) -> None:
    """A registered user has the command's normalised e-mail, name and credential, no roles."""
    state = _registered(command)
    assert state.model_dump(include=set(RegisterUser.model_fields)) == command.model_dump()
    assert (state.roles, state.version, state.created_at) == ((), 1, START)
    assert state.email == state.email.strip().lower()


@given(register=registrations, credential_id=credentials)
def test_changing_the_password_folds_to_the_new_credential(
    register: RegisterUser, credential_id: str
) -> None:
    """After a password change the state names the new credential; the same one is a no-op."""
    command = ChangePassword(user_id=USER_ID, credential_id=credential_id)
    before = _registered(register)
    after = fold(decide(before, command, START), before)
    assert after is not None
    assert after.credential_id == credential_id
    assert decide(after, command, START) == []


@given(register=registrations, rest=st.lists(commands, max_size=5))
def test_erasure_forgets_the_personal_data_and_is_final(
    register: RegisterUser, rest: list[UserCommand]
) -> None:
    """Erasing leaves no e-mail or name in the state; a second erasure is a no-op, and every
    other command is refused."""
    before = _registered(register)
    events = decide(before, EraseUser(user_id=USER_ID), START)
    assert [type(e) for e in events] == [UserErased]
    erased = fold(events, before)
    assert erased is not None
    assert (erased.erased, erased.email, erased.display_name) == (True, "", "")
    assert decide(erased, EraseUser(user_id=USER_ID), START) == []
    for command in rest:
        if isinstance(command, EraseUser):
            continue
        with pytest.raises((UserErasedError, UserAlreadyRegisteredError)):
            decide(erased, command, START)


@given(register=registrations)
def test_granting_a_held_role_is_a_no_op(register: RegisterUser) -> None:
    """The first grant adds the role; granting it again yields no events."""
    grant = GrantRole(user_id=USER_ID, role="auditor")
    before = _registered(register)
    after = fold(decide(before, grant, START), before)
    assert after is not None
    assert after.roles == ("auditor",)
    assert decide(after, grant, START) == []


@pytest.mark.parametrize(
    "command",
    [
        ChangePassword(user_id=USER_ID, credential_id="c"),
        GrantRole(user_id=USER_ID, role="auditor"),
        EraseUser(user_id=USER_ID),
    ],
)
def test_commands_on_a_missing_user_are_refused(command: UserCommand) -> None:
    """Anything but a registration on a user that does not exist raises UserNotFoundError."""
    with pytest.raises(UserNotFoundError):
        decide(None, command, START)


def test_a_role_outside_the_known_set_is_invalid() -> None:
    """Only known roles can be granted; anything else fails validation."""
    with pytest.raises(ValidationError):
        GrantRole.model_validate({"user_id": USER_ID, "role": "admin"})


def test_evolve_refuses_an_impossible_history() -> None:
    """An event before UserRegistered is a corrupt stream, not something to fold silently."""
    with pytest.raises(ValueError, match="before UserRegistered"):
        evolve(None, UserPasswordChanged(user_id=USER_ID, occurred_at=START, credential_id="c"))


@given(raw=emails)
def test_email_normalisation_is_idempotent(raw: str) -> None:
    """A normalised address is trimmed, lower case, and normalises to itself."""
    email = normalize_email(raw)
    assert email == raw.strip().lower()
    assert normalize_email(email) == email


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "plain",
        "@example.com",
        "a@",
        "a@localhost",
        "a@b@example.com",
        "a@example..com",
        "a@.example.com",
        "a b@example.com",
        f"{'a' * EMAIL_MAX}@example.com",
    ],
)
def test_malformed_emails_are_refused(raw: str) -> None:
    """An address without the basic local@domain.tld shape raises InvalidCommandError on email."""
    with pytest.raises(InvalidCommandError) as caught:
        normalize_email(raw)
    assert caught.value.field == "email"
    assert isinstance(caught.value, DomainError)


def test_register_user_rejects_a_malformed_email_as_validation() -> None:
    """Inside the command model a bad address is an ordinary pydantic validation error."""
    with pytest.raises(ValidationError, match="not a valid e-mail"):
        RegisterUser(user_id=USER_ID, email="nope", display_name="N", credential_id="c")
