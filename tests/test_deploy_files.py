"""Static checks on the shipped deployment files (docker-compose.yml, Dockerfile, deploy/)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / "deploy" / "taskflow.env.example"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"

MONGO_MEMBERS = ("mongo1", "mongo2", "mongo3")
ONE_SHOT_SERVICES = frozenset({"mongo-init"})
LONG_RUNNING_SERVICES = (*MONGO_MEMBERS, "redis", "api1", "api2", "nginx", "projector")
APP_SERVICES = ("api1", "api2", "projector")
MONGODB_URI = "mongodb://mongo1:27017,mongo2:27017,mongo3:27017/?replicaSet=rs0"
SETTINGS = (
    "MONGODB_URI",
    "MONGODB_DB",
    "REDIS_URL",
    "HTTP_HOST",
    "HTTP_PORT",
    "LOG_LEVEL",
    "JWT_KEYS",
    "JWT_ACTIVE_KID",
    "EVENT_LOG_HMAC_KEY",
    "DATA_KEKS",
    "DATA_KEK_ACTIVE",
    "EMAIL_HASH_KEY",
    "READ_MAX_STALENESS_SECONDS",
    "CORS_ORIGINS",
    "SENTRY_DSN",
    "METRICS_PORT",
)


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    """The `services` mapping of docker-compose.yml, YAML anchors and merge keys resolved."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse docker-compose.yml")
    document: object = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    found = document.get("services")
    assert isinstance(found, dict)
    return {str(name): spec for name, spec in found.items() if isinstance(spec, dict)}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- KEY=value` form
        pairs = (str(item).partition("=") for item in env)
        return {key: value for key, _, value in pairs}
    return {str(key): str(value) for key, value in env.items()}


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))  # join continuations
    lines = (line.strip() for line in text.splitlines())
    pairs = (line.split(maxsplit=1) for line in lines if line and not line.startswith("#"))
    return [(pair[0].upper(), pair[1] if len(pair) > 1 else "") for pair in pairs]


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert starts, "Dockerfile has no FROM"
    return instructions[starts[-1] :]


def test_compose_defines_every_service(services: dict[str, dict[str, Any]]) -> None:
    """Compose ships the replica set, its init job, Redis, two APIs, nginx and the projector."""
    assert set(services) >= {*LONG_RUNNING_SERVICES, *ONE_SHOT_SERVICES}


@pytest.mark.parametrize("name", LONG_RUNNING_SERVICES)
def test_long_running_service_has_healthcheck(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """Every long-running service declares an enabled healthcheck with a test command."""
    healthcheck = services[name].get("healthcheck")
    assert isinstance(healthcheck, dict)
    assert healthcheck.get("test")
    assert not healthcheck.get("disable", False)


@pytest.mark.parametrize("name", MONGO_MEMBERS)
def test_mongo_member_runs_replica_set_rs0(services: dict[str, dict[str, Any]], name: str) -> None:
    """Each MongoDB 7 member starts mongod with `--replSet rs0`."""
    service = services[name]
    command = service["command"]
    args = command.split() if isinstance(command, str) else [str(arg) for arg in command]
    assert str(service["image"]).startswith("mongo:7")
    assert "--replSet" in args
    assert args[args.index("--replSet") + 1] == "rs0"


def test_mongo_init_initiates_rs0_after_members_are_healthy(
    services: dict[str, dict[str, Any]],
) -> None:
    """The one-shot init job targets rs0 and waits for all three members to be healthy."""
    init = services["mongo-init"]
    assert _environment(init).get("RS_NAME") == "rs0"
    assert init["depends_on"] == {m: {"condition": "service_healthy"} for m in MONGO_MEMBERS}
    assert "rs.initiate" in (ROOT / "deploy" / "mongo-init.js").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_uses_replica_set_and_waits_for_init(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """API and projector connect to rs0 and start only after the init job succeeded."""
    service = services[name]
    assert _environment(service)["MONGODB_URI"] == MONGODB_URI
    assert service["depends_on"]["mongo-init"] == {"condition": "service_completed_successfully"}
    assert service["depends_on"]["redis"] == {"condition": "service_healthy"}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_read_every_key_from_a_docker_secret(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """The keys reach the processes as Docker secrets (`<NAME>_FILE`), never in the env file."""
    keys = ("JWT_KEYS", "EVENT_LOG_HMAC_KEY", "DATA_KEKS", "EMAIL_HASH_KEY")
    service = services[name]
    env = _environment(service)
    mounted = set(service.get("secrets") or [])
    for key in keys:
        assert env[f"{key}_FILE"] == f"/run/secrets/{key.lower()}"
        assert key.lower() in mounted
        assert key not in env
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert not [key for key in keys if re.search(rf"^{key}=", text, re.MULTILINE)]


def test_depends_on_always_states_a_condition(services: dict[str, dict[str, Any]]) -> None:
    """No service depends on another by start order alone."""
    allowed = {"service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert spec.get("condition") in allowed, f"{name} -> {dependency}"


def test_compose_file_passes_docker_compose_config() -> None:
    """`docker-compose config -q` accepts the file as shipped (fresh clone, no secrets file)."""
    docker_compose = shutil.which("docker-compose")
    if docker_compose is None:
        pytest.skip("docker-compose (v1) is not installed; cannot validate docker-compose.yml")
    # Fixed argument list, no shell, executable resolved by shutil.which: nothing untrusted.
    result = subprocess.run(
        [docker_compose, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_dockerfile_final_stage_runs_as_non_root() -> None:
    """The runtime stage's last USER is neither root nor uid 0."""
    users = [arg for keyword, arg in _final_stage() if keyword == "USER"]
    assert users, "final stage sets no USER"
    user = users[-1].split(":", 1)[0].strip()
    assert user not in {"", "root", "0"}


def test_dockerfile_final_stage_serves_with_python_healthcheck() -> None:
    """The runtime image defaults to `taskflow serve` and probes /api/health with Python."""
    stage = dict(_final_stage())
    base = stage["FROM"].split()[0]
    for keyword, arg in _dockerfile_instructions():  # resolve `FROM ${ARG}` to the ARG default
        name, _, default = arg.partition("=")
        if keyword == "ARG" and base in {f"${name}", f"${{{name}}}"}:
            base = default
    assert base == "python:3.11-slim"
    assert "python" in stage["HEALTHCHECK"]
    assert "/api/health" in stage["HEALTHCHECK"]
    assert stage["CMD"].replace(" ", "") == '["taskflow","serve"]'
    assert "HTTP_HOST=0.0.0.0" in stage["ENV"]


def test_env_example_documents_every_setting() -> None:
    """deploy/taskflow.env.example mentions every setting the app reads."""
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    missing = [name for name in SETTINGS if not re.search(rf"^#?{name}=", text, re.MULTILINE)]
    assert missing == []


def test_nginx_balances_both_apis_and_forwards_ids() -> None:
    """nginx round-robins over api1 and api2 and passes X-Forwarded-For and X-Request-ID."""
    conf = NGINX_CONF.read_text(encoding="utf-8")
    assert re.search(r"server\s+api1:8080\b", conf)
    assert re.search(r"server\s+api2:8080\b", conf)
    assert "proxy_set_header X-Forwarded-For" in conf
    assert "proxy_set_header X-Request-ID" in conf
