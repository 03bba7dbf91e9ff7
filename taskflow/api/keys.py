"""Typed application keys, declared in one place."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from taskflow.auth.denylist import DenyList
from taskflow.auth.stream_tickets import StreamTickets
from taskflow.bootstrap import Services
from taskflow.projections.feed_hub import ChangeHub
from taskflow.projections.task_queries import TaskReads
from taskflow.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
TASK_READS = web.AppKey("task_reads", TaskReads)
DENY_LIST = web.AppKey("deny_list", DenyList)
RATE_LIMITS: web.AppKey[RateLimits | None] = web.AppKey("rate_limits")
INDEXES_READY = web.AppKey("indexes_ready", asyncio.Event)
CHANGE_HUB = web.AppKey("change_hub", ChangeHub)
STREAM_TICKETS = web.AppKey("stream_tickets", StreamTickets)
REQUEST_ID = web.RequestKey("request_id", str)
CORRELATION_ID = web.RequestKey("correlation_id", str)

if TYPE_CHECKING:
    from taskflow.api.rate_limits import RateLimits
