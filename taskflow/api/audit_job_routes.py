"""Auditor endpoints that report on the system: the projections' status, and `audit verify`
run as a background job (taskflow/audit_jobs.py) that any API process reports on."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from taskflow.api.audit_routes import require_auditor
from taskflow.api.audit_schemas import ProjectionList, Verification, VerificationList
from taskflow.api.contracts import (
    AUDITOR_PROBLEMS,
    UNAVAILABLE,
    Operation,
    Reply,
    Routes,
    path_parameter,
    pattern,
)
from taskflow.api.json_io import json_response
from taskflow.api.keys import SERVICES
from taskflow.api.problems import Problem
from taskflow.audit_jobs import AuditJobs, Document
from taskflow.audit_reports import Progress, ProjectionStatus, VerifyReport
from taskflow.services import Services
from taskflow.tasks import cancel_and_wait

VERIFICATIONS_PATH = "/api/audit/verifications"
LATEST_JOBS = 10
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")

AUDIT_JOBS = web.AppKey("audit_jobs", AuditJobs)


@dataclass(frozen=True)
class Audits:
    """The audits these routes run, handed over by the app factory (they are made from the
    composition root's projections, which the API's routes do not import: README, Architecture)."""

    verify: Callable[[Services, Progress], Awaitable[VerifyReport]]
    statuses: Callable[[Services], Awaitable[list[ProjectionStatus]]]


AUDITS = web.AppKey("audits", Audits)
RUNNING: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("audit_jobs_running")


ROUTES = Routes("audit")
JOB_ID = path_parameter("job_id", pattern(_JOB_ID.pattern), "a verification's id")


def setup_audit_job_routes(app: web.Application) -> None:
    ROUTES.add_to(app)
    app.cleanup_ctx.append(_jobs)


async def _jobs(app: web.Application) -> AsyncIterator[None]:
    """The jobs' store; at shutdown a job still running here is stopped (it reads as
    interrupted, and can be started again in any process)."""
    app[AUDIT_JOBS] = AuditJobs(app[SERVICES].db)
    running: set[asyncio.Task[None]] = set()
    app[RUNNING] = running
    yield
    for task in list(running):
        await cancel_and_wait(task)


@ROUTES.route(
    Operation(
        "get",
        "/api/audit/projections",
        "auditProjections",
        "Each projection's position, lag and lease holder, for auditors",
        (Reply(200, "The projections", ProjectionList),),
        AUDITOR_PROBLEMS | UNAVAILABLE,
    )
)
async def get_projections(request: web.Request) -> web.Response:
    """Each projection's position, the log's head, the lag and the lease holder."""
    await require_auditor(request)
    statuses = await request.app[AUDITS].statuses(request.app[SERVICES])
    items = [
        {
            "name": status.name,
            "position": status.position,
            "head": status.head,
            "lag": status.lag,
            "lease_holder": status.lease_holder,
            "lease_expires_at": _time(status.lease_expires_at),
        }
        for status in statuses
    ]
    head = statuses[0].head if statuses else 0
    return json_response({"head": head, "items": items}, headers=_NO_CACHE)


@ROUTES.route(
    Operation(
        "post",
        VERIFICATIONS_PATH,
        "startVerification",
        "Start `taskflow audit verify` in the background, for auditors",
        (
            Reply(202, "Started; Location names the job", Verification, ("Location",)),
            Reply(
                200,
                "One is running already (in any API process): that one",
                Verification,
                ("Location",),
            ),
        ),
        AUDITOR_PROBLEMS | UNAVAILABLE,
        description=(
            "One verification runs at a time across every API process (a unique slot decides "
            "it). It reads the whole log once, as the CLI does: the hash chains, the seals, "
            "contiguity, then every task view against the log. Poll the job for its progress "
            "and result."
        ),
    )
)
async def start_verification(request: web.Request) -> web.Response:
    """Start `audit verify` in the background (202), or answer the one running (200)."""
    user = await require_auditor(request)
    jobs = request.app[AUDIT_JOBS]
    job, started = await jobs.start(user.user_id)
    if started:
        services = request.app[SERVICES]

        async def verify(progress: Progress) -> VerifyReport:
            return await request.app[AUDITS].verify(services, progress)

        task = asyncio.create_task(jobs.run(job, verify))
        running = request.app[RUNNING]
        running.add(task)
        task.add_done_callback(running.discard)
    headers = {**_NO_CACHE, "Location": f"{VERIFICATIONS_PATH}/{job['_id']}"}
    return json_response(job_json(jobs, job), status=202 if started else 200, headers=headers)


@ROUTES.route(
    Operation(
        "get",
        VERIFICATIONS_PATH,
        "listVerifications",
        "The latest verifications, for auditors",
        (Reply(200, f"Newest first, at most {LATEST_JOBS}", VerificationList),),
        AUDITOR_PROBLEMS | UNAVAILABLE,
    )
)
async def list_verifications(request: web.Request) -> web.Response:
    """The latest verifications, newest first."""
    await require_auditor(request)
    jobs = request.app[AUDIT_JOBS]
    items = [job_json(jobs, job) for job in await jobs.latest(LATEST_JOBS)]
    return json_response({"items": items}, headers=_NO_CACHE)


@ROUTES.route(
    Operation(
        "get",
        VERIFICATIONS_PATH + "/{job_id}",
        "getVerification",
        "One verification: its progress, or its result, for auditors",
        (Reply(200, "The job", Verification),),
        {**AUDITOR_PROBLEMS, 404: "no such job", **UNAVAILABLE},
        parameters=(JOB_ID,),
    )
)
async def get_verification(request: web.Request) -> web.Response:
    """One verification: its progress while it runs, its findings once it ended."""
    await require_auditor(request)
    job_id = request.match_info["job_id"]
    jobs = request.app[AUDIT_JOBS]
    job = await jobs.get(job_id) if _JOB_ID.match(job_id) else None
    if job is None:
        raise Problem(404, "verification-not-found", "Verification not found", "No such job.")
    return json_response(job_json(jobs, job), headers=_NO_CACHE)


def job_json(jobs: AuditJobs, job: Document) -> dict[str, Any]:
    return {
        "id": job["_id"],
        "state": jobs.state(job),
        "requested_by": job["requested_by"],
        "started_at": _time(job["started_at"]),
        "heartbeat_at": _time(job["heartbeat_at"]),
        "finished_at": _time(job.get("finished_at")),
        "progress": job["progress"],
        "result": job.get("result"),
        "error": job.get("error"),
    }


_NO_CACHE = {"Cache-Control": "private, no-cache"}


def _time(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat().replace("+00:00", "Z")
