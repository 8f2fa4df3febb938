# The README's two commands: `make demo` trains the default experiment on CPU, `make test` runs the suite.
# Both create .venv if it is missing and install the package (exact tested versions from constraints.txt).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
DEMO_WORKDIR ?= workdirs/demo
DEMO_CONFIG ?= experiments/configs/lm_chars.py:runlocal
# loadfile: a module's tests share one worker, so expensive module fixtures (multi-process runs) run once.
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=15
# libtpu (installed for AOT compiles) would otherwise probe for a TPU on every start.
export JAX_PLATFORMS ?= cpu
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test test-fast install install-test clean
.DEFAULT_GOAL := demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml constraints.txt
	$(PIP) install --quiet -c constraints.txt -e .
	@touch $@

# recbole is installed without its requirements only for the MovieLens-100k files its wheel ships (the
# movielens_100k builder reads them and never imports recbole, whose requirements pull in another stack).
$(VENV)/.installed-test: $(VENV)/.installed requirements-neuralforecast.txt
	$(PIP) install --quiet -c constraints.txt -e ".[test,parity,tpu,claims]"
	$(PIP) install --quiet --no-deps -r requirements-neuralforecast.txt
	$(PIP) install --quiet --no-deps recbole==1.2.0
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	rm -rf $(DEMO_WORKDIR)
	$(BIN)/python -m experiments.main --config=$(DEMO_CONFIG) --workdir=$(DEMO_WORKDIR)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests

# The inner loop: everything but the `slow` tests (training runs, TPU compiles, processes, notebooks).
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "not slow" tests

clean:
	rm -rf $(VENV) workdirs .pytest_cache
