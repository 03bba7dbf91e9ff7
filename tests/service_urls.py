"""Where the test servers are: the URLs `make test` exports, and each pytest process's share."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest


def service_url(name: str) -> str:
    """MONGODB_URI or REDIS_URL as `make test` exported it; stops the run if it is missing."""
    url = os.environ.get(name)
    if not url:
        pytest.exit(f"{name} is not set: run the suite with `make test`, which starts the servers")
    return url


def worker_redis_url() -> str:
    """REDIS_URL, with a logical database of this worker's own when pytest-xdist runs the suite
    in several processes: each test flushes its database, which must not be another worker's.
    (MongoDB needs nothing alike: every test has a database of its own.)

    Everything a test starts on Redis goes through this, the browser tests' deployment too: two
    deployments on one Redis database share the projector's lease and fence keys, and the one
    whose projector stands by never projects at all.
    """
    url = urlsplit(service_url("REDIS_URL"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    if not worker.startswith("gw"):
        return url.geturl()
    return url._replace(path=f"/{int(worker[2:]) + 1}").geturl()
