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

# Until the bundled trained models land, the demo runs the whole pipeline on the tiny random fixture
# checkpoint (mechanics only: a random model has no horizon to find) over part of the bundled benchmark.
DEMO_MODEL := fixtures/llava/models/llava-tiny
DEMO_IMAGE := fixtures/llava/images/square.png
DEMO_BENCH := data/synthetic/test.parquet
DEMO_OUT   := out/demo
demo: release
	./target/release/horizon generate --model $(DEMO_MODEL) --image $(DEMO_IMAGE) \
		--prompt "What color is the circle?" --max-new-tokens 16
	./target/release/horizon forward --model $(DEMO_MODEL) --image $(DEMO_IMAGE) \
		--prompt "What color is the circle?" --save-logits $(DEMO_OUT)/logits.safetensors
	./target/release/horizon info --model $(DEMO_MODEL) --bench $(DEMO_BENCH) --limit 50 \
		--layers all --out $(DEMO_OUT)/info --resume
	./target/release/horizon horizon --info $(DEMO_OUT)/info --out $(DEMO_OUT)/horizon
	./target/release/horizon plot --info $(DEMO_OUT)/info --out $(DEMO_OUT)/figures

fmt:
	$(CARGO) fmt --all
