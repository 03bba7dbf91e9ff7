"""The projector worker process (`taskflow project`)."""

from __future__ import annotations

import asyncio
import signal

import structlog

from taskflow.bootstrap import open_services
from taskflow.settings import Settings

log = structlog.get_logger(__name__)


async def run_worker(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_services(settings):
        log.info("projector_started")
        await stop.wait()
    log.info("projector_stopped")
