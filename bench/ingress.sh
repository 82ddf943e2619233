#!/usr/bin/env bash
# Ingress benchmark: fresh redis-server + `coexist serve` + coexist-loadgen (closed loop, then
# fixed rate). Everything it starts is killed on exit (trap), whatever happens.
#
#   bench/ingress.sh                      # build, then run both modes with the defaults below
#   DURATION=30 CONNECTIONS=256 RATE=20000 bench/ingress.sh
#   SKIP_BUILD=1 bench/ingress.sh         # reuse target/release binaries
#
# Redis persistence: AOF, `--appendonly yes --appendfsync everysec` (RDB snapshots off, so no
# fork in the middle of a run): what a queue that must survive a restart runs with.
# See bench/README.md.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/lib.sh

DURATION=${DURATION:-15}         # measured seconds per mode
WARMUP=${WARMUP:-2}              # seconds of load before each measured phase
CONNECTIONS=${CONNECTIONS:-128}  # closed-loop connections
RATE=${RATE:-10000}              # fixed-rate requests/s
RATE_CONNECTIONS=${RATE_CONNECTIONS:-64}
CONTACTS=${CONTACTS:-5000}
PARTITIONS=${PARTITIONS:-4}
STATUS_SHARE=${STATUS_SHARE:-0.3}
BATCH_SHARE=${BATCH_SHARE:-0.1}
BATCH_SIZE=${BATCH_SIZE:-4}
DUP_SHARE=${DUP_SHARE:-0.01}
LOADGEN_THREADS=${LOADGEN_THREADS:-1}
SERVER_WORKERS=${SERVER_WORKERS:-}   # [server] workers; empty = one per core
RUST_LOG=${RUST_LOG:-warn}
REDIS_PERSIST=${REDIS_PERSIST:-aof}  # aof (appendfsync everysec, no RDB) | aof-norewrite (same, AOF rewrites deferred) | none | default (redis.conf defaults: RDB snapshots)
MODES=${MODES:-"closed rate"}
QUIET_WAIT=${QUIET_WAIT:-300}        # max seconds to wait for other processes to go idle
QUIET_MAX_BUSY=${QUIET_MAX_BUSY:-0.15}  # "quiet" = at most this many cores busy
ATTEMPTS=${ATTEMPTS:-3}              # re-run a mode when other processes took CPU during it
OUT=${OUT:-$ROOT/target/bench}

export RUST_LOG
# Secrets come from the environment, never from the file.
export META_APP_SECRET=${META_APP_SECRET:-bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}
export META_VERIFY_TOKEN=${META_VERIFY_TOKEN:-bench-verify}

if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release --bin coexist --bin coexist-loadgen
fi
SERVER_BIN=$ROOT/target/release/coexist
LOADGEN=$ROOT/target/release/coexist-loadgen
for b in "$SERVER_BIN" "$LOADGEN"; do
    [[ -x $b ]] || { echo "missing $b (run without SKIP_BUILD)" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "redis-server not found" >&2; exit 1; }

