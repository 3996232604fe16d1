#!/usr/bin/env bash
# The latency objective on a GPU host, one command: the stack comes up with the encoders on the GPU and the
# index on the GPU where FAISS can, then the same load as the CPU figures runs against it.
#
#   loadtest/gpu/container.sh      # production path; loadtest/gpu/run.sh is the no-container one
#
# What it does:
#   1. records the hardware (nvidia-smi, CPU) beside the results;
#   2. installs the project (make venv protos) and, when pip has it, faiss-gpu in place of faiss-cpu;
#   3. exports full-size models (real checkpoints when the hub is reachable, else architecture-identical
#      random weights: the report says which), renders the model repository for the GPU target (native
#      onnxruntime backend with the TensorRT fp16 accelerator, KIND_GPU) and serves it with NVIDIA's
#      Triton container;
#   4. starts the index service (device auto: GPU when FAISS reports one) and the gateway, generates and
#      ingests the demo catalog;
#   5. runs `python -m loadtest objective` (max text-search rate meeting p95 < 100 ms, re-rank 10 and 50 at
#      fixed rates, per-stage means), and stops everything it started.
#
# Needs: an NVIDIA driver, docker with the NVIDIA container toolkit, Python 3.10-3.12, make.
# Settings (environment): VAR (work directory, default var-gpu), TRITON_IMAGE, SOURCE (export source),
# PRODUCTS, RERANK_RATES, STEP_S, START_RATE, MAX_RATE.
set -euo pipefail
cd "$(dirname "$0")/../.."

VAR=${VAR:-var-gpu}
# Triton 2.51, the server version the embedded CPU default ships, as NVIDIA's container.
TRITON_IMAGE=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}
SOURCE=${SOURCE:-auto}
PRODUCTS=${PRODUCTS:-2000}
RERANK_RATES=${RERANK_RATES:-5,10,20}
STEP_S=${STEP_S:-60}
START_RATE=${START_RATE:-5}
MAX_RATE=${MAX_RATE:-2000}
PY=.venv/bin/python
OUT="$VAR/loadtest/objective"
CONTAINER=vitrine-triton-gpu
PIDS=()

die() { echo "loadtest/gpu/container.sh: $*" >&2; exit 2; }
say() { echo "[gpu] $*" >&2; }

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this script is for a GPU host"
nvidia-smi -L >/dev/null || die "nvidia-smi cannot see a GPU"
command -v docker >/dev/null || die "docker not found: Triton's GPU build runs from NVIDIA's container"
docker info >/dev/null 2>&1 || die "docker is not usable by this user"

mkdir -p "$OUT" "$VAR/logs"
{
  nvidia-smi
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  lscpu
} >"$OUT/hardware.txt" 2>&1

cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  docker rm -f "$CONTAINER" >/dev/null 2>&1
}
trap cleanup EXIT INT TERM

wait_for() {  # wait_for <what> <seconds> <command...>: poll a readiness probe until it passes or time runs out
  local what=$1 limit=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$what not ready within ${limit}s (logs: $VAR/logs)"
    sleep 1
  done
}

say "installing the project"
make venv protos
if "$PY" -m pip install -q faiss-gpu-cu12 2>"$VAR/logs/faiss-gpu.txt"; then
  "$PY" -m pip uninstall -q -y faiss-cpu || true
  "$PY" -m pip install -q --force-reinstall --no-deps faiss-gpu-cu12
fi
say "FAISS GPUs: $("$PY" -c 'import faiss; print(faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0)')"

say "exporting full-size models (source: $SOURCE) and rendering the GPU model repository"
[ -f "$VAR/artifacts/manifest.json" ] || "$PY" -m export --out "$VAR/artifacts" --source "$SOURCE" --size full
rm -rf "$VAR/model_repository"
"$PY" -m model_repository render --artifacts "$VAR/artifacts" --out "$VAR/model_repository" --target gpu

say "starting Triton ($TRITON_IMAGE) on the GPU"
# The Python-backend pre-processing models import this project's code and its tokenizer/image packages.
docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
docker run -d --name "$CONTAINER" --gpus all --shm-size 1g --network host \
  -v "$PWD/$VAR/model_repository:/models:ro" -v "$PWD:/src:ro" -e PYTHONPATH=/src "$TRITON_IMAGE" \
  bash -c "pip install -q 'numpy<2' pillow tokenizers && exec tritonserver --model-repository=/models \
    --grpc-port=8001 --http-port=8000 --metrics-port=8002 --metrics-config=summary_latencies=true \
    --allow-gpu-metrics=true --allow-cpu-metrics=true" >/dev/null
wait_for "Triton" 900 curl -sf http://127.0.0.1:8000/v2/health/ready
docker logs "$CONTAINER" >"$VAR/logs/tritonserver.log" 2>&1 || true

say "starting the index service and the gateway"
"$PY" -m index_service --port 50051 --metrics-port 9102 --data-dir "$VAR/index" --device auto \
  >"$VAR/logs/index.log" 2>&1 &
PIDS+=($!)
"$PY" -m gateway --port 50050 --metrics-port 9101 --triton-url 127.0.0.1:8001 --index-address 127.0.0.1:50051 \
  >"$VAR/logs/gateway.log" 2>&1 &
PIDS+=($!)
wait_for "gateway" 300 "$PY" -c "
import grpc, sys
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel('127.0.0.1:50050') as ch:
    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
sys.exit(0 if r.status == health_pb2.HealthCheckResponse.SERVING else 1)"

say "generating and ingesting the demo catalog ($PRODUCTS products)"
[ -f "$VAR/catalog/catalog.jsonl" ] || .venv/bin/vitrine catalog generate --n "$PRODUCTS" --out "$VAR/catalog"
.venv/bin/vitrine ingest "$VAR/catalog/catalog.jsonl" --quiet

say "running the objective measurement (${STEP_S}s per step)"
"$PY" -m loadtest objective --gateway 127.0.0.1:50050 --catalog "$VAR/catalog/catalog.jsonl" \
  --artifacts "$VAR/artifacts" --duration-s "$STEP_S" --rerank-duration-s "$STEP_S" \
  --start-rate "$START_RATE" --max-rate "$MAX_RATE" --max-steps 12 --rerank-rates "$RERANK_RATES" \
  --rerank-interval-s 1 --out "$OUT" | tee "$OUT/console.txt"
say "done: $OUT/objective.md (hardware in $OUT/hardware.txt)"
