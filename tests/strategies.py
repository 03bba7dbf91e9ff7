"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Any

from hypothesis import strategies as st
from pydantic import AwareDatetime

from taskflow.events.base import DomainEvent

zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
)
aware_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=zones
)


def strategy_for(annotation: Any) -> st.SearchStrategy[Any]:
    """Valid values for an event field, by its annotation (tz-aware datetimes for every time)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return strategy_for(args[0])
    if origin in (typing.Union, types.UnionType):
        return st.one_of([strategy_for(arg) for arg in args])
    if origin is tuple:
        return st.lists(strategy_for(args[0]), max_size=5).map(tuple)
    if annotation in (datetime, AwareDatetime):
        return aware_datetimes
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return st.sampled_from(annotation)
    return st.from_type(annotation)


def events_of(cls: type[DomainEvent]) -> st.SearchStrategy[DomainEvent]:
    """Instances of one event type with every field drawn from its annotation."""
    fields = {name: strategy_for(f.annotation) for name, f in cls.model_fields.items()}
    return st.fixed_dictionaries(fields).map(lambda kwargs: cls(**kwargs))
