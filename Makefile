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
## fp32, WRN-10-2 on real CIFAR-10 at 32 px (../shared/data); 24 minutes on 2 cores (docs/fp16_study.md).
study-fp16: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(SNAKEMAKE) table8 --cores $(CORES) --configfile config/cifar10_jpeg.yaml config/study_fp16.yaml
	@echo "Table: results/study_fp16/tables/table8.md   Curves: results/study_fp16/figures/table8_curves.png"

## The HTML report of the demo's run (Snakemake --report): after `make demo`; after
## `make demo-all`: make report REPORT_TARGETS=all
REPORT_TARGETS ?= table4
report: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(SNAKEMAKE) $(REPORT_TARGETS) --report results/demo/report.html --configfile config/demo.yaml
	@echo "Report: results/demo/report.html"

## The test suite (CI runs exactly this), its 25 slowest tests listed at the end (where its
## time goes). Pytest's exit code 5 (no test collected) fails too.
test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -ra --durations=25; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$rc

## What the paper config would run (no GPU needed to plan).
dry-run: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(SNAKEMAKE) all -n --cores all --resources gpu=4

## One check of a GPU machine in at most 8 minutes, on the library's own loop
## (benchmarks/device_check.py; docs/performance.md, "Checking a GPU machine"): five capped
## stages, each written to $(GPU_CHECK_OUT)/ as it ends. Needs no virtualenv or Snakemake:
## on a bare machine it runs with python3 (pyautoattack and the CIFAR-10 archive carried in
## .carry/, made by `make device-carry`). On the CPU: make gpu-check GPU_CHECK_ARGS=--dry
.PHONY: gpu-check device-carry
GPU_CHECK_OUT ?= results/device_check
GPU_CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	PYTHONPATH="$(CURDIR)$(if $(wildcard $(CURDIR)/.carry/site),:$(CURDIR)/.carry/site)$${PYTHONPATH:+:$$PYTHONPATH}" $(GPU_CHECK_PYTHON) benchmarks/device_check.py --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

## What a device run carries besides the tree (git-ignored .carry/): pyautoattack without
## its 45 MB example checkpoint, and CIFAR-10's JPEG archive (CIFAR_ARCHIVE).
CIFAR_ARCHIVE ?= $(firstword $(wildcard ../shared/data/cifar10-jpeg.tar.gz shared/data/cifar10-jpeg.tar.gz data/cifar10-jpeg.tar.gz))
device-carry: $(STAMP)
	@test -n "$(CIFAR_ARCHIVE)" || { echo "error: no cifar10-jpeg.tar.gz found; set CIFAR_ARCHIVE=PATH" >&2; exit 1; }
	rm -rf .carry && mkdir -p .carry/site
	cp -r "$$($(BIN)/python -c 'import pyautoattack, os; print(os.path.dirname(pyautoattack.__file__))')" .carry/site/
	rm -rf .carry/site/pyautoattack/examples .carry/site/pyautoattack/__pycache__
	cp "$(CIFAR_ARCHIVE)" .carry/cifar10-jpeg.tar.gz
	du -sh .carry

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
