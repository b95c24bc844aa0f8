# Two commands for a new user: `make demo` and `make test`.
# Both create .venv when missing and install the package with pinned
# dependencies (constraints.txt keeps numpy below 1.24 for MXNet 1.9.1).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-all bench install clean

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[cpu,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gluon-robust demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The slow tests too (strength checks on the reference model, long runs).
test-all: $(STAMP)
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_folding.py --out benchmarks/results

clean:
	rm -rf $(VENV) runs build *.egg-info
