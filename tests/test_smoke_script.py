"""scripts/smoke.py, the end-to-end smoke the GitHub workflow runs against the compose stack,
run here the same way: through the real nginx with TLS in front of the real API, a projector
running, and `taskflow audit verify` as its last step."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from taskflow.settings import Settings
from tests.api_support import live_projector
from tests.deploy_support import ROOT, nginx_in_front, nginx_log, ready_api
from tests.fault_tools import taskflow_env


async def test_smoke_passes_through_nginx_with_tls(
    aiohttp_client: Any, settings: Settings, tmp_path: Path, mongo: Any
) -> None:
    """Register, login, create, read your write, list, history and audit verify: all pass."""
    api = await ready_api(aiohttp_client, settings)
    async with nginx_in_front(api, tmp_path / "nginx", "https") as conf, live_projector(api):
        smoke = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "scripts" / "smoke.py"),
            "--base-url",
            f"https://127.0.0.1:{conf.https_port}",
            "--cacert",
            str(conf.certificate),
            "--expect-hsts",
            "--",
            sys.executable,
            "-m",
            "taskflow",
            "audit",
            "verify",
            env=taskflow_env(settings, LOG_JSON="false"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(smoke.communicate(), 90)
    text = output.decode(errors="replace")
    assert smoke.returncode == 0, f"{text}\n--- nginx ---\n{nginx_log(conf)}"
    for step in ("register", "login", "create", "read your write", "list", "history"):
        assert f"ok  {step}" in text, text
    assert "ok  audit verify" in text
    assert "ok  health (HSTS)" in text
