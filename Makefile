# One command per habit: make dev, make test, make check, make lint, make bench; CI runs what a
# person runs.
.PHONY: dev test check fuzz lint bench bench-scale screenshots services-stop

dev:            ## run TaskFlow (local services + API + projector)
	scripts/dev.sh

test:           ## the whole suite: ruff, mypy --strict, import-linter, pytest on real local servers
	scripts/test.sh

check:          ## the fast loop: the static checks and the tests that need no servers (< 1 min)
	scripts/bootstrap.sh
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy && .venv/bin/lint-imports
	TASKFLOW_ENV=development .venv/bin/pytest -q -m "not servers"

fuzz:           ## the long schemathesis run: 500 random cases per operation (docs/reliability.md)
	TASKFLOW_FUZZ=1 scripts/test.sh tests/test_openapi.py -k long_fuzz

screenshots:    ## the console's browser tests, keeping their screenshots in docs/screenshots
	TASKFLOW_SCREENSHOTS=docs/screenshots scripts/test.sh tests/test_console_browser.py

lint:           ## ruff and mypy only
	scripts/bootstrap.sh
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy && .venv/bin/lint-imports

bench:          ## benchmarks against the local servers (docs/benchmarks.md)
	scripts/bench.sh

bench-scale:    ## does request cost grow with the log? 1k/10k/100k commits (docs/benchmarks.md)
	scripts/bench-scale.sh

services-stop:  ## stop local services left running by an interrupted run
	scripts/services.sh stop dev; scripts/services.sh stop test; scripts/services.sh stop scale
