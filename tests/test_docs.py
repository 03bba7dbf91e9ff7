"""Checks on the repository's own documentation: no server needed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from taskflow.settings import SECRET_FILES, Settings

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


def configuration_rows() -> dict[str, str]:
    """The README's Configuration table: each row's first cell, by the variables it names."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = line.split("|")
        if not line.startswith("| `") or len(cells) < 4:
            continue
        for name in re.findall(r"`([^`]+)`", cells[1]):
            rows[name] = line
    return rows


def test_the_readme_documents_every_setting_and_only_settings() -> None:
    """Every field of `Settings` has a row in the README's Configuration table, and every
    variable the table names is a field (a `<NAME>_FILE` row may describe the file variants)."""
    documented = {name for name in configuration_rows() if re.fullmatch(r"[A-Z][A-Z0-9_]*", name)}
    fields = {name.upper() for name in Settings.model_fields}
    assert sorted(fields - documented) == [], "settings missing from the README's table"
    assert sorted(documented - fields) == [], "README rows naming no setting"


def test_the_readme_names_every_secret_that_a_file_may_hold() -> None:
    """The `<NAME>_FILE` row lists exactly the settings read from files (settings.SECRET_FILES)."""
    row = configuration_rows()["<NAME>_FILE"]
    listed = set(re.findall(r"`([A-Z][A-Z0-9_]*)`", row))
    assert listed == {name.upper() for name in SECRET_FILES}


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A section cited by name, as in (docs/<page>.md, "<section>"), the comma optional.
_CITED_SECTION = re.compile(r"(docs/[\w.-]+\.md),? \"([^\"\n]+)\"")


def heading_anchors(markdown: Path) -> dict[str, str]:
    """The headings of a Markdown file by the anchor GitHub gives each (fenced code skipped)."""
    anchors: dict[str, str] = {}
    fenced = False
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip()
        anchor = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        suffix, number = anchor, 0
        while suffix in anchors:
            number += 1
            suffix = f"{anchor}-{number}"
        anchors[suffix] = title
    return anchors


def markdown_links() -> list[tuple[Path, str]]:
    """Every relative link of every tracked Markdown file, outside fenced code."""
    links: list[tuple[Path, str]] = []
    for path in tracked_files():
        if path.suffix != ".md":
            continue
        fenced = False
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                fenced = not fenced
            if not fenced:
                links += [(path, target) for target in _LINK.findall(line) if ":" not in target]
    return links


def test_every_link_between_the_docs_reaches_its_file_and_section() -> None:
    """A relative Markdown link names a file that exists and, after `#`, one of its headings."""
    broken = []
    for source, target in markdown_links():
        name, _, anchor = target.partition("#")
        resolved = (source.parent / name).resolve() if name else source
        if not resolved.is_file() or (anchor and anchor not in heading_anchors(resolved)):
            broken.append(f"{source.relative_to(ROOT)}: {target}")
    assert broken == []


def test_every_section_cited_by_name_exists() -> None:
    """`docs/<page>.md, "<section>"` in a comment or a doc names a heading of that page."""
    missing = []
    for path in tracked_files():
        if not path.is_file() or path.suffix not in {".py", ".md", ".sh", ".toml", ".yml"}:
            continue
        for doc, section in _CITED_SECTION.findall(path.read_text(encoding="utf-8")):
            titles = heading_anchors(ROOT / doc).values() if (ROOT / doc).is_file() else []
            if not any(section.lower() in title.lower() for title in titles):
                missing.append(f"{path.relative_to(ROOT)}: {doc}, {section!r}")
    assert missing == []
