#!/usr/bin/env bash
# The GPU check of rbee's CUDA workers, in one run of a few minutes that downloads nothing.
#
# Usage: bench/cuda_check.sh [--pyz FILE] [--models-dir DIR] [--tokens N] [--no-bench]
#
# 1. The CPU part: the default model loaded as a worker does on the CPU (int4), a smoke prompt
#    answered, and bench/worker.py's figures on the CPU, the baseline (--no-bench: no figures).
# 2. Finds the NVIDIA GPUs (nvidia-smi). None: says so and exits 3, after the CPU part.
# 3. Finds an ONNX Runtime with the CUDA provider: the Python's own (onnxruntime-gpu), else the
#    packages of a CUDA build (--pyz, $RBEE_CUDA_PYZ, or rbee-cuda-cp3XY.pyz / rbee-cuda.pyz in
#    the repository root, built elsewhere with `build/build.py --flavour cuda --python 3.X`),
#    unpacked and put first on PYTHONPATH. None: says so and exits 4.
# 4. Loads the default model on cuda:0 in fp16 the same way, checks that the provider in use
#    is CUDAExecutionProvider (onnxruntime-gpu falls back to the CPU silently), answers a smoke
#    prompt, and prints the worker's VRAM from NVML beside rbee's estimate; with a CUDA build,
#    starts `rbee worker daemon --device cuda:0` from it and checks the provider it announces.
# 5. The worker tests with TEST_DEVICE=cuda:0, then bench/worker.py --device cuda --precision fp16
#    (prefill ms, tok/s at 1, 8 and 32 streams, VRAM) beside the CPU's figures.
#
# Exit status: 0 every check passed on a GPU; 1 a check failed; 2 bad usage; 3 no GPU found
# (and the CPU part passed); 4 a GPU but no ONNX Runtime with CUDA. PYTHON picks the interpreter
# (default .venv/bin/python, else python3); it needs rbee's dependencies and pytest.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
PYZ=${RBEE_CUDA_PYZ:-}
MODELS=""
TOKENS=32
BENCH=1
while [ $# -gt 0 ]; do
    case "$1" in
        --pyz) PYZ=$2; shift 2 ;;
        --models-dir) MODELS=$2; shift 2 ;;
        --tokens) TOKENS=$2; shift 2 ;;
        --no-bench) BENCH=0; shift ;;
        *) echo "cuda_check: unknown argument $1 (see the usage at the top of $0)" >&2; exit 2 ;;
    esac
