#!/usr/bin/env bash
# Outbound sender benchmark: how fast `coexist work` drains the outbound queue to the Graph API,
# and whether one chatty customer delays everybody else. Fresh redis-server per run, real
# `coexist work` processes, an in-process fake Graph API (coexist-sendbench); everything started
# is killed on exit.
#
#   bench/sender.sh                  # build, then: throughput with 1 and 2 workers, isolation
#   SKIP_BUILD=1 MESSAGES=20000 CUSTOMERS=2000 bench/sender.sh
#   SKIP_BUILD=1 SCENARIOS=isolation bench/sender.sh
#
# Throughput: limits off (`send_rate_per_second = 0`, `pair_gap_ms = 0`), `[bot] mode = "none"`;
# MESSAGES template messages over CUSTOMERS customers are pushed straight into the outbound
# queue (OutQueue::push: the sender alone is measured, no webhook, no handler), then K work
# processes drain it; msg/s = distinct messages / time from the fake's first request to its
# last. Every message id must arrive exactly once, in order per customer.
# Isolation: default WABA limits (80/s, pair gap 6 s, burst 10), echo bot, one work process;
# one customer sends 40 messages at once, then 200 others one each (events enqueued with
# received_at = now); latency of the 200 from enqueue to their reply at the fake.
# JSON: target/bench/sender-throughput-<K>w.json, target/bench/sender-isolation.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/lib.sh

SCENARIOS=${SCENARIOS:-"throughput isolation"}
WORKER_COUNTS=${WORKER_COUNTS:-"1 2"}
MESSAGES=${MESSAGES:-50000}
CUSTOMERS=${CUSTOMERS:-5000}
PARTITIONS=${PARTITIONS:-16}
LANES=${LANES:-}                      # [sending] lanes per process (empty: the product default, 64)
CHATTY=${CHATTY:-40}
OTHERS=${OTHERS:-200}
CHATTY_WATCH=${CHATTY_WATCH:-13}      # seconds to keep watching the chatty replies after the others
REDIS_PERSIST=${REDIS_PERSIST:-aof}   # aof | none
WORKER_LOG=${WORKER_LOG:-warn}        # RUST_LOG of the work processes
OUT=${OUT:-$ROOT/target/bench}
mkdir -p "$OUT"

if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release --bin coexist --bin coexist-sendbench
fi
BIN=$ROOT/target/release/coexist
SENDBENCH=$ROOT/target/release/coexist-sendbench

WORK=$(mktemp -d /tmp/coexist-sbench.XXXXXX)
PIDS=()
cleanup() {
    local rc=$?
    # The work processes coexist-sendbench started (it kills them itself, unless it was killed).
    if [[ -f $WORK/pids ]]; then
        while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$WORK/pids"
    fi
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fresh_redis() {  # a new redis-server in a fresh data dir: sets REDIS_PORT, REDIS_PID
    REDIS_PORT=$(free_port)
    local dir; dir=$(mktemp -d "$WORK/redis.XXXX")   # a fresh data dir: nothing to load
    local persist=none
    [[ $REDIS_PERSIST == aof ]] && persist=aof-norewrite
    start_redis "$REDIS_PORT" "$dir" "$WORK/redis.log" "$persist"
}

stop_redis() {
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
}

common() {  # flags shared by both scenarios; $1 = run name
    local args=(--redis-url "redis://127.0.0.1:$REDIS_PORT" --redis-pid "$REDIS_PID" --bin "$BIN"
        --dir "$WORK/$1" --pid-file "$WORK/pids" --partitions "$PARTITIONS" --worker-log "$WORKER_LOG"
        --label "$1")
    [[ -n $LANES ]] && args+=(--lanes "$LANES")
    printf '%s\n' "${args[@]}"
}

keep_logs() {  # $1 = run name
    for f in "$WORK/$1"/*.log "$WORK/$1"/*.toml; do
        [[ -f $f ]] && cp "$f" "$OUT/sender-$1-$(basename "$f")"
    done
    return 0
}

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GB RAM; $(date -u +%FT%TZ)"
echo "redis $(redis-server --version | awk '{print $3}'), persistence: $REDIS_PERSIST; $PARTITIONS partitions; lanes per process: ${LANES:-default}"
echo "load now: $(cut -d' ' -f1-3 /proc/loadavg) (other processes share these cores: figures are noisy unless the machine is idle)"

status=0
failed() {  # exit code, run name: a failed check goes on with the next run, Ctrl-C stops
    status=$1
    echo "($2: exit $1)"
    if (( $1 == 130 || $1 == 143 )); then exit "$1"; fi
}
for scenario in $SCENARIOS; do
    case $scenario in
    throughput)
        for workers in $WORKER_COUNTS; do
            name="throughput-${workers}w"
            fresh_redis
            echo
            mapfile -t args < <(common "$name")
            "$SENDBENCH" throughput "${args[@]}" --workers "$workers" --messages "$MESSAGES" \
                --customers "$CUSTOMERS" >"$OUT/sender-$name.json" || failed $? "$name"
            keep_logs "$name"
            stop_redis
        done
        ;;
    isolation)
        name=isolation
        fresh_redis
        echo
        mapfile -t args < <(common "$name")
        "$SENDBENCH" isolation "${args[@]}" --workers 1 --chatty "$CHATTY" --others "$OTHERS" \
            --chatty-watch "$CHATTY_WATCH" >"$OUT/sender-$name.json" || failed $? "$name"
        keep_logs "$name"
        stop_redis
        ;;
    *)
        echo "unknown scenario $scenario (throughput, isolation)"; exit 2 ;;
    esac
done
echo
echo "JSON: $OUT/sender-*.json"
exit $status
