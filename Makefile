# Two commands do everything on a fresh machine with Python 3.11:
#   make run   - set up, migrate, seed a demo, start the product
#   make test  - set up and run the whole test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# PostgreSQL URL for the suite's second database pass (CI's and this machine's server).
TEST_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/test

.PHONY: venv setup run test test-fast lint bench clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed

# Local settings, so that the README's commands run as printed in any shell: DEBUG on and
# a generated key (settings read .env). Written only when missing: an existing .env, a
# production one included, is never overwritten.
.env: | $(BIN)/.installed
	@umask 077; printf '# Written by make run for local use: DEBUG on, a generated key.\nDEBUG=1\nSECRET_KEY=%s\n' \
		"$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))')" > $@
	@echo "wrote .env for local use (DEBUG=1 and a generated SECRET_KEY)"

# Everything `make run` does before starting the servers.
setup: venv .env
	mkdir -p var/staticfiles
	DEBUG=1 $(PY) manage.py migrate --no-input
	DEBUG=1 $(PY) manage.py seed_demo

run: setup
	@echo
	@echo "FedHealth on http://127.0.0.1:$${PORT:-8000}/  (admin: http://127.0.0.1:$${PORT:-8000}/admin/)"
	@echo "Demo logins above (password fedhealth-demo). Start the demo experiment with"
	@echo "  $(PY) manage.py experiment start 1      (or the Start action in the admin)"
	@echo "Headless, in one process:  $(PY) manage.py simulate --generate 4"
	@echo
	DEBUG=1 PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/honcho start

# The whole suite: SQLite (the embedded default), then the database-backed tests again
# on PostgreSQL.
test: venv
	$(PY) -m pytest
	DATABASE_URL=$(TEST_POSTGRES_URL) $(PY) -m pytest -m django_db

test-fast: venv
	$(PY) -m pytest -x -q -m "not integration"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) var .pytest_cache
