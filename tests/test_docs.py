"""Checks on the repository's own documentation: no server needed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Design notes kept outside the repository: a reader of the repository cannot follow a reference
# to them, so what the project relies on is written in docs/ (docs/design.md). Spelled in pieces
# so that this file does not cite them itself.
_OUTSIDE = re.compile("|".join([r"\bDESIGN" + r"\.md", r"\bSTYLE" + r"\.md", r"\.\./" + "shared"]))


def tracked_files() -> list[Path]:
    """Every file git tracks in the repository."""
    git = shutil.which("git")
    assert git is not None, "git lists the repository's files"
    listed = subprocess.run(
        [git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name]


def test_no_tracked_file_cites_a_document_outside_the_repository() -> None:
    """No code comment, doc or script sends its reader to a file the repository lacks."""
    files = tracked_files()
    assert ROOT / "README.md" in files  # the listing really is the repository's
    citing = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        if path.is_file()
        for number, line in enumerate(
            path.read_bytes().decode("utf-8", errors="replace").splitlines(), start=1
        )
        if _OUTSIDE.search(line)
    ]
    assert citing == []
