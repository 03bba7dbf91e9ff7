"""The real nginx (Debian's package, deploy/nginx/ as shipped) in front of the real API.

Clients connect from different loopback addresses (127.0.0.2, 127.0.0.3: Linux's loopback
answers the whole 127.0.0.0/8), so nginx sees them as different hosts. The API runs with the
TRUST_FORWARDED_FOR that docker-compose.yml gives the API replicas.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from taskflow.settings import Settings
from taskflow.text import as_text
from tests.deploy_support import (
    NginxConf,
    compose_services,
    environment,
    nginx_in_front,
    nginx_log,
    ready_api,
)

AUTH_LIMIT = 5
CLIENT_A, CLIENT_B = "127.0.0.2", "127.0.0.3"


def _compose_trusts_forwarded_for() -> str:
    """What docker-compose.yml sets TRUST_FORWARDED_FOR to for the API replicas."""
    values = {
        environment(compose_services()[api]).get("TRUST_FORWARDED_FOR", "false")
        for api in ("api1", "api2")
    }
    assert len(values) == 1, "the two API replicas must agree"
    return values.pop()


@pytest.fixture
def proxied_settings(settings: Settings) -> Settings:
    """The test settings with a small auth limit, trusting X-Forwarded-For as compose does."""
    return settings.model_copy(
        update={
            "rate_limit_auth": f"{AUTH_LIMIT}/minute",
            "trust_forwarded_for": _compose_trusts_forwarded_for().lower() == "true",
        }
    )


@pytest.fixture
async def nginx(
    aiohttp_client: Any, proxied_settings: Settings, tmp_path: Path, mongo: Any
) -> AsyncIterator[NginxConf]:
    """nginx (plain HTTP site) in front of the API."""
    api = await ready_api(aiohttp_client, proxied_settings)
    async with nginx_in_front(api, tmp_path / "nginx", "http") as conf:
        yield conf


@pytest.fixture
async def nginx_tls(
    aiohttp_client: Any, proxied_settings: Settings, tmp_path: Path, mongo: Any
) -> AsyncIterator[NginxConf]:
    """nginx (TLS site, a throwaway self-signed certificate) in front of the API."""
    api = await ready_api(aiohttp_client, proxied_settings)
    async with nginx_in_front(api, tmp_path / "nginx", "https") as conf:
        yield conf


def _from(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from `address` (bound before connecting)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def _login(
    http: aiohttp.ClientSession, conf: NginxConf, headers: dict[str, str] | None = None
) -> int:
    """A failed login through nginx (401 while the client's auth budget lasts, then 429).

    Each attempt names another address: the per-account throttle (five failures per account)
    must not be what answers 429 here, only the per-address bucket under test.
    """
    email = f"nobody-{uuid.uuid4().hex[:12]}@example.com"
    body = {"email": email, "password": "not the password at all"}
    url = f"http://127.0.0.1:{conf.http_port}/api/auth/login"
    async with http.post(url, json=body, headers=headers or {}) as response:
        await response.read()
        return response.status


async def _buckets(redis: Redis) -> set[str]:
    """The rate-limit keys in use (the `limits` library's, under tf:ratelimit)."""
    return {as_text(key) for key in await redis.keys("tf:ratelimit*")}


async def test_a_spoofed_forwarded_for_never_changes_whose_bucket_a_request_counts_against(
    nginx: NginxConf, redis: Redis
) -> None:
    """Every login from one client counts against that client's address, whatever
    X-Forwarded-For or X-Real-IP it sends, another client's address included."""
    spoofs = [
        {"X-Forwarded-For": "203.0.113.7"},
        {"X-Forwarded-For": f"{CLIENT_B}"},
        {"X-Forwarded-For": "198.51.100.1, 203.0.113.8"},
        {"X-Real-IP": "203.0.113.9", "X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.10", "X-Forwarded-For": "unknown"},
        {"X-Forwarded-For": "203.0.113.11"},
    ]
    async with _from(CLIENT_A) as a:
        answers = [await _login(a, nginx, headers) for headers in spoofs]
    assert answers == [401] * AUTH_LIMIT + [429], nginx_log(nginx)
    buckets = await _buckets(redis)
    assert len(buckets) == 1, buckets
    assert f"ip:{CLIENT_A}/" in buckets.pop()


async def test_two_clients_behind_the_proxy_have_separate_buckets(
    nginx: NginxConf, redis: Redis
) -> None:
    """One client spending its whole auth budget leaves another client's untouched."""
    async with _from(CLIENT_A) as a, _from(CLIENT_B) as b:
        assert [await _login(a, nginx) for _ in range(AUTH_LIMIT)] == [401] * AUTH_LIMIT
        assert await _login(a, nginx) == 429
        assert [await _login(b, nginx) for _ in range(AUTH_LIMIT)] == [401] * AUTH_LIMIT
        assert await _login(b, nginx) == 429
        assert await _login(a, nginx) == 429
    buckets = sorted(await _buckets(redis))
    assert len(buckets) == 2, buckets
    assert f"ip:{CLIENT_A}/" in buckets[0]
    assert f"ip:{CLIENT_B}/" in buckets[1]


async def test_tls_site_serves_the_api_with_hsts_and_redirects_plain_http(
    nginx_tls: NginxConf,
) -> None:
    """With NGINX_SITE=https: the API over TLS with Strict-Transport-Security; plain HTTP is
    redirected (308) except nginx's own health check, which carries no HSTS."""
    trusted = ssl.create_default_context(cafile=str(nginx_tls.certificate))
    async with aiohttp.ClientSession() as http:
        url = f"https://127.0.0.1:{nginx_tls.https_port}/api/health"
        async with http.get(url, ssl=trusted) as response:
            assert response.status == 200
            assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
        plain = f"http://127.0.0.1:{nginx_tls.http_port}"
        async with http.get(f"{plain}/api/health?x=1", allow_redirects=False) as response:
            assert response.status == 308
            assert response.headers["Location"] == "https://127.0.0.1/api/health?x=1"
            assert "Strict-Transport-Security" not in response.headers
        async with http.get(f"{plain}/nginx-health") as response:
            assert response.status == 200


async def test_the_console_keeps_its_session_through_the_proxy(nginx: NginxConf) -> None:
    """Through nginx on a non-default port, the console's page loads and its refresh (with the
    Origin a browser sends, host and port) passes the same-site check: nginx forwards the
    client's Host with its port."""
    base = f"http://127.0.0.1:{nginx.http_port}"
    email = f"console-{uuid.uuid4().hex[:12]}@example.com"
    account = {"email": email, "password": "correct horse battery", "display_name": "Ada"}
    # unsafe: keep cookies of an IP address host (127.0.0.1), as a browser does
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/") as page:
            assert page.status == 200
            assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        async with http.post(f"{base}/api/auth/register", json=account) as registered:
            assert registered.status == 201, await registered.text()
        login = {"email": email, "password": account["password"]}
        async with http.post(f"{base}/api/auth/login", json=login) as signed_in:
            assert signed_in.status == 200
        async with http.post(
            f"{base}/api/auth/refresh", json={}, headers={"Origin": base}
        ) as refreshed:
            assert refreshed.status == 200, (await refreshed.text(), nginx_log(nginx))
