# Developer entry points. `make run` and `make test` create the virtual environment on first use.
#   make run                      the main job: a SPEAR run on the built-in offline world (fedspear/configs/default.yaml)
#   make run ARGS="fl.rounds=3"   the same with config overrides (any `fedspear run` arguments)
#   make test                     the whole test suite incl. slow, Flower and browser tests (what CI runs)

VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install run test lint bench clean-venv

install: $(STAMP)

# Re-installs only when pyproject.toml changes (the stamp is newer otherwise). torch==2.13.0 comes from the
# wheel directory pip is configured with (find-links).
$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -e '.[dev,flower,serve]'
	touch $(STAMP)

run: install
	$(VENV)/bin/fedspear run $(ARGS)

test: install
	$(PYTHON) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

bench: install
	@echo "make bench: no benchmark is wired up yet (see ../shared/bench/bench.yaml)"

clean-venv:
	rm -rf $(VENV)
