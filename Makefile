# Set-up and entry points. `make demo` and `make test` create the virtualenv on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SNAKEMAKE := $(BIN)/snakemake
CORES ?= all

.PHONY: venv demo demo-all report test dry-run study-fp16

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (the pinned stack is built and tested with Python 3.11; set PYTHON=...)" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(STAMP)

## The offline demo: Table IV's whole DAG on scikit-learn's digits, on the CPU.
demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(SNAKEMAKE) table4 --cores $(CORES) --configfile config/demo.yaml
	@echo "Table: results/demo/tables/table4.md   Figure: results/demo/figures/table4_temperature.png"

## All six tables, the figures and the Appendix B simulations, offline on the CPU.
demo-all: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(SNAKEMAKE) all --cores $(CORES) --configfile config/demo.yaml
	@echo "Tables: results/demo/tables/   Figures: results/demo/figures/"

## The fp16 study (issue 27) on the CPU: TRADES+LTD at T = 5 and 20, fp16-EMULATED against
## fp32, WRN-10-2 on real CIFAR-10 at 32 px (../shared/data); about 45 minutes on 2 cores.
study-fp16: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(SNAKEMAKE) table8 --cores $(CORES) --configfile config/cifar10_jpeg.yaml config/study_fp16.yaml
	@echo "Table: results/study_fp16/tables/table8.md   Curves: results/study_fp16/figures/table8_curves.png"

## The HTML report of the demo's run (Snakemake --report): after `make demo`; after
## `make demo-all`: make report REPORT_TARGETS=all
REPORT_TARGETS ?= table4
report: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(SNAKEMAKE) $(REPORT_TARGETS) --report results/demo/report.html --configfile config/demo.yaml
	@echo "Report: results/demo/report.html"

## The test suite (CI runs exactly this). Pytest's exit code 5 (no test collected) fails too.
test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -ra; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$rc

## What the paper config would run (no GPU needed to plan).
dry-run: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(SNAKEMAKE) all -n --cores all --resources gpu=4

## One prepared check of a GPU machine (docs/performance.md, "Checking a GPU machine"): the
## CUDA tests, what a training step and AutoAttack cost, projected GPU-hours; about 6
## minutes on one H100. Needs no virtualenv or Snakemake: on a bare machine it runs with
## python3 (pyautoattack installed from a carried wheel). Outputs: $(GPU_CHECK_OUT)/.
.PHONY: gpu-check
GPU_CHECK_OUT ?= results/gpu_check
GPU_CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(GPU_CHECK_PYTHON) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

## The quick reproduction (config/quick.yaml; README, "The quick reproduction"): Table IV's
## shape on real CIFAR-10 on one GPU, PreAct ResNet-18 for 24 epochs, before the full run.
## Prints its budget (`snakemake budget`), then runs it. Offline (no download of CIFAR-10):
##   make quick QUICK_OVERLAYS=config/cifar10_jpeg.yaml
.PHONY: quick
QUICK_OVERLAYS ?=
QUICK_GPUS ?= 1
quick: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(SNAKEMAKE) budget --cores 1 --configfile config/quick.yaml $(QUICK_OVERLAYS)
	PATH="$(abspath $(BIN)):$$PATH" $(SNAKEMAKE) all --cores $(CORES) --resources gpu=$(QUICK_GPUS) --configfile config/quick.yaml $(QUICK_OVERLAYS)
	@echo "Table: results/quick/tables/table4.md   Figures: results/quick/figures/   Evaluations: results/quick/tables/evaluation_report.md"
