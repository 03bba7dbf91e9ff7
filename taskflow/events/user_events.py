"""The events of the user aggregate, each under a stable type name."""

from __future__ import annotations

from taskflow.events.base import DomainEvent, register_event
from taskflow.events.task_values import UtcDatetime

# Plain `str` payloads for the same reason as in `task_events`: stored facts outlive input rules.


class UserEvent(DomainEvent):
    """Something that happened to one user account, at `occurred_at` (UTC)."""

    user_id: str
    occurred_at: UtcDatetime


@register_event
class UserRegistered(UserEvent):
    """An account was created; `email` is already normalised, `password_hash` never a password."""

    event_type = "UserRegistered"

    email: str
    display_name: str
    password_hash: str


@register_event
class UserPasswordChanged(UserEvent):
    """The account's password hash was replaced."""

    event_type = "UserPasswordChanged"

    password_hash: str


@register_event
class UserRoleGranted(UserEvent):
    """The account gained a role."""

    event_type = "UserRoleGranted"

    role: str
