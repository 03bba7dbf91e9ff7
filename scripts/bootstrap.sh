#!/usr/bin/env bash
# Creates .venv with TaskFlow and its dev tools, only when missing or when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
[ -f "$stamp" ] && exit 0
echo "[bootstrap] installing TaskFlow and its dev tools into .venv" >&2
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev,bench]'
rm -f .venv/.installed-*
touch "$stamp"
