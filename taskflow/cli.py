"""The `taskflow` command line: serve the API, run a projector, or both for development."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from taskflow import operations
from taskflow.privacy.keks import KekError
from taskflow.settings import Settings
from taskflow.startup import configured_settings, new_event_loop, tune_garbage_collector


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    settings = configured_settings()
    if settings is None:
        return 2
    try:
        code: int = args.run(settings, args)
    except KekError as exc:  # a missing or wrong key-encryption key, found at start
        print(f"taskflow: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except (PyMongoError, RedisError, OSError) as exc:  # one sentence, not a traceback
        print(f"taskflow: {_unreachable(settings, exc)}", file=sys.stderr)
        return 3
    return code


def _unreachable(settings: Settings, exc: Exception) -> str:
    """Which server could not be reached, and what to do, in one sentence."""
    if isinstance(exc, PyMongoError):
        where = f"MongoDB at {_without_password(settings.mongodb_uri)}"
    elif isinstance(exc, RedisError):
        where = f"Redis at {_without_password(settings.redis_url)}"
    else:
        where = "a server"
    return (
        f"cannot reach {where} ({type(exc).__name__}); is it running (`make dev` starts the "
        "development services), and are MONGODB_URI and REDIS_URL right?"
    )


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskflow", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.set_defaults(run=_serve)
    project = commands.add_parser("project", help="run a projector worker process")
    project.set_defaults(run=_project)
    dev = commands.add_parser("dev", help="run the API and one projector (development)")
    dev.set_defaults(run=_dev)
    _operations(commands)
    return parser


def _operations(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Subcommands for operators and auditors (taskflow/operations.py)."""
    users = commands.add_parser("users", help="manage users").add_subparsers(required=True)
    grant = users.add_parser("grant-role", help="grant a role, e.g. auditor")
    grant.add_argument("email")
    grant.add_argument("role", choices=["auditor"])
    grant.set_defaults(run=lambda s, a: _async(operations.grant_role(s, a.email, a.role)))
    erase = users.add_parser("erase", help="erase a user: destroy their data key (privacy.md)")
    erase.add_argument("user_id")
    erase.set_defaults(run=lambda s, a: _async(operations.erase_user(s, a.user_id)))
    keys = commands.add_parser("keys", help="data keys").add_subparsers(required=True)
    keys.add_parser("rotate", help="re-wrap every data key under DATA_KEK_ACTIVE").set_defaults(
        run=lambda s, a: _async(operations.keys_rotate(s))
    )
    audit = commands.add_parser("audit", help="audit the log").add_subparsers(required=True)
    verify = audit.add_parser("verify", help="hash chains, seals and read models against the log")
    verify.add_argument(
        "--state",
        type=Path,
        default=None,
        help="keep the log audit's progress in this file and resume from it if it exists",
    )
    verify.set_defaults(run=lambda s, a: _async(operations.audit_verify(s, a.state)))
    audit.add_parser(
        "rewrite-legacy",
        help="remove password hashes and seal personal data in commits written before sealing",
    ).set_defaults(run=lambda s, a: _async(operations.audit_rewrite_legacy(s)))
    export = audit.add_parser("export", help="NDJSON of the global feed")
    export.add_argument("--after", type=int, default=0, help="resume after this position")
    export.set_defaults(run=lambda s, a: _async(operations.audit_export(s, a.after, sys.stdout)))
    proj = commands.add_parser("projections", help="projection operations").add_subparsers(
        required=True
    )
    proj.add_parser("status", help="positions, lag and lease holders").set_defaults(
        run=lambda s, a: _async(operations.projections_status(s))
    )
    rebuild = proj.add_parser("rebuild", help="rebuild a projection without downtime")
    rebuild.add_argument("name", help="task_views")
    rebuild.set_defaults(run=lambda s, a: _async(operations.projections_rebuild(s, a.name)))


def _async(work: Coroutine[Any, Any, int]) -> int:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(work)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    tune_garbage_collector()
    if settings.api_workers > 1:
        from taskflow.server_workers import exec_workers

        exec_workers()  # does not return: this process becomes gunicorn's arbiter
    from taskflow.server import create_app

    print(f"TaskFlow API on http://{settings.http_host}:{settings.http_port}", file=sys.stderr)
    # run_app handles SIGTERM: it stops accepting, lets in-flight requests finish, then cleans up.
    web.run_app(
        create_app(settings),
        loop=new_event_loop(),
        host=settings.http_host,
        port=settings.http_port,
        shutdown_timeout=10.0,
        access_log=None,
        print=None,
    )
    return 0


def _project(settings: Settings, args: argparse.Namespace) -> int:
    tune_garbage_collector()
    from taskflow.projector import run_worker

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(run_worker(settings))
    return 0


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    """The API and a projector per read model as children; Ctrl-C or SIGTERM stops them all
    gracefully.

    One projector process per read model, as the compose file runs them: in one process the
    MongoDB views' pass (half a second of commits at once) shares the event loop the Redis
    views, which reads are served from, need (docs/benchmarks.md, "Write-to-visible latency").
    """
    me = [sys.executable, "-m", "taskflow"]
    # Each child in a process group of its own: a Ctrl-C in the terminal reaches this process
    # alone, which stops each child with one SIGTERM. Had the children also received the
    # SIGINT, the SIGTERM would come in the middle of their shutdown and end it early.
    children = [subprocess.Popen([*me, "serve"], process_group=0)]  # noqa: S603
    for model in settings.projector_read_models:
        env = {**os.environ, "PROJECTOR_READ_MODELS": model}
        children.append(subprocess.Popen([*me, "project"], env=env, process_group=0))  # noqa: S603

    stopping = False  # a second SIGTERM would cut a child's shutdown short: send one

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(child.poll() is None for child in children):
        try:
            children[0].wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue
    stop(signal.SIGTERM, None)  # one child ended on its own: stop the others (once)
    codes = [child.wait() for child in children]
    # A child that failed (or died of a signal, a negative code) makes this one fail too.
    return next((code if code > 0 else 1 for code in codes if code != 0), 0)
