"""Typed application keys, declared in one place (but RATE_LIMITS, beside its middleware in
rate_limits.py, which reads it: declared here, its type would make the two modules a cycle)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from taskflow.auth.denylist import DenyList
from taskflow.auth.stream_tickets import StreamTickets
from taskflow.projections.feed_hub import ChangeHub
from taskflow.projections.task_queries import TaskReads
from taskflow.services import Services
from taskflow.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
TASK_READS = web.AppKey("task_reads", TaskReads)
DENY_LIST = web.AppKey("deny_list", DenyList)
INDEXES_READY = web.AppKey("indexes_ready", asyncio.Event)
CHANGE_HUB = web.AppKey("change_hub", ChangeHub)
STREAM_TICKETS = web.AppKey("stream_tickets", StreamTickets)
REQUEST_ID = web.RequestKey("request_id", str)
CORRELATION_ID = web.RequestKey("correlation_id", str)