WORK=$(mktemp -d /tmp/coexist-bench.XXXXXX)
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    cp "$WORK"/*.log "$OUT"/ 2>/dev/null || true
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUT"
REDIS_PORT=$(free_port)
HTTP_PORT=$(free_port)
export BENCH_REDIS_PORT=$REDIS_PORT BENCH_HTTP_PORT=$HTTP_PORT

# ---------------------------------------------------------------- redis
# REDIS_PERSIST is one of bench/lib.sh's start_redis modes (aof, aof-norewrite, none, default).
# REDIS_SOCKET=1: coexist talks to Redis over a Unix socket (Redis on the same machine), which
# skips the loopback TCP stack on the server <-> Redis hop.
REDIS_SOCKET=${REDIS_SOCKET:-0}
socket_args=()
export BENCH_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
if [[ $REDIS_SOCKET == 1 ]]; then
    socket_args=(--unixsocket "$WORK/redis.sock" --unixsocketperm 700)
    BENCH_REDIS_URL="unix://$WORK/redis.sock"
fi
start_redis "$REDIS_PORT" "$WORK" "$WORK/redis.log" "$REDIS_PERSIST" "${socket_args[@]}"

# ---------------------------------------------------------------- config
CONFIG=$ROOT/bench/bench.toml
{
    cat <<'EOF'
# Written by bench/ingress.sh. Ports and secrets come from the environment.
[server]
listen = "127.0.0.1:${BENCH_HTTP_PORT}"
max_body_bytes = 4194304
EOF
    [[ -n $SERVER_WORKERS ]] && echo "workers = $SERVER_WORKERS"
    cat <<EOF

[redis]
url = "\${BENCH_REDIS_URL}"
prefix = "cx"

[meta]
verify_token = "\${META_VERIFY_TOKEN}"
app_secrets = ["\${META_APP_SECRET}", "\${META_APP_SECRET_PREVIOUS}"]

[[channels]]
id = "shop"
kind = "waba"
phone_number_id = "106540352242922"
access_token = "\${WABA_TOKEN}"
partitions = $PARTITIONS

[bot]
mode = "none"
EOF
} >"$CONFIG"

# ---------------------------------------------------------------- server
"$SERVER_BIN" serve --config "$CONFIG" 2>"$WORK/server.log" &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
for _ in $(seq 200); do
    curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.05
done
curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null || { echo "server not ready" >&2; cat "$WORK/server.log" >&2; exit 1; }

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GB RAM; $(date -u +%FT%TZ)"
echo "redis $(redis-server --version | awk '{print $3}') on :$REDIS_PORT (pid $REDIS_PID, persistence: $REDIS_PERSIST), coexist serve on :$HTTP_PORT (pid $SERVER_PID), RUST_LOG=$RUST_LOG"
echo "server RSS at idle: $(awk '/VmRSS/{print $2, $3}' /proc/$SERVER_PID/status)"

common=(--url "http://127.0.0.1:$HTTP_PORT/webhooks/meta" --contacts "$CONTACTS"
    --status-share "$STATUS_SHARE" --batch-share "$BATCH_SHARE" --batch-size "$BATCH_SIZE"
    --dup-share "$DUP_SHARE" --threads "$LOADGEN_THREADS" --warmup "$WARMUP" --duration "$DURATION"
    --server-pid "$SERVER_PID" --redis-pid "$REDIS_PID"
    --check-redis "redis://127.0.0.1:$REDIS_PORT" --prefix cx --channel shop --json)

# Other jobs on the machine (builds, tests) steal the same cores: wait until it is quiet.
busy_cores() {  # machine-wide busy cores over one second
    local a b
    a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
    awk -v n="$(nproc)" -v a="${a[*]}" -v b="${b[*]}" 'BEGIN {
        split(a, x, " "); split(b, y, " "); t = 0; i = 0
        for (k = 2; k <= 9; k++) t += y[k] - x[k]
        i = (y[5] - x[5]) + (y[6] - x[6])
        printf "%.2f", (t - i) / (t > 0 ? t : 1) * n }'
}
wait_quiet() {
    local waited=0 busy
    while :; do
        busy=$(busy_cores)
        awk -v b="$busy" -v m="$QUIET_MAX_BUSY" 'BEGIN { exit !(b <= m) }' && return 0
        if (( waited >= QUIET_WAIT )); then
            echo "WARNING: machine still busy ($busy cores used by other processes) after ${QUIET_WAIT}s; running anyway" >&2
            return 0
        fi
        (( waited % 10 == 0 )) && echo "waiting for a quiet machine: $busy cores busy elsewhere..." >&2
        sleep 1; waited=$((waited + 2))
    done
}

run_mode() {  # mode seed -> writes $OUT/$mode.json
    local mode=$1 seed=$2
    case $mode in
    closed)
        "$LOADGEN" "${common[@]}" --label closed-loop --seed "$seed" --connections "$CONNECTIONS" \
            >"$OUT/closed.json"
        ;;
    rate)
        "$LOADGEN" "${common[@]}" --label fixed-rate --seed "$seed" --connections "$RATE_CONNECTIONS" \
            --rate "$RATE" >"$OUT/rate.json"
        ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
}

status=0
RESULTS=()
seed=0
for mode in $MODES; do
    for attempt in $(seq "$ATTEMPTS"); do
        wait_quiet
        seed=$((seed + 1))
        echo
        rc=0
        run_mode "$mode" "$seed" || rc=$?
        other=$(jq -r '.cpu_cores.other // 0' "$OUT/$mode.json" 2>/dev/null || echo 0)
        if awk -v o="$other" -v m="$QUIET_MAX_BUSY" 'BEGIN { exit !(o > m) }' && (( attempt < ATTEMPTS )); then
            echo "(other processes took $other cores during this run: running it again)"
            continue
        fi
        (( rc == 0 )) || status=$rc
        break
    done
    RESULTS+=("$OUT/$mode.json")
done
echo
echo "server: VmHWM $(awk '/VmHWM/{print $2, $3}' /proc/$SERVER_PID/status), VmRSS $(awk '/VmRSS/{print $2, $3}' /proc/$SERVER_PID/status)"
echo "redis: $(redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' | grep '^used_memory_human'), keys $(redis-cli -p "$REDIS_PORT" dbsize)"
grep -E "WARN|ERROR" "$WORK/server.log" | sort | uniq -c | sort -rn | head -5 || true
echo "JSON results: ${RESULTS[*]}"
exit $status
