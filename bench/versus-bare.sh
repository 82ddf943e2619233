#!/usr/bin/env bash
# coexist's ingest beside its floor, in one run (issue 10): a fresh redis-server (AOF everysec,
# rewrites deferred), then the same closed-loop load (coexist-loadgen: signed Meta webhooks,
# 30 % statuses, 10 % batches of 4, 1 % re-sends) against
#   1. coexist-bare   (bench/bare.rs: HMAC check + one XADD of the raw body, answer 200)
#   2. coexist serve  (parse, route, dedupe, aliases, partitions: the real ingress)
# each with the same number of HTTP workers, ROUNDS times alternately; prints webhooks/s of
# each round and the ratio coexist / bare.
#
#   bench/versus-bare.sh                 # build, 3 rounds of 10 s each
#   SKIP_BUILD=1 ROUNDS=5 DURATION=15 bench/versus-bare.sh
#   BEFORE_BIN=/tmp/old/target/release/coexist SKIP_BUILD=1 bench/versus-bare.sh
#                                        # also an earlier build of coexist, in every round
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/lib.sh

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-128}
WORKERS=${WORKERS:-1}           # HTTP workers of both servers (coexist's default beside a local Redis on 2 cores)
export RUST_LOG=${RUST_LOG:-warn}
export META_APP_SECRET=${META_APP_SECRET:-bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}
export META_VERIFY_TOKEN=${META_VERIFY_TOKEN:-bench-verify}

if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release --bin coexist --bin coexist-loadgen --bin coexist-bare
fi
BIN=$ROOT/target/release

WORK=$(mktemp -d /tmp/coexist-versus.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

REDIS_PORT=$(free_port)
start_redis "$REDIS_PORT" "$WORK" "$WORK/redis.log" aof-norewrite

export BENCH_HTTP_PORT BENCH_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
cat >"$WORK/coexist.toml" <<EOF
[server]
listen = "127.0.0.1:\${BENCH_HTTP_PORT}"
workers = $WORKERS
[redis]
url = "\${BENCH_REDIS_URL}"
[meta]
verify_token = "\${META_VERIFY_TOKEN}"
app_secrets = ["\${META_APP_SECRET}"]
[[channels]]
id = "shop"
kind = "waba"
phone_number_id = "106540352242922"
partitions = 4
[bot]
mode = "none"
EOF

start_server() {  # which -> sets SERVER_PID
    BENCH_HTTP_PORT=$(free_port)
    case $1 in
    bare) BARE_WORKERS=$WORKERS "$BIN/coexist-bare" "127.0.0.1:$BENCH_HTTP_PORT" "$BENCH_REDIS_URL" 2>"$WORK/bare.log" & ;;
    coexist) "$BIN/coexist" serve --config "$WORK/coexist.toml" 2>"$WORK/coexist.log" & ;;
    before) "$BEFORE_BIN" serve --config "$WORK/coexist.toml" 2>"$WORK/before.log" & ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 200); do
        curl -fsS "http://127.0.0.1:$BENCH_HTTP_PORT/readyz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "$1 did not start" >&2; cat "$WORK/$1.log" >&2; exit 1
}

run_one() {  # which seed -> prints webhooks/s
    start_server "$1"
    "$BIN/coexist-loadgen" --url "http://127.0.0.1:$BENCH_HTTP_PORT/webhooks/meta" \
        --contacts 5000 --status-share 0.3 --batch-share 0.1 --batch-size 4 --dup-share 0.01 \
        --warmup "$WARMUP" --duration "$DURATION" --connections "$CONNECTIONS" --seed "$2" \
        --server-pid "$SERVER_PID" --redis-pid "$REDIS_PID" --label "$1" --json \
        >"$WORK/$1.json" 2>"$WORK/$1.loadgen.log"
    kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
    # webhooks/s, then CPU µs per webhook of the server and of Redis
    jq -r '[.ok_per_sec, (.cpu_cores.server / .ok_per_sec * 1e6), (.cpu_cores.redis / .ok_per_sec * 1e6)] | @tsv' "$WORK/$1.json"
}

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'); $(date -u +%FT%TZ); $WORKERS HTTP worker(s) each"
printf '%-6s %12s %12s %7s   %s\n' round bare/s coexist/s ratio "CPU µs per webhook: bare server, bare Redis | coexist server, coexist Redis"
for r in $(seq "$ROUNDS"); do
    read -r bare bare_srv bare_redis < <(run_one bare "$r")
    read -r cx cx_srv cx_redis < <(run_one coexist "$r")
    printf '%-6s %12.0f %12.0f %7.2f   %5.1f %5.1f | %5.1f %5.1f\n' "$r" "$bare" "$cx" \
        "$(awk -v a="$cx" -v b="$bare" 'BEGIN { print (b > 0 ? a / b : 0) }')" \
        "$bare_srv" "$bare_redis" "$cx_srv" "$cx_redis"
    if [[ -n ${BEFORE_BIN:-} ]]; then
        # Its own seed: the same wamids again would all be duplicates (cheaper to enqueue).
        read -r old old_srv old_redis < <(run_one before "$((r + 1000))")
        printf '%-6s %12s %12.0f %7.2f   %11s | %5.1f %5.1f   (BEFORE_BIN)\n' "$r" "" "$old" \
            "$(awk -v a="$old" -v b="$bare" 'BEGIN { print (b > 0 ? a / b : 0) }')" "" \
            "$old_srv" "$old_redis"
    fi
done
