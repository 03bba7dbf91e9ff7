"""Domain errors: a command broke a business rule (version conflicts live in the event store)."""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    """A command was refused by an aggregate; `code` is a stable machine name for the refusal."""

    code: ClassVar[str] = "domain_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TaskNotFoundError(DomainError):
    """The task does not exist (callers also use it for another owner's task, so as not to leak)."""

    code = "task_not_found"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} does not exist")
        self.task_id = task_id


class TaskAlreadyExistsError(DomainError):
    """A task with this id was already created."""

    code = "task_already_exists"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} already exists")
        self.task_id = task_id


class TaskDeletedError(DomainError):
    """The task is deleted, and a deleted task accepts only restore."""

    code = "task_deleted"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} is deleted; a deleted task accepts only restore")
        self.task_id = task_id


class TaskNotDeletedError(DomainError):
    """A restore was asked for a task that is not deleted."""

    code = "task_not_deleted"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} is not deleted, so it cannot be restored")
        self.task_id = task_id


class UserAlreadyRegisteredError(DomainError):
    """The user id, or the normalised e-mail address, is already registered."""

    code = "user_already_registered"

    def __init__(self, key: str) -> None:
        super().__init__(f"user {key!r} is already registered")
        self.key = key


class UserNotFoundError(DomainError):
    """The user does not exist."""

    code = "user_not_found"

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id!r} does not exist")
        self.user_id = user_id


class UserErasedError(DomainError):
    """The account was erased: it takes no command but another erasure (which changes nothing)."""

    code = "user_erased"

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id!r} is erased")
        self.user_id = user_id


class InvalidCommandError(DomainError):
    """A field breaks a domain rule that the command model's own validation cannot see."""

    code = "invalid_command"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
