# Two entry points: `make reproduce` (install + run the embedded default) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
CORES   ?= 2
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install reproduce test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned: otherwise lm-eval/accelerate pull a multi-GB CUDA build. (pip compiles the
# bytecode at install: with PYTHONDONTWRITEBYTECODE set, as on this project's machines, --no-compile
# made every job compile its imports from source, twice as slow.)
$(VENV)/.installed: pyproject.toml $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

reproduce: install
	$(BIN)/snakemake --cores $(CORES) --snakefile Snakefile --configfile config/config.yaml
	mkdir -p results/report
	$(BIN)/snakemake --cores 1 --snakefile Snakefile --configfile config/config.yaml --report results/report/snakemake_report.html

test: install
	$(BIN)/ruff check cast tests benchmarks
	$(BIN)/snakemake --lint --snakefile Snakefile --configfile config/test.yaml
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

bench: install
	$(BIN)/python benchmarks/bench_adams.py

clean:
	rm -rf results .snakemake
