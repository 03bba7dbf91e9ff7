"""Checks on the shipped deployment files (docker-compose.yml, Dockerfile, deploy/, the GitHub
workflow), with the tools that read them where they can run here: `docker-compose config`,
`nginx -t` (Debian's nginx) and `actionlint`. A test whose tool is not installed skips, saying
so; `scripts/services.sh install-tools` (run by `make test`) installs them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from taskflow.settings import READ_MODELS, Settings
from tests.deploy_support import (
    COMPOSE_FILE,
    NGINX_DIR,
    ROOT,
    SITES,
    check_nginx,
    compose_services,
    environment,
    render_nginx,
)

DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / "deploy" / "taskflow.env.example"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
MAKE_SECRETS = ROOT / "scripts" / "make-secrets.sh"

MONGO_MEMBERS = ("mongo1", "mongo2", "mongo3")
ONE_SHOT_SERVICES = frozenset({"mongo-init"})
PROJECTORS = ("projector", "projector-mongodb")
LONG_RUNNING_SERVICES = (*MONGO_MEMBERS, "redis", "api1", "api2", "nginx", *PROJECTORS)
APP_SERVICES = ("api1", "api2", *PROJECTORS)
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
    return compose_services()


def _environment(service: dict[str, Any]) -> dict[str, str]:
    return environment(service)


def _yaml(path: Path) -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse YAML")
    document: object = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


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
    """Compose ships the replica set, its init job, Redis, two APIs, nginx and the projectors."""
    assert set(services) >= {*LONG_RUNNING_SERVICES, *ONE_SHOT_SERVICES}


def test_each_read_model_has_a_projector_service_of_its_own(
    services: dict[str, dict[str, Any]],
) -> None:
    """One projector service per read model, together covering every read model: the Redis
    views' passes do not share an event loop with the MongoDB views' (docs/operations.md)."""
    models = [_environment(services[name]).get("PROJECTOR_READ_MODELS", "") for name in PROJECTORS]
    assert sorted(models) == sorted(READ_MODELS)
    for name in PROJECTORS:
        assert services[name]["command"] == ["taskflow", "project"]


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


def _compose_command() -> list[str]:
    """Docker Compose v1 (Debian's docker-compose) or the v2 plugin: both parse offline."""
    v1 = shutil.which("docker-compose")
    if v1 is not None:
        return [v1]
    docker = shutil.which("docker")
    if docker is not None and _runs([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    pytest.skip(
        "neither docker-compose nor the Docker Compose plugin is installed "
        "(`scripts/services.sh install-tools` installs Debian's docker-compose)"
    )


def _runs(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Fixed argument lists, no shell, executables resolved by shutil.which: nothing untrusted.
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False, env=env
    )


@pytest.mark.parametrize("site", SITES)
def test_compose_file_passes_docker_compose_config(site: str) -> None:
    """`docker-compose config` accepts the file as shipped (fresh clone, no secrets written),
    with nginx's plain HTTP site and with NGINX_SITE=https, and mounts the site chosen."""
    env = {**os.environ, "NGINX_SITE": site}
    result = _runs([*_compose_command(), "-f", str(COMPOSE_FILE), "config"], env)
    assert result.returncode == 0, result.stderr
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the resolved file")
    resolved = yaml.safe_load(result.stdout)
    mounts = [
        str(v.get("source", v)) if isinstance(v, dict) else str(v)
        for v in resolved["services"]["nginx"]["volumes"]
    ]
    assert any(f"site-{site}.conf" in mount for mount in mounts), mounts


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
    upstream = (NGINX_DIR / "upstream.conf").read_text(encoding="utf-8")
    assert re.search(r"server\s+api1:8080\b", upstream)
    assert re.search(r"server\s+api2:8080\b", upstream)
    proxy = (NGINX_DIR / "proxy.conf").read_text(encoding="utf-8")
    assert "proxy_set_header X-Forwarded-For" in proxy
    assert "proxy_set_header X-Request-ID" in proxy


def test_nginx_overwrites_forwarded_for_and_compose_trusts_it(
    services: dict[str, dict[str, Any]],
) -> None:
    """nginx replaces X-Forwarded-For with the address it saw (never appends the client's
    header), and only the API replicas behind it trust the header (tests/test_proxy.py)."""
    proxy = (NGINX_DIR / "proxy.conf").read_text(encoding="utf-8")
    assert re.search(r"^\s*proxy_set_header X-Forwarded-For \$remote_addr;", proxy, re.M)
    assert "$proxy_add_x_forwarded_for" not in proxy
    for api in ("api1", "api2"):
        assert _environment(services[api]).get("TRUST_FORWARDED_FOR") == "true"
    for name in PROJECTORS:
        assert "TRUST_FORWARDED_FOR" not in _environment(services[name])


@pytest.mark.parametrize("site", SITES)
def test_nginx_configuration_passes_nginx_t(site: str, tmp_path: Path) -> None:
    """`nginx -t` (Debian's nginx) accepts deploy/nginx/ with each site (upstream.conf aside:
    its `resolve` needs nginx 1.27.3; the compose job runs `nginx -t` on the real one)."""
    result = check_nginx(render_nginx(tmp_path / "nginx", site=site, api_port=8080))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_hsts_only_on_the_tls_site() -> None:
    """The TLS site sends Strict-Transport-Security on every answer; plain HTTP never does."""
    https = (NGINX_DIR / "site-https.conf").read_text(encoding="utf-8")
    assert re.search(r'add_header Strict-Transport-Security "max-age=\d+" always;', https)
    assert "ssl_certificate tls/tls.crt;" in https
    for name in ("site-http.conf", "proxy.conf", "nginx.conf", "upstream.conf"):
        assert "Strict-Transport-Security" not in (NGINX_DIR / name).read_text(encoding="utf-8")


def test_app_secrets_come_from_docker_secrets_files(services: dict[str, dict[str, Any]]) -> None:
    """Every `<NAME>_FILE` of the app services names /run/secrets/<secret>, a secret the service
    mounts, declared from a file under deploy/secrets/ that scripts/make-secrets.sh writes."""
    declared = _yaml(COMPOSE_FILE)["secrets"]
    written = set(re.findall(r"^write (\w+) ", MAKE_SECRETS.read_text(encoding="utf-8"), re.M))
    for name in APP_SERVICES:
        files = {k: v for k, v in _environment(services[name]).items() if k.endswith("_FILE")}
        assert {"JWT_KEYS_FILE", "EVENT_LOG_HMAC_KEY_FILE"} <= set(files), name
        for variable, path in files.items():
            secret = path.removeprefix("/run/secrets/")
            assert path == f"/run/secrets/{secret}", variable
            assert secret in services[name]["secrets"], (name, secret)
            assert declared[secret]["file"] == f"./deploy/secrets/{secret}", secret
            assert secret in written, secret
            assert variable == f"{secret.upper()}_FILE"


def test_settings_read_each_secret_from_its_file(
    services: dict[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings the compose file gives as `<NAME>_FILE` are read from those files; one set
    both ways, or an unreadable file, stops the process with a message naming it."""
    from taskflow.settings import SettingsError, load_settings

    values = {
        "jwt_keys": "k1:" + "x" * 40,
        "event_log_hmac_key": "an event log key read from a file",
    }
    for name, value in values.items():
        path = tmp_path / name
        path.write_text(value + "\n", encoding="utf-8")
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.setenv(f"{name.upper()}_FILE", str(path))
    monkeypatch.setenv("JWT_ACTIVE_KID", "k1")
    loaded = load_settings()
    assert loaded.jwt_keys["k1"].get_secret_value() == "x" * 40
    assert loaded.event_log_hmac_key.get_secret_value() == values["event_log_hmac_key"]
    assert {
        n.removesuffix("_FILE").lower()
        for n in _environment(services["api1"])
        if n.endswith("_FILE")
    } >= set(values)
    assert set(values) <= set(Settings.model_fields)

    monkeypatch.setenv("EVENT_LOG_HMAC_KEY", "also in the environment")
    with pytest.raises(SettingsError, match="EVENT_LOG_HMAC_KEY and EVENT_LOG_HMAC_KEY_FILE"):
        load_settings()
    monkeypatch.delenv("EVENT_LOG_HMAC_KEY")
    monkeypatch.setenv("JWT_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="JWT_KEYS_FILE: cannot read"):
        load_settings()


def test_workflow_passes_actionlint() -> None:
    """actionlint (with shellcheck on every `run:` where shellcheck is installed) accepts the
    GitHub workflow."""
    state = Path(os.environ.get("TASKFLOW_STATE_DIR", ROOT / ".state"))
    version = os.environ.get("ACTIONLINT_VERSION", "v1.7.12")
    built = state / "bin" / f"actionlint-{version}"
    binary = str(built) if os.access(built, os.X_OK) else shutil.which("actionlint")
    if binary is None:
        pytest.skip("actionlint is not built (`scripts/services.sh install-tools` builds it)")
    result = _runs([binary, "-no-color", str(WORKFLOW)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_tests_on_three_members_and_runs_the_compose_stack() -> None:
    """The test job starts three mongod and points the suite at all of them; the compose job
    brings the stack up with --wait, smokes it through nginx and always tears it down."""
    jobs = _yaml(WORKFLOW)["jobs"]
    uri = jobs["test"]["env"]["MONGODB_URI"]
    assert uri.endswith("/?replicaSet=rs0")
    assert len(uri.removeprefix("mongodb://").split("/")[0].split(",")) == 3
    test_runs = "\n".join(str(step.get("run", "")) for step in jobs["test"]["steps"])
    assert "mongod --replSet rs0" in test_runs
    assert "RS_WAIT_FOR=all" in test_runs
    assert "make test" in test_runs
    steps = jobs["compose"]["steps"]
    runs = [str(step.get("run", "")) for step in steps]
    assert any("scripts/make-secrets.sh" in run for run in runs)
    assert any("docker compose up" in run and "--wait" in run for run in runs)
    assert any("scripts/smoke.py" in run and "audit verify" in run for run in runs)
    down = [step for step in steps if "docker compose down --volumes" in str(step.get("run"))]
    assert down
    assert down[0].get("if") == "always()"


def test_mongo_init_makes_majority_the_default_write_concern() -> None:
    """rs.initiate's script sets the cluster-wide default write concern to majority."""
    script = (ROOT / "deploy" / "mongo-init.js").read_text(encoding="utf-8")
    assert re.search(r'setDefaultRWConcern: 1, defaultWriteConcern: \{ w: "majority" \}', script)
