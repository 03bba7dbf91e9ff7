"""Auth endpoints (being written)."""

from __future__ import annotations

from aiohttp import web


def setup_auth_routes(app: web.Application) -> None:
    """Register /api/auth/* routes."""
