# Shared helpers for keel's scripts (sourced, not run).
# shellcheck shell=bash
KEEL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KEEL_CACHE=${KEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keel}
LLVM_VERSION=${LLVM_VERSION:-19}
export PATH=/usr/lib/llvm-$LLVM_VERSION/bin:$HOME/.cargo/bin:$PATH

die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }
step() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
ok() { printf '\033[1;32mok:\033[0m %s\n' "$*" >&2; }

# run_quiet LABEL CMD...: runs CMD with its output in a log, printing a dot every 10 s so long
# steps show progress; on failure prints the log's tail and the log's path.
run_quiet() {
    local label=$1; shift
    mkdir -p "$KEEL_CACHE/logs"
    local log="$KEEL_CACHE/logs/$(echo "$label" | tr -c 'A-Za-z0-9_.-' '_' | cut -c1-60).log"
    local start=$SECONDS
    "$@" >"$log" 2>&1 &
    local pid=$!
    printf '    %s ' "$label" >&2
    while kill -0 $pid 2>/dev/null; do
        sleep 1
        if [ $(( (SECONDS - start) % 10 )) = 0 ] && kill -0 $pid 2>/dev/null; then printf '.' >&2; fi
    done
    if wait $pid; then
        printf ' done (%ds)\n' $((SECONDS - start)) >&2
    else
        printf ' FAILED (%ds)\n' $((SECONDS - start)) >&2
        tail -n 30 "$log" >&2
        die "$label failed; full log: $log"
    fi
}

# version_ge A B: true when dotted version A >= B.
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
