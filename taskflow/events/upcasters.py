"""Upcasters: functions that lift an old stored payload to the next schema version, forever."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]

_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register `fn` as the step from `from_version` to `from_version + 1` of `event_type`."""

    def register(fn: Upcaster) -> Upcaster:
        key = (event_type, from_version)
        if key in _UPCASTERS:
            raise ValueError(f"upcaster for {event_type} v{from_version} is registered twice")
        _UPCASTERS[key] = fn
        return fn

    return register


def upcast(event_type: str, version: int, target: int, data: Payload) -> Payload:
    """Run `data` through every step from `version` up to `target`."""
    while version < target:
        step = _UPCASTERS.get((event_type, version))
        if step is None:
            raise LookupError(f"no upcaster for {event_type} from schema version {version}")
        data = step(dict(data))
        version += 1
    if version > target:
        raise LookupError(f"{event_type} v{version} is newer than this code knows (v{target})")
    return data
