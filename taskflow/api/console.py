"""The web console: the package's static files (taskflow/web) served at `/`, same origin as the
API, under a Content-Security-Policy that lets nothing run or load but these files.

The files are read once per process, from the installed package: no build step, no CDN, and
nothing outside the package directory can be named (a name is looked up in the files found at
start, never joined to a path).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from taskflow.api.contracts import (
    IF_NONE_MATCH,
    PUBLIC,
    Operation,
    Reply,
    Routes,
    path_parameter,
)
from taskflow.api.problems import Problem

ASSETS_PATH = "/assets/{name}"
# What the console may do: load its own scripts, styles and images, talk to this origin only
# (fetch and the change feed's EventSource: connect-src), and nothing inline at all. No frame
# may embed it (clickjacking), no <base> may redirect its relative URLs, forms post here only.
CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".html": "text/html",
}
ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*\.(js|css|svg)$")


@dataclass(frozen=True)
class Asset:
    """One file of the console, as it is served."""

    body: bytes
    content_type: str

    @functools.cached_property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'


def _suffix(name: str) -> str:
    return name[name.rindex(".") :]


@functools.cache
def assets() -> dict[str, Asset]:
    """The console's files by URL name: `web/assets/*` and the page itself (`index.html`)."""
    web_dir = resources.files("taskflow") / "web"
    found = {
        entry.name: Asset(entry.read_bytes(), CONTENT_TYPES[_suffix(entry.name)])
        for entry in (web_dir / "assets").iterdir()
        if ASSET_NAME.match(entry.name)
    }
    found["index.html"] = Asset((web_dir / "index.html").read_bytes(), "text/html")
    return found


def asset_names() -> list[str]:
    """The names GET /assets/{name} serves (its contract lists them)."""
    return sorted(name for name in assets() if name != "index.html")


ROUTES = Routes("console")
FILE_ETAG = "ETag=FileETag"  # the console's files: a content hash, not a task's version


def setup_console_routes(app: web.Application) -> None:
    ROUTES.add_to(app)


@ROUTES.route(
    Operation(
        "get",
        "/",
        "console",
        "The web console (a page of static files; no script inline, no CDN)",
        (Reply(200, "The page", media_type="text/html", headers=(FILE_ETAG,)),),
        security=PUBLIC,
        description="Served with its own Content-Security-Policy: scripts, styles and "
        "connections of this origin only.",
    )
)
async def console_page(request: web.Request) -> web.Response:
    """The console's one page; everything else is its scripts talking to the API."""
    return _serve(request, assets()["index.html"])


@ROUTES.route(
    Operation(
        "get",
        ASSETS_PATH,
        "consoleAsset",
        "One of the console's files",
        (
            Reply(
                200,
                "The file",
                media_types=tuple(
                    dict.fromkeys(t for t in CONTENT_TYPES.values() if t != "text/html")
                ),
                headers=(FILE_ETAG,),
            ),
            Reply(304, "If-None-Match holds the current ETag", headers=(FILE_ETAG,)),
        ),
        {404: "no such file"},
        parameters=(
            path_parameter(
                "name",
                {"type": "string", "enum": asset_names()},
                "a file of the console; anything else is a 404",
                key="asset_name",
            ),
            IF_NONE_MATCH,
        ),
        security=PUBLIC,
    )
)
async def console_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    asset = assets().get(name) if name != "index.html" else None
    if asset is None:
        raise Problem(404, "not-found", "Not Found", "No such file.")
    return _serve(request, asset)


def _serve(request: web.Request, asset: Asset) -> web.Response:
    # no-cache: revalidated on every load (304 while unchanged), so a new version of the
    # console is never mixed with cached modules of the old one.
    headers = {
        "ETag": asset.etag,
        "Cache-Control": "no-cache",
        "Content-Security-Policy": CSP,
    }
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    response = web.Response(body=asset.body, headers=headers)
    response.content_type = asset.content_type
    if asset.content_type.startswith("text/"):
        response.charset = "utf-8"
    return response
