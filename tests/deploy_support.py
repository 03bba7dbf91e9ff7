"""The shipped deployment files, read and run: docker-compose.yml parsed, and Debian's nginx
started on loopback with deploy/nginx/ in front of an API (tests/test_proxy.py).

The nginx configuration is used as shipped except where a loopback run must differ from the
compose network: the listen addresses, the upstream (upstream.conf names the compose services
and uses `resolve`, which needs nginx 1.27.3 and Docker's DNS), and the temp and pid paths. What
decides the client address, the headers and TLS is the shipped text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import ipaddress
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from taskflow.server import create_app
from taskflow.settings import Settings
from tests.api_support import Client, wait_ready
from tests.fault_tools import free_port, until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
NGINX_DIR = ROOT / "deploy" / "nginx"
SITES = ("http", "https")
_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def compose_services() -> dict[str, dict[str, Any]]:
    """The `services` mapping of docker-compose.yml, YAML anchors and merge keys resolved."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse docker-compose.yml")
    document: object = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    found = document.get("services")
    assert isinstance(found, dict)
    return {str(name): spec for name, spec in found.items() if isinstance(spec, dict)}


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's `environment`, in either of its two forms."""
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- KEY=value` form
        pairs = (str(item).partition("=") for item in env)
        return {key: value for key, _, value in pairs}
    return {str(key): str(value) for key, value in env.items()}


def nginx_binary() -> str:
    """Debian's nginx; the test skips, saying why, where it is not installed."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.skip("nginx is not installed: `scripts/services.sh install-tools` installs it")
    return found


@dataclass(frozen=True)
class NginxConf:
    """A rendered configuration: its directory and the loopback ports it listens on."""

    directory: Path
    http_port: int
    https_port: int

    @property
    def main(self) -> Path:
        return self.directory / "nginx.conf"

    @property
    def certificate(self) -> Path:
        return self.directory / "tls" / "tls.crt"

    def argv(self, binary: str, *extra: str) -> list[str]:
        """nginx with this configuration: its prefix, a startup error log, the pid file and,
        as root, an unprivileged worker user."""
        directives = f"pid {self.directory / 'nginx.pid'};"
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            directives += f" user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"
        return [
            binary,
            "-p",
            f"{self.directory}/",
            "-e",
            "stderr",
            "-c",
            str(self.main),
            "-g",
            directives,
            *extra,
        ]


def render_nginx(directory: Path, *, site: str, api_port: int) -> NginxConf:
    """deploy/nginx/ under `directory` for a loopback nginx in front of 127.0.0.1:`api_port`."""
    assert site in SITES
    conf = NginxConf(directory, free_port(), free_port())
    (directory / "taskflow").mkdir(parents=True)
    for temp in _TEMP_DIRS:
        (directory / "temp" / temp).mkdir(parents=True)
    main = (NGINX_DIR / "nginx.conf").read_text(encoding="utf-8")
    temp_paths = "".join(f"    {t}_temp_path temp/{t};\n" for t in _TEMP_DIRS)
    main = _once(main, "http {\n", "http {\n" + temp_paths)
    conf.main.write_text(main, encoding="utf-8")
    shutil.copy(NGINX_DIR / "proxy.conf", directory / "taskflow" / "proxy.conf")
    text = (NGINX_DIR / f"site-{site}.conf").read_text(encoding="utf-8")
    text = _each(text, r"listen 80;", f"listen 127.0.0.1:{conf.http_port};")
    if site == "https":
        text = _each(text, r"listen 443 ssl;", f"listen 127.0.0.1:{conf.https_port} ssl;")
        _write_self_signed(directory / "tls")
    (directory / "taskflow" / "site.conf").write_text(text, encoding="utf-8")
    upstream = f"upstream taskflow_api {{\n    server 127.0.0.1:{api_port};\n    keepalive 8;\n}}\n"
    (directory / "taskflow" / "upstream.conf").write_text(upstream, encoding="utf-8")
    mime = Path("/etc/nginx/mime.types")
    if mime.is_file():
        shutil.copy(mime, directory / "mime.types")
    else:
        (directory / "mime.types").write_text("types { application/json json; }\n")
    return conf


def check_nginx(conf: NginxConf) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a rendered configuration."""
    # Fixed argument list, no shell, the binary resolved by nginx_binary(): nothing untrusted.
    return subprocess.run(
        conf.argv(nginx_binary(), "-t"), capture_output=True, text=True, timeout=60, check=False
    )


@contextlib.contextmanager
def running_nginx(conf: NginxConf) -> Iterator[subprocess.Popen[bytes]]:
    """nginx in the foreground on `conf`'s ports until the block ends (then stopped)."""
    log = conf.directory / "nginx.out"
    with log.open("wb") as out:
        process = subprocess.Popen(
            conf.argv(nginx_binary(), "-g", "daemon off;"), stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@contextlib.asynccontextmanager
async def nginx_in_front(api: Client, directory: Path, site: str) -> AsyncIterator[NginxConf]:
    """nginx (`site`: "http" or "https") in front of the app `api` serves."""
    assert api.server.port is not None
    conf = render_nginx(directory, site=site, api_port=api.server.port)
    with running_nginx(conf) as process:

        async def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"nginx exited:\n{nginx_log(conf)}")
            url = f"http://127.0.0.1:{conf.http_port}/nginx-health"
            try:
                async with aiohttp.ClientSession() as http, http.get(url) as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await until(answers, 60, "nginx to answer")
        yield conf


async def ready_api(aiohttp_client: Any, settings: Settings) -> Client:
    """The real app on `settings`, served on a loopback port, ready."""
    api: Client = await aiohttp_client(create_app(settings))
    await wait_ready(api)
    return api


def nginx_log(conf: NginxConf) -> str:
    path = conf.directory / "nginx.out"
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected exactly one {old!r} in the shipped nginx.conf"
    return text.replace(old, new)


def _each(text: str, pattern: str, new: str) -> str:
    replaced, count = re.subn(re.escape(pattern), new, text)
    assert count >= 1, f"the shipped site no longer says {pattern!r}"
    return replaced


def _write_self_signed(directory: Path) -> None:
    """A throwaway certificate for 127.0.0.1 and localhost, made here (never shipped)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    alt = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(alt, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "tls.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
