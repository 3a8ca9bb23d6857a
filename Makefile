# Two commands on a fresh machine:  make run  (serve on :8000)  and  make test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000

.PHONY: run test test-fast install install-dev system-deps bench profile vendor lint clean

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

# Packages only the browser tests use (axe-core), from tests/browser/package-lock.json.
tests/browser/node_modules/.installed: tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## Serve in the foreground on http://127.0.0.1:$(PORT) (SQLite, in-process broker by default).
run: install
	$(BIN)/flask --app webapp init-db
	PORT=$(PORT) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

## Install what the tests need (Python packages; redis-server, PostgreSQL and Chromium from
## Debian's packages; axe-core from the npm registry) and run them all. Nothing needs to be
## running: the tests start their own redis-server and PostgreSQL on free ports (never the
## machine's) and stop them.
test: install-dev system-deps tests/browser/node_modules/.installed
	$(BIN)/python -m pytest

## The fast layer only: no servers, no browser.
test-fast: install-dev
	$(BIN)/python -m pytest -m "not live and not browser"

system-deps:
	scripts/system-deps.sh

## The benchmark: boots gunicorn + Redis, prints a table, writes bench/results/.
bench: install-dev system-deps
	$(BIN)/python -m bench.run

## Where a worker's CPU goes at 20,000 deliveries/s (py-spy): writes bench/results/profile.txt.
profile: install-dev system-deps
	$(BIN)/python -m bench.profile

## Lint (ruff: pyflakes, pycodestyle, bugbear).
lint: install-dev
	$(BIN)/ruff check webapp tests bench examples wsgi.py gunicorn.conf.py

## Refresh the vendored htmx files from the npm registry.
vendor:
	scripts/vendor-frontend.sh

clean:
	rm -rf $(VENV) .pytest_cache artifacts
