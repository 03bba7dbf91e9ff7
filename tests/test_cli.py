"""The `taskflow` command line as an operator meets it: it finds the development services, and
an unreachable server is one sentence and an exit code, never a traceback (no servers needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskflow.startup import use_development_services
from tests.conftest import closed_port


def test_the_cli_uses_the_running_development_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With neither MONGODB_URI nor REDIS_URL set, `make dev`'s services.env is read; with
    either set, or without the file, nothing is taken from it."""
    # The function writes os.environ itself: the whole environment is restored afterwards (a
    # variable monkeypatch found unset would otherwise leak into the tests that follow).
    monkeypatch.setattr(os, "environ", os.environ.copy())
    for name in ("MONGODB_URI", "REDIS_URL", "TASKFLOW_ENV"):
        monkeypatch.delenv(name, raising=False)
    assert use_development_services(tmp_path) is None
    env = tmp_path / "dev" / "services.env"
    env.parent.mkdir()
    env.write_text(
        "MONGODB_URI=mongodb://127.0.0.1:4711/?replicaSet=rs0\n"
        "REDIS_URL=redis://127.0.0.1:4712/0\nFERRETDB_BACKEND=sqlite\n"
    )
    assert use_development_services(tmp_path) == env
    assert os.environ["MONGODB_URI"] == "mongodb://127.0.0.1:4711/?replicaSet=rs0"
    assert os.environ["REDIS_URL"] == "redis://127.0.0.1:4712/0"
    assert os.environ["TASKFLOW_ENV"] == "development"
    monkeypatch.setenv("MONGODB_URI", "mongodb://elsewhere:27017/")
    monkeypatch.delenv("REDIS_URL")
    assert use_development_services(tmp_path) is None  # one set: the operator chose


@pytest.mark.parametrize("command", [["projections", "status"], ["audit", "verify"]])
def test_an_unreachable_server_is_one_sentence_and_exit_code_3(
    tmp_path: Path, command: list[str]
) -> None:
    """No traceback: one line naming the server and what to check, exit code 3."""
    env = {
        **os.environ,
        "MONGODB_URI": f"mongodb://127.0.0.1:{closed_port()}/?replicaSet=rs0",
        "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
        "MONGODB_TIMEOUT_MS": "300",
        "REDIS_TIMEOUT_SECONDS": "0.3",
        "TASKFLOW_ENV": "development",
        "LOG_LEVEL": "ERROR",
    }
    done = subprocess.run(
        [sys.executable, "-m", "taskflow", *command],
        env=env,
        cwd=tmp_path,  # no .state here
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("taskflow:")]
    assert len(lines) == 1, done.stderr
    assert "cannot reach" in lines[0]
    assert "Traceback" not in done.stderr