done
WORK=$(mktemp -d /tmp/rbee-cuda-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# A fresh store: the default model is imported (a few seconds) with every precision, fp16 too.
MODELS=${MODELS:-$WORK/models}
export PYTHONPATH="$ROOT/src"
FAILED=0

say() { printf '\n== %s\n' "$*"; }
fail() { echo "cuda_check: FAILED: $*"; FAILED=1; }

# bench/worker.py with the flags it knows (--device, --precision and --streams came with the
# CUDA worker): 1, 8 and 32 streams.
bench() {
    local device=$1 precision=$2 usage flags=()
    usage=$("$PY" bench/worker.py --help 2>&1)
    if grep -q -- '--streams' <<<"$usage"; then flags+=(--streams 1,8,32); fi
    if grep -q -- '--precision' <<<"$usage"; then flags+=(--precision "$precision"); fi
    if grep -q -- '--device' <<<"$usage"; then
        flags+=(--device "$device")
    elif [ "$device" != cpu ]; then
        fail "bench/worker.py has no --device flag: no GPU figures"
        return
    fi
    timeout 240 "$PY" bench/worker.py --models-dir "$MODELS" --tokens "$TOKENS" "${flags[@]}" \
        || fail "bench/worker.py on $device ($precision)"
}

# Load the default model as a worker does, answer a smoke prompt, check the provider in use.
# Arguments: device, precision, the provider expected, slots.
engine_check() {
    timeout 300 "$PY" - "$MODELS" "$@" <<'PYTHON' || fail "the engine on $1 ($2)"
import os
import sys
import time
from pathlib import Path

import numpy as np

from rbee.config import WorkerConfig
from rbee.hive.telemetry import Gpus
from rbee.models.importer import DEFAULT_MODEL
from rbee.models.store import ModelStore
from rbee.models.vram import model_vram_required
from rbee.worker.daemon import load_model

models, device, precision, expected, slots = sys.argv[1:]
config = WorkerConfig(device=device, precision=precision, slots=int(slots))
gpus = Gpus()
before = {g.index: g.vram_used_mb for g in gpus.telemetry()}
engine, tokenizer, provider = load_model(DEFAULT_MODEL, config, Path(models))
print(f"provider in use: {provider}")
ids = tokenizer.encode("The capital of France is")
engine.prefill(0, ids)  # the first run of a session also initialises it
start = time.perf_counter()
token = int(np.argmax(engine.prefill(0, ids)))
print(f"prefill of {len(ids)} tokens: {1000 * (time.perf_counter() - start):.1f} ms")
out = [token]
for _ in range(7):
    token = int(np.argmax(engine.decode([0], [token])[0]))
    out.append(token)
print(f"'The capital of France is' ->{tokenizer.decode(out)!r}")
if device != "cpu":
    store = ModelStore(Path(models))
    manifest = store.get(DEFAULT_MODEL)
    need = model_vram_required(
        store.dir(DEFAULT_MODEL), manifest, precision=precision, slots=config.slots
    )
    # In a container NVML may list host PIDs only: the device's growth is the other reading.
    used = gpus.per_process().get(os.getpid(), (0.0, 0.0))[1]
    index = int(device.partition(":")[2])
    grown = sum(g.vram_used_mb for g in gpus.telemetry() if g.index == index) - before[index]
    print(f"VRAM of this worker ({config.slots} slots): {used:.0f} MB by NVML's process list, ")
    print(f"  {device}'s use grew by {grown} MB while it loaded")
    print(f"rbee's estimate: {need.describe()}")
gpus.close()
if provider != expected:
    sys.exit(f"the engine runs on {provider}, not {expected}")
PYTHON
}

say "A worker's engine on the CPU (int4)"
engine_check cpu int4 CPUExecutionProvider 1
if [ "$BENCH" -eq 1 ]; then
    say "CPU figures (bench/worker.py, int4)"
    bench cpu int4
fi

# No GPU: exit 3 once the CPU part has passed (1 if it failed).
no_gpu() {
    echo "cuda_check: no NVIDIA GPU found ($1): ran the CPU part only"
    [ "$FAILED" -eq 0 ] || exit 1
    exit 3
}

say "NVIDIA GPUs"
command -v nvidia-smi >/dev/null 2>&1 || no_gpu "no nvidia-smi on PATH"
if ! GPUS=$(timeout 30 nvidia-smi --query-gpu=index,name,memory.total,memory.used \
    --format=csv,noheader 2>&1) || [ -z "$GPUS" ]; then
    no_gpu "nvidia-smi: ${GPUS:-no GPU listed}"
fi
echo "$GPUS"

say "ONNX Runtime with CUDA"
has_cuda() {
    "$PY" -c 'import onnxruntime, sys; sys.exit("CUDAExecutionProvider" not in onnxruntime.get_available_providers())' 2>/dev/null
}
VERSION=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
ABI=cp${VERSION/./}
if ! has_cuda; then
    for candidate in "$PYZ" "rbee-cuda-$ABI.pyz" rbee-cuda.pyz; do
        if [ -n "$candidate" ] && [ -f "$candidate" ]; then PYZ=$candidate; break; fi
    done
    if [ -z "$PYZ" ] || [ ! -f "$PYZ" ]; then
        echo "cuda_check: a GPU is here, but $PY has no onnxruntime-gpu and no CUDA build was found"
        echo "  (build one where there is internet: build/build.py --flavour cuda --python $VERSION"
        echo "  then pass it with --pyz)"
        exit 4
    fi
    # The first start unpacks the build's packages for this Python; they go first on the path.
    export RBEE_PYZ_ROOT=$WORK/pyz
    timeout 180 "$PY" "$PYZ" --version || { fail "$PYZ does not start under $PY"; exit 1; }
    SITE=$(ls -d "$RBEE_PYZ_ROOT"/*-"$ABI" 2>/dev/null | head -1)
    export PYTHONPATH="$ROOT/src:$SITE"
    has_cuda || { echo "cuda_check: $PYZ has no CUDA provider for $PY"; exit 4; }
    echo "using the packages of $PYZ"
fi
"$PY" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'

say "A worker's engine on cuda:0 (fp16)"
engine_check cuda:0 fp16 CUDAExecutionProvider 4

if [ -n "$PYZ" ] && [ -f "$PYZ" ]; then
    say "rbee worker daemon --device cuda:0 from $PYZ"
    LOG=$WORK/worker.log
    timeout 180 "$PY" "$PYZ" worker daemon --model smollm2-135m-instruct --device cuda:0 \
        --precision fp16 --models-dir "$MODELS" --port 0 >"$LOG" 2>&1 &
    WORKER=$!
    for _ in $(seq 180); do
        grep -q '^rbee worker ready' "$LOG" && break
        kill -0 "$WORKER" 2>/dev/null || break
        sleep 1
    done
    kill "$WORKER" 2>/dev/null
    wait "$WORKER" 2>/dev/null
    READY=$(grep '^rbee worker ready' "$LOG")
    echo "${READY:-$(tail -5 "$LOG")}"
    grep -q 'provider=CUDAExecutionProvider' <<<"$READY" \
        || fail "the worker daemon did not announce CUDAExecutionProvider"
fi

say "Worker tests on cuda:0"
TEST_DEVICE=cuda:0 timeout 240 "$PY" -m pytest tests/worker -q -x -p no:cacheprovider \
    || fail "the worker tests on cuda:0"

if [ "$BENCH" -eq 1 ]; then
    say "GPU figures (bench/worker.py --device cuda --precision fp16), beside the CPU's above"
    bench cuda fp16
fi

if [ "$FAILED" -ne 0 ]; then
    echo "cuda_check: some checks failed (see FAILED above)"
    exit 1
fi
echo "cuda_check: every check passed on the GPU"
