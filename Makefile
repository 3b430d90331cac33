# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# libtorch comes from the PyPI wheel torch==2.11.0 (what tch 0.24.0 expects), installed into a project-local venv.

VENV      ?= .venv
TORCH     := torch==2.11.0
STAMP     := $(VENV)/.torch-2.11.0
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)

CARGO ?= cargo

.PHONY: all venv build release test demo fmt clippy clean-venv notebooks notebook-check bench

# The notebooks' Python (pandas, matplotlib, nbclient), pinned in notebooks/requirements.txt.
NB_VENV   ?= .venv-notebooks
NB_STAMP  := $(NB_VENV)/.installed
# A small demo run the notebooks are checked against in `make test` (debug binary, a few minutes).
NB_CHECK  := out/notebook-check

all: build

venv: $(STAMP)

# The wheel is ~4.7 GB with its CUDA 13 dependencies (libtorch_cpu itself links libcudart), ~1-2 min to install.
$(STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet $(TORCH)
	@touch $@

build: $(STAMP)
	$(CARGO) build --workspace

release: $(STAMP)
	$(CARGO) build --release -p horizon-cli

test: $(STAMP)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace
	$(MAKE) notebook-check

$(NB_STAMP): notebooks/requirements.txt
	python3 -m venv $(NB_VENV)
	$(NB_VENV)/bin/python -m pip install --quiet -r notebooks/requirements.txt
	@touch $@

# Every notebook executed top to bottom against a small demo run (2 samples per category, 4 layers, the
# pruning sweep at 4 layers on 1 sample per category); the executed copies land in $(NB_CHECK)/notebooks.
notebook-check: $(STAMP) $(NB_STAMP)
	rm -rf $(NB_CHECK) && mkdir -p $(NB_CHECK)
	$(CARGO) run --quiet -p horizon-cli -- demo --out $(NB_CHECK) --per-category 2 --layers 0,2,4,6 \
		--bootstrap 200 --format png --prune-per-category 1 --prune-layers 1,3,5,7 > $(NB_CHECK)/demo.log 2>&1 \
		|| { tail -30 $(NB_CHECK)/demo.log; exit 1; }
	$(NB_VENV)/bin/python notebooks/execute.py --demo-out $(NB_CHECK) --to $(NB_CHECK)/notebooks

# The committed notebooks' outputs, from the full demo run (out/demo).
notebooks: demo $(NB_STAMP)
	$(NB_VENV)/bin/python notebooks/execute.py --demo-out out/demo --in-place

# `make bench` (not part of `make test`; a few minutes on 2 cores): the release binary against its PyTorch peers
# on the bundled horizon-large, each timed in the same run, values checked, ratios printed (BENCHMARKS.md):
# `horizon info` against the one-forward-per-variant procedure and the stored-inputs loop (keep-only and
# leave-out), then `horizon eval` against HF `generate`. Its Python is the fixture scripts' pinned stack
# (fixtures/requirements.txt), installed into $(VENV) the way the fixtures are; BENCH_PYTHON=path/to/python
# uses an interpreter that already has it instead.
BENCH_STAMP  := $(VENV)/.fixture-stack
BENCH_PYTHON ?= $(VENV)/bin/python
BENCH_DEPS   := $(if $(filter command line environment,$(origin BENCH_PYTHON)),,$(BENCH_STAMP))
BENCH_PER_CATEGORY ?= 1
BENCH_EVAL_LIMIT   ?= 50
BENCH_THREADS      ?= 2

$(BENCH_STAMP): fixtures/requirements.txt $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -r fixtures/requirements.txt
	@touch $@

bench: release $(BENCH_DEPS)
	$(BENCH_PYTHON) bench/bench_info.py --per-category $(BENCH_PER_CATEGORY) --mode keep-only --threads $(BENCH_THREADS) --out out/bench/info-keep-only
	$(BENCH_PYTHON) bench/bench_info.py --per-category $(BENCH_PER_CATEGORY) --mode leave-out --threads $(BENCH_THREADS) --out out/bench/info-leave-out
	$(BENCH_PYTHON) bench/bench_eval.py --limit $(BENCH_EVAL_LIMIT) --threads $(BENCH_THREADS) --out out/bench/eval

# The main job: information maps of both bundled models on the bundled benchmark, horizons per task and
# per model, all figures (out/demo/figures) and a printed summary; a rerun continues where it stopped.
demo: release
	./target/release/horizon demo --out out/demo

fmt:
	$(CARGO) fmt --all

# The GPU figures of BENCHMARKS.md ("GPU check") in one script, on a machine with a CUDA device and torch
# 2.11.0 (CUDA 13 wheel) but no Rust: build the release binary first and carry target/release/horizon.
# `make gpu-check DEVICE=cpu` is a dry run with tiny sizes; PYTHON picks the Python whose torch is used.
.PHONY: gpu-check
DEVICE ?= cuda
gpu-check:
	bench/gpu_check.sh $(DEVICE)
