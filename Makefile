# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# libtorch comes from the PyPI wheel torch==2.11.0 (what tch 0.24.0 expects), installed into a project-local venv.

VENV      ?= .venv
TORCH     := torch==2.11.0
STAMP     := $(VENV)/.torch-2.11.0
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)

CARGO ?= cargo

.PHONY: all venv build release test demo fmt clippy clean-venv

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

# The main job: information maps of both bundled models on the bundled benchmark, horizons per task and
# per model, all figures (out/demo/figures) and a printed summary; a rerun continues where it stopped.
demo: release
	./target/release/horizon demo --out out/demo

fmt:
	$(CARGO) fmt --all
