#!/usr/bin/env bash
# Embedded mode over time: `coexist run` (no [redis]: the in-memory queue, worker and sender in
# one process) under closed-loop load for ROUNDS rounds of ROUND_SECS each, printing each
# round's webhooks/s and the server's RSS, so a slowdown or a leak shows as a trend. Then, for
# comparison in the same run, `coexist serve` on a fresh local Redis for one round.
#
#   bench/embedded.sh                          # 5 rounds of 60 s (5 minutes), then serve
#   ROUNDS=4 ROUND_SECS=8 bench/embedded.sh    # the issue's four 8 s rounds
#   SKIP_BUILD=1 bench/embedded.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/lib.sh

ROUNDS=${ROUNDS:-5}
ROUND_SECS=${ROUND_SECS:-60}
CONNECTIONS=${CONNECTIONS:-64}
CONTACTS=${CONTACTS:-5000}
RUST_LOG=${RUST_LOG:-warn}
SERVE_ROUND=${SERVE_ROUND:-1}
export RUST_LOG
export META_APP_SECRET=${META_APP_SECRET:-bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}

if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release --bin coexist --bin coexist-loadgen
fi
BIN=$ROOT/target/release/coexist
LOADGEN=$ROOT/target/release/coexist-loadgen

WORK=$(mktemp -d /tmp/coexist-embedded.XXXXXX)
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

HTTP_PORT=$(free_port)
config() { # $1 = extra tables
    cat <<EOF
[server]
listen = "127.0.0.1:$HTTP_PORT"
$1
[meta]
app_secrets = ["\${META_APP_SECRET}"]

[[channels]]
id = "shop"
kind = "waba"
phone_number_id = "106540352242922"
partitions = 4

[bot]
mode = "none"
EOF
}

wait_http() {
    for _ in $(seq 200); do
        curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "server did not come up" >&2
    return 1
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

round() { # $1 label, $2 pid
    "$LOADGEN" --url "http://127.0.0.1:$HTTP_PORT/webhooks/meta" --connections "$CONNECTIONS" \
        --contacts "$CONTACTS" --duration "$ROUND_SECS" --json --label "$1" \
        --seed "$RANDOM" 2>/dev/null |
        python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f" % r["ok_per_sec"])'
}

echo "machine: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores), $(date -u +%F)"
echo "mode,round,webhooks_per_s,rss_mb"
config "" >"$WORK/run.toml"
"$BIN" run --config "$WORK/run.toml" >"$WORK/run.log" 2>&1 &
RUN_PID=$!
PIDS+=("$RUN_PID")
wait_http
for r in $(seq "$ROUNDS"); do
    rate=$(round "run-$r" "$RUN_PID")
    echo "run,$r,$rate,$(( $(rss_kb "$RUN_PID") / 1024 ))"
done
kill "$RUN_PID"; wait "$RUN_PID" 2>/dev/null || true

if [[ $SERVE_ROUND == 1 ]]; then
    REDIS_PORT=$(free_port)
    start_redis "$REDIS_PORT" "$WORK" "$WORK/redis.log" aof
    config "
[redis]
url = \"redis://127.0.0.1:$REDIS_PORT\"
" >"$WORK/serve.toml"
    "$BIN" serve --config "$WORK/serve.toml" >"$WORK/serve.log" 2>&1 &
    SERVE_PID=$!
    PIDS+=("$SERVE_PID")
    wait_http
    rate=$(round "serve" "$SERVE_PID")
    echo "serve+redis,1,$rate,$(( $(rss_kb "$SERVE_PID") / 1024 ))"
fi
