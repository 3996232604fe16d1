#!/usr/bin/env bash
# GPU figures without a container or a registry, in one command that ends within ~10 minutes:
#
#   loadtest/gpu/run.sh            # or: make loadtest-gpu
#
# The embedded tritonserver of the nvidia-pytriton wheel is a CUDA build; the `gpu-embedded` rendering
# keeps every model of the CPU default and moves the encoders to KIND_GPU, where they run their ONNX
# graphs through onnxruntime-gpu, or, where no onnxruntime-gpu wheel is carried, the export's TorchScript
# fp16 traces on PyTorch CUDA (validated against fp32 at export). What it does:
#   1. names the hardware (nvidia-smi, CPU) beside the results;
#   2. installs onnxruntime-gpu and faiss-gpu from wheels carried in $WHEELS, if that folder exists
#      (pip --no-index: nothing is downloaded), into the Python environment $PY;
#   3. exports full-size towers (architecture-identical seeded random weights unless $SOURCE names a
#      checkpoint directory: the report says which) with their fp16 traces, unless $VAR/artifacts
#      already holds an export, then runs the GPU-marked tests where pytest is installed
#      ($OUT/gpu-tests.txt);
#   4. benchmarks.triton on the gpu-embedded repository: text, image and re-rank-50 throughput, p50, p95
#      at a few concurrencies;
#   5. `vitrine up --device gpu` (index on the GPU where faiss-gpu is installed) over a demo catalog, then
#      the light open-loop generator at a few rates: gateway text search p50/p95/p99, the gateway's own
#      histograms, the generator's CPU;
#   6. stops everything it started. Results: $OUT/gpu.md (and the raw JSON beside it).
#
# Settings (environment): VAR (default var-gpu), PY (default .venv/bin/python, else python3), WHEELS,
# SOURCE (default random), PRODUCTS (default 500), RATES (default 50,100,200,400), STEP_S (default 20).
set -euo pipefail
cd "$(dirname "$0")/../.."

VAR=${VAR:-var-gpu}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
WHEELS=${WHEELS:-loadtest/gpu/wheels}
SOURCE=${SOURCE:-random}
PRODUCTS=${PRODUCTS:-500}
RATES=${RATES:-50,100,200,400}
STEP_S=${STEP_S:-20}
OUT=${OUT:-$VAR/gpu}
export PIP_NO_INDEX=1 PYTHONUNBUFFERED=1  # never reach a registry from here
UP_PID=""

die() { echo "loadtest/gpu/run.sh: $*" >&2; exit 2; }
say() { echo "[gpu $(date +%T)] $*" >&2; }

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this script is for a GPU host"
nvidia-smi -L >/dev/null || die "nvidia-smi cannot see a GPU"
"$PY" -c "import tritonclient, onnxruntime, faiss" 2>/dev/null \
  || die "$PY lacks the project's packages: run it with PY=<a Python where \`pip install -e .[loadtest]\` was done>"

mkdir -p "$OUT" "$VAR/logs"
{ nvidia-smi; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; lscpu; } >"$OUT/hardware.txt" 2>&1

cleanup() {
  set +e
  if [ -n "$UP_PID" ]; then kill -TERM "$UP_PID" 2>/dev/null; wait "$UP_PID" 2>/dev/null; fi
}
trap cleanup EXIT INT TERM

if [ -d "$WHEELS" ]; then
  say "installing carried wheels from $WHEELS (no index)"
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl >"$VAR/logs/wheels.txt" 2>&1 \
    || say "some carried wheels did not install: see $VAR/logs/wheels.txt"
fi
"$PY" - <<'EOF' | tee "$OUT/providers.txt" >&2
import faiss, onnxruntime as ort
print("onnxruntime", ort.__version__, "providers:", ", ".join(ort.get_available_providers()))
print("faiss GPUs:", faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0)
if "CUDAExecutionProvider" not in ort.get_available_providers():
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("neither onnxruntime's CUDA provider nor PyTorch CUDA: carry an onnxruntime-gpu wheel")
    print("encoders: PyTorch", torch.__version__, "CUDA fp16 traces (no onnxruntime-gpu)")
