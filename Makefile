# Two commands do all the set-up on a fresh machine (see README):
#   make demo   – create the environment if needed, then run the main job on the synthetic cohort
#   make test   – create the environment if needed, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=
# Text files and subprocess output are UTF-8 whatever the machine's locale (CI may run in an
# ASCII "C" locale).
export PYTHONUTF8 = 1

.PHONY: install demo test test-slow lint clean

# The stamp depends on the files that define the environment, so editing them reinstalls.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# PyRadiomics 3.0.1 has no wheel for Python 3.11 and must build against the numpy already
	# installed (its 3.1.0 sdist is mislabelled); torch/torchvision are pinned to the builds on disk.
	$(BIN)/python -m pip install --quiet numpy setuptools wheel versioneer
	$(BIN)/python -m pip install --quiet --no-build-isolation pyradiomics==3.0.1
	$(BIN)/python -m pip install --quiet -e '.[test,radiomics]'
	# Debian's headless Chromium renders the report in its test (which skips without it);
	# root installs it, others through `sudo -n` when they may.
	command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null 2>&1; then SUDO='sudo -n'; else SUDO=false; fi; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	} || echo "chromium not installed: the report-rendering test will skip"
	# Debian's libRmath gives GSVA's Poisson kernel R's own ppois (SciPy stands in without it, and
	# the strict GSVA-vs-R Poisson test skips); same root/sudo logic as for chromium.
	$(BIN)/python -c "import ctypes.util as u; raise SystemExit(u.find_library('Rmath') is None)" || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null 2>&1; then SUDO='sudo -n'; else SUDO=false; fi; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends r-mathlib; \
	} || echo "r-mathlib not installed: GSVA's Poisson kernel uses SciPy (see targets/rmath.py)"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/stromalens demo --out $(DEMO_OUT)

test: install
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -n 2 -m slow $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
