# Two commands do everything on a fresh machine with Python 3.11:
#   make run   - set up, migrate, seed a demo, start the product
#   make test  - set up and run the whole test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# PostgreSQL URL for the suite's second database pass (CI's and this machine's server).
TEST_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/test

.PHONY: venv run test test-fast lint bench clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed

run: venv
	$(PY) manage.py migrate --no-input
	@echo
	@echo "FedHealth core is ready. Try a federated experiment in one process:"
	@echo "  $(PY) manage.py simulate --generate 4"
	@echo "  $(PY) manage.py generate_sample --sites 3 --rows 2000 --out var/sample"
	@echo "Starting the development server on http://127.0.0.1:8000/ (admin at /admin/)"
	DEBUG=1 $(PY) manage.py runserver 127.0.0.1:8000

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