else:
    print("encoders: onnxruntime CUDA provider")
EOF

if [ ! -f "$VAR/artifacts/manifest.json" ]; then
  say "exporting full-size towers (source: $SOURCE) with their fp16 traces"
  timeout 300 "$PY" -m export --out "$VAR/artifacts" --source "$SOURCE" --size full --torch-fp16
fi

if "$PY" -c "import pytest" 2>/dev/null; then
  say "GPU-marked tests (CUDA sessions, the fp16 traces against fp32)"
  timeout 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -15 | tee "$OUT/gpu-tests.txt" >&2 || true
fi

say "text, image and re-rank throughput through Triton (gpu-embedded)"
timeout 240 "$PY" -m benchmarks.triton --artifacts "$VAR/artifacts" --target gpu-embedded --skip-engines \
  --variants on --concurrency 1,8,32 --rounds 1 --json "$OUT/triton.json" | tee "$OUT/triton.md"

say "the stack on the GPU (vitrine up --device gpu, $PRODUCTS products)"
"$PY" -m operations.cli up --var "$VAR" --device gpu --products "$PRODUCTS" >"$VAR/logs/up.log" 2>&1 &
UP_PID=$!
deadline=$((SECONDS + 240))
until grep -q "serving" "$VAR/logs/up.log" 2>/dev/null && "$PY" -c "
import grpc, sys
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel('127.0.0.1:50050') as ch:
    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
sys.exit(0 if r.status == health_pb2.HealthCheckResponse.SERVING else 1)" 2>/dev/null; do
  kill -0 "$UP_PID" 2>/dev/null || die "vitrine up exited; see $VAR/logs/up.log"
  ((SECONDS < deadline)) || die "the stack was not serving within 240 s; see $VAR/logs/up.log"
  sleep 2
done

say "gateway text search at $RATES req/s (open loop, ${STEP_S}s each)"
for rate in ${RATES//,/ }; do
  timeout $((STEP_S + 60)) "$PY" -m loadtest openloop --gateway 127.0.0.1:50050 --rate "$rate" \
    --duration-s "$STEP_S" --mix text=1 --catalog "$VAR/catalog/catalog.jsonl" --artifacts "$VAR/artifacts" \
    --gateway-metrics http://127.0.0.1:9101/metrics --out "$OUT/openloop-$rate" | tee -a "$OUT/openloop.txt" || true
done

"$PY" - "$OUT" <<'EOF' | tee "$OUT/gpu.md"
import json, sys
from pathlib import Path
from benchmarks.report import describe_hardware, table
out = Path(sys.argv[1])
engine = (out / "providers.txt").read_text().splitlines()[-1]
print(f"Hardware: {describe_hardware()}; target gpu-embedded (wheel tritonserver); {engine}.\n")
print((out / "triton.md").read_text())
rows = []
for summary in sorted(out.glob("openloop-*/summary.json"), key=lambda p: float(p.parent.name.split("-")[1])):
    r = json.loads(summary.read_text())
    s, server = r["verdict"]["stats"], r.get("server", {}).get("method:Search", {})
    rows.append([f"{r['rate']:g}", f"{s['rps']:.1f}", f"{s['p50_ms']:.1f}", f"{s['p95_ms']:.1f}",
                 f"{s['p99_ms']:.1f}", f"{100 * s['error_rate']:.2f}%", f"{server.get('p95_ms', float('nan')):.1f}",
                 f"{100 * r['cpu']['generator_share']:.0f}%"])
print("\n".join(table(["offered req/s", "achieved", "p50 ms", "p95 ms", "p99 ms", "errors",
                       "gateway-side p95 ms", "generator CPU"], rows, "rrrrrrrr")))
EOF
say "done: $OUT/gpu.md"
