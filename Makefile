# The two commands a newcomer needs (see README): `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup serve test test-shifted lint bench clean

$(BIN)/mailflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/mailflow

setup: $(BIN)/mailflow

serve: setup
	$(BIN)/mailflow serve

# Both cores: pytest-xdist runs the suite in 2 worker processes. Tests marked
# xdist_group("heavy") (the browser tests, the SIGKILL test) share one worker, in turn.
PYTEST := $(BIN)/pytest -n 2 --dist loadgroup

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST)

# The time-bomb guard: the whole suite again with every clock the tests use 400 days ahead
# (in process through time-machine; subprocesses get the test's clock with `mailflow --now`).
test-shifted: setup
	MAILFLOW_TEST_SHIFT_DAYS=400 $(PYTEST)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .hypothesis
