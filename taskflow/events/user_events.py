"""The events of the user aggregate, each under a stable type name.

No event holds a credential: the password hash lives in its own collection
(taskflow/auth/credentials.py) and events name it by `credential_id` only. Schema version 1 of
UserRegistered and UserPasswordChanged carried the hash; their upcasters drop it on every read,
and `taskflow audit rewrite-legacy` removes it from the stored log (docs/privacy.md).
"""

from __future__ import annotations

from typing import Any

from taskflow.events.base import DomainEvent, register_event
from taskflow.events.task_values import UtcDatetime
from taskflow.events.upcasters import upcaster

# Plain `str` payloads for the same reason as in `task_events`: stored facts outlive input rules.

LEGACY_CREDENTIAL_PREFIX = "legacy:"


class UserEvent(DomainEvent):
    """Something that happened to one user account, at `occurred_at` (UTC)."""

    user_id: str
    occurred_at: UtcDatetime


@register_event
class UserRegistered(UserEvent):
    """An account was created; `email` is already normalised."""

    event_type = "UserRegistered"
    schema_version = 2
    personal_fields = ("email", "display_name")

    email: str
    display_name: str
    credential_id: str


@register_event
class UserPasswordChanged(UserEvent):
    """The account's password was replaced by the credential `credential_id`."""

    event_type = "UserPasswordChanged"
    schema_version = 2

    credential_id: str


@register_event
class UserRoleGranted(UserEvent):
    """The account gained a role."""

    event_type = "UserRoleGranted"

    role: str


@register_event
class UserErased(UserEvent):
    """The account was erased: its data key destroyed, so its personal data reads as erased."""

    event_type = "UserErased"
    erases_subject = True


def legacy_credential_id(payload: dict[str, Any]) -> str:
    """The credential a version-1 event's hash is filed under once moved out of the log.

    Derived from the payload alone (an upcaster sees nothing else), so every reader, the login
    that moves the hash and the rewrite of the log agree on it.
    """
    return f"{LEGACY_CREDENTIAL_PREFIX}{payload['user_id']}:{payload['occurred_at']}"


@upcaster("UserRegistered", 1)
def _registered_without_hash(data: dict[str, Any]) -> dict[str, Any]:
    data.pop("password_hash", None)
    data["credential_id"] = legacy_credential_id(data)
    return data


@upcaster("UserPasswordChanged", 1)
def _password_changed_without_hash(data: dict[str, Any]) -> dict[str, Any]:
    data.pop("password_hash", None)
    data["credential_id"] = legacy_credential_id(data)
    return data
