"""How refusals from the command side and the event store read over HTTP."""

from __future__ import annotations

from taskflow.api.middlewares import register_problem_mapper
from taskflow.api.problems import Problem
from taskflow.commands import errors
from taskflow.commands.runner import PreconditionFailedError
from taskflow.events.mongo_store import PositionUnavailableError
from taskflow.events.store import ConcurrencyError, IdempotencyKeyReusedError

_DOMAIN: dict[type[errors.DomainError], tuple[int, str]] = {
    errors.TaskNotFoundError: (404, "Task not found"),
    errors.UserNotFoundError: (404, "User not found"),
    errors.TaskAlreadyExistsError: (409, "Task already exists"),
    errors.TaskDeletedError: (409, "Task is deleted"),
    errors.TaskNotDeletedError: (409, "Task is not deleted"),
    errors.UserAlreadyRegisteredError: (409, "Already registered"),
    errors.UserErasedError: (410, "Account erased"),
    errors.InvalidCommandError: (422, "The request is not valid"),
}


@register_problem_mapper
def command_problem(exc: Exception) -> Problem | None:
    if isinstance(exc, errors.DomainError):
        status, title = _DOMAIN.get(type(exc), (422, "Command refused"))
        slug = exc.code.replace("_", "-")
        if isinstance(exc, errors.InvalidCommandError):
            return Problem(status, slug, title, exc.message, field=exc.field)
        return Problem(status, slug, title, exc.message)
    if isinstance(exc, PreconditionFailedError):
        return Problem(
            412,
            "precondition-failed",
            "Precondition failed",
            f"The task is at version {exc.current}, not {exc.expected}; reload and retry.",
            headers={"ETag": f'"{exc.current}"'},
            current_version=exc.current,
        )
    if isinstance(exc, ConcurrencyError):
        return Problem(
            409,
            "conflict",
            "Concurrent modification",
            "Another change landed first; retry.",
            current_version=exc.actual,
        )
    if isinstance(exc, PositionUnavailableError):
        # Every position this append took was sealed first (readers sealing holes of a stalled
        # writer): nothing was stored, so a retry is safe (docs/reliability.md, 503 on a write).
        return Problem(
            503,
            "service-unavailable",
            "A backing service is unavailable",
            "The log could not place this write in time; nothing was stored. Try again shortly.",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, IdempotencyKeyReusedError):
        return Problem(
            422,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            "This Idempotency-Key was already used with a different request.",
        )
    return None
