"""The task view: what read models store for one task, folded from its commits."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from taskflow.commands.aggregates import TASK
from taskflow.commands.task import TaskState
from taskflow.events.codec import decode_events
from taskflow.events.records import Commit
from taskflow.events.sealing import erased_subject
from taskflow.events.store import EventStore
from taskflow.events.task_events import TaskEvent

_WORD = re.compile(r"\w+")
MAX_TERMS = 512


TaskHistory = Callable[[str, int], Awaitable[TaskState | None]]
"""A task's state folded from the log up to a version: how a read model repairs a view."""


class ProjectionGapError(Exception):
    """A commit does not follow the version its view reflects: the read model is inconsistent."""


def log_history(store: EventStore) -> TaskHistory:
    """Repairs read from the log itself (one stream: on FerretDB a scan, so only when needed)."""

    async def folded(task_id: str, version: int) -> TaskState | None:
        return TASK.fold(await store.read_stream(TASK.stream_id(task_id), to_version=version))

    return folded


def apply_commit(view: TaskState | None, commit: Commit) -> TaskState | None:
    """The view after `commit`; unchanged when the view already reflects it (replay-safe)."""
    version = view.version if view is not None else 0
    if commit.last_version <= version:
        return view
    if commit.first_version != version + 1:
        raise ProjectionGapError(
            f"{commit.stream_id}: commit {commit.first_version} after view version {version}"
        )
    for event in decode_events(commit):
        assert isinstance(event, TaskEvent)
        view = TASK.evolve(view, event)
    return view


async def apply_or_repair(
    view: TaskState | None, commit: Commit, history: TaskHistory | None
) -> TaskState | None:
    """`apply_commit`, but a view found behind the log is first re-folded from the log.

    A stored view can be behind its checkpoint only after a fault: a superseded holder's write
    that slipped past the fence (docs/concurrency.md), a view lost or purged. Re-folding the
    one stream repairs it; without `history` (tests) the gap is raised.
    """
    try:
        return apply_commit(view, commit)
    except ProjectionGapError:
        if history is None:
            raise
    repaired = await history(task_id_of(commit), commit.first_version - 1)
    return apply_commit(repaired, commit)


def task_id_of(commit: Commit) -> str:
    return TASK.entity_id(commit.stream_id)


def erased_owner(commit: Commit) -> str | None:
    """The user whose erasure `commit` records (a UserErased of a user stream), if any."""
    if commit.is_gap or not commit.stream_id.startswith("user-"):
        return None
    return next((user for e in commit.events if (user := erased_subject(e))), None)


def without_personal_data(view: TaskState) -> TaskState:
    """The view of an erased owner's task: what the log folds to once the owner's key is gone
    (personal fields erased: "" and ()), everything else as it was (docs/privacy.md)."""
    return view.model_copy(update={"title": "", "description": "", "tags": ()})


def tokenize(text: str) -> list[str]:
    """Search tokens: NFKC, case-folded words, the same on both sides of a search."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def search_terms(view: TaskState) -> list[str]:
    """The distinct terms a task is found by: words of its title, description and tags."""
    words = tokenize(f"{view.title} {view.description} {' '.join(view.tags)}")
    return list(dict.fromkeys([*words, *view.tags]))[:MAX_TERMS]


def found_by_prefixes(terms: Iterable[str], words: Iterable[str]) -> bool:
    """Whether every word begins one of `terms` (search as you type: "rep" finds "report")."""
    kept = list(terms)
    return all(any(term.startswith(word) for term in kept) for word in words)


def view_document(view: TaskState) -> dict[str, Any]:
    """The MongoDB read-model document of a task (queried by owner, status, dates, tags, terms)."""
    doc = view.model_dump()
    doc["_id"] = doc.pop("task_id")
    doc["terms"] = search_terms(view)
    return doc


def view_from_document(doc: dict[str, Any]) -> TaskState:
    fields = {k: v for k, v in doc.items() if k not in {"_id", "terms", "priority_rank"}}
    return TaskState.model_validate({**fields, "task_id": doc["_id"]})
