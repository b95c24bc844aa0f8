# Two commands for a new user: `make demo` and `make test`.
# Both create .venv when missing and install the package with pinned
# dependencies (constraints.txt keeps numpy below 1.24 for MXNet 1.9.1).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

ART_VENV := benchmarks/.venv-art
AA_VENV  := benchmarks/.venv-autoattack

.PHONY: demo test test-all bench bench-speed bench-tables bench-art bench-autoattack bench-torch reliability zoo-matrix install clean

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[cpu,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gluon-robust demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The slow tests too (strength checks on the reference model, long runs), and a 10x fuzz budget.
test-all: $(STAMP)
	GLUON_ROBUST_FUZZ_SCALE=10 $(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

# The reliability table: every bad-input, file-safety, fault and fuzz case counted (FUZZ_SCALE x the default
# budget, fresh random cases), written to benchmarks/results/reliability.json and README.md.
FUZZ_SCALE ?= 25
RELIABILITY_LOG := runs/reliability.jsonl
reliability: $(STAMP)
	mkdir -p runs && rm -f $(RELIABILITY_LOG)
	GLUON_ROBUST_RELIABILITY_LOG=$(CURDIR)/$(RELIABILITY_LOG) GLUON_ROBUST_FUZZ_SCALE=$(FUZZ_SCALE) \
		$(BIN)/python -m pytest -q tests/test_validation.py tests/test_file_safety.py tests/test_faults.py tests/test_fuzz.py
	$(BIN)/python benchmarks/reliability_table.py --log $(RELIABILITY_LOG) --out benchmarks/results \
		--readme README.md --scale $(FUZZ_SCALE)

# Every benchmark: JSON with its provenance (git revision, cores, versions) in benchmarks/results,
# then the README tables regenerated from it. The comparisons with ART and reference AutoAttack
# run in their own environments (bench-art, bench-autoattack: over an hour on one core).
bench: bench-speed bench-art bench-autoattack
	$(BIN)/python benchmarks/tables.py --readme README.md

bench-speed: $(STAMP)
	$(BIN)/python benchmarks/bench_folding.py --out benchmarks/results
	$(BIN)/python benchmarks/bench_attacks.py --out benchmarks/results
	$(BIN)/python benchmarks/bench_blackbox.py --out benchmarks/results
	$(BIN)/python benchmarks/bench_training.py --out benchmarks/results
	$(BIN)/python benchmarks/bench_defenses.py --eps 0.3 --out benchmarks/results
	$(BIN)/python benchmarks/bench_defenses.py --eps 0.1 --out benchmarks/results
	$(BIN)/python benchmarks/bench_smoothing.py --out benchmarks/results
	$(BIN)/python benchmarks/bench_detection.py --out benchmarks/results
	$(BIN)/python benchmarks/bench_distributed.py --out benchmarks/results
	$(BIN)/python benchmarks/bench_memory.py --out benchmarks/results

# The README tables from the committed JSON (no benchmark is run).
bench-tables: $(STAMP)
	$(BIN)/python benchmarks/tables.py --readme README.md

# Every GluonCV image classifier checked (fold, gradient, PGD through the CLI): resumes an
# interrupted sweep (--update; ZOO_ARGS="--only NAME,..." re-runs some), then writes docs/zoo.md.
ZOO_ARGS ?= --update
zoo-matrix: $(STAMP)
	OMP_NUM_THREADS=1 MXNET_OMP_MAX_THREADS=1 nice -n 10 $(BIN)/python benchmarks/zoo_matrix.py $(ZOO_ARGS)
	$(BIN)/python benchmarks/zoo_matrix.py --markdown docs/zoo.md

# ART 1.19.1 (its MXNet classifier) lives only in the benchmark's own environment.
$(ART_VENV)/.installed: setup.py constraints.txt
	test -x $(ART_VENV)/bin/python || $(PYTHON) -m venv $(ART_VENV)
	$(ART_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[cpu]" \
		adversarial-robustness-toolbox==1.19.1 "scikit-learn<1.4"
	touch $@

bench-art: $(STAMP) $(ART_VENV)/.installed
	$(ART_VENV)/bin/python benchmarks/bench_art.py --out benchmarks/results
	$(BIN)/python benchmarks/tables.py --readme README.md

# Reference AutoAttack (pyautoattack 0.2.0, PyTorch CPU) lives only in the benchmark's own environment.
$(AA_VENV)/.installed: setup.py constraints.txt
	test -x $(AA_VENV)/bin/python || $(PYTHON) -m venv $(AA_VENV)
	$(AA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[cpu]" \
		torch==2.13.0 pyautoattack==0.2.0
	touch $@

# Both bundled models, eps 0.1 and 0.3, 200 digits, one thread each side (over an hour); gluon_robust
# runs in .venv, because GluonCV does not import next to PyTorch 2.
bench-autoattack: $(STAMP) $(AA_VENV)/.installed
	nice -n 10 $(AA_VENV)/bin/python benchmarks/vs_autoattack.py --ours-python $(BIN)/python --out benchmarks/results
	$(BIN)/python benchmarks/tables.py --readme README.md

# torchattacks joins the AutoAttack benchmark's environment without its dependencies (torchvision does not
# import with the CPU wheel), numpy and scipy being pinned by constraints.txt.
$(AA_VENV)/.torchattacks: $(AA_VENV)/.installed
	$(AA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt --no-deps \
		torchattacks==3.5.1
	touch $@

# PGD-10 against torchattacks and torch.compile (one thread, then two), then black-box cost per query.
# TORCH_ARGS="--batch-size 8 --repeats 2" for a shorter run.
TORCH_ARGS ?=
bench-torch: $(STAMP) $(AA_VENV)/.torchattacks
	nice -n 10 $(BIN)/python benchmarks/bench_vs_torch.py --threads 1 --torch-python $(AA_VENV)/bin/python \
		--out benchmarks/results $(TORCH_ARGS)
	nice -n 10 $(BIN)/python benchmarks/bench_vs_torch.py --threads 2 --torch-python $(AA_VENV)/bin/python \
		--out benchmarks/results --readme README.md $(TORCH_ARGS)
	nice -n 10 $(BIN)/python benchmarks/bench_blackbox_overhead.py --out benchmarks/results --readme README.md

clean:
	rm -rf $(VENV) $(ART_VENV) $(AA_VENV) runs build *.egg-info
