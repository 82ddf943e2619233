#!/usr/bin/env bash
# Worker benchmark: how fast `coexist work` handles events, and how long an event takes from
# the webhook to the handler. Fresh redis-server; everything started is killed on exit.
#
#   bench/worker.sh                 # build, then: drain with 1 worker, drain with 2, latency at 2,000/s
#   SKIP_BUILD=1 EVENTS_SECONDS=8 bench/worker.sh
#
# Throughput ("drain"): the ingress fills the streams with real signed webhooks (loadgen,
# closed loop, no worker running), then N `coexist work` processes with the no-op bot
# (`[bot] mode = "none"`: conversation state read and written, window rules, timers re-armed,
# ack) drain them; events/s = entries handled / time from the first handled to the last.
# Latency: `serve` + one worker, the loadgen at a fixed 2,000 webhooks/s; the worker's
# `coexist_webhook_to_handler_seconds` histogram (ingress accepted → handler called) gives
# p50/p99 (the upper bound of the bucket each falls in).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/lib.sh

PARTITIONS=${PARTITIONS:-16}
CONTACTS=${CONTACTS:-5000}
EVENTS_SECONDS=${EVENTS_SECONDS:-6}      # seconds of closed-loop load used to fill the streams
RATE=${RATE:-2000}
LATENCY_SECONDS=${LATENCY_SECONDS:-20}
REDIS_PERSIST=${REDIS_PERSIST:-aof}      # aof | none
WORKER_COUNTS=${WORKER_COUNTS:-"1 2"}
export RUST_LOG=${RUST_LOG:-warn}
export META_APP_SECRET=${META_APP_SECRET:-bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}
OUT=${OUT:-$ROOT/target/bench}
mkdir -p "$OUT"

if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release --bin coexist --bin coexist-loadgen
fi
BIN=$ROOT/target/release/coexist
LOADGEN=$ROOT/target/release/coexist-loadgen

WORK=$(mktemp -d /tmp/coexist-wbench.XXXXXX)
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    cp "$WORK"/*.log "$OUT"/ 2>/dev/null || true
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

write_config() {  # http_port metrics_port
    cat >"$WORK/bench.toml" <<EOT
[server]
listen = "127.0.0.1:$1"

[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
prefix = "cx"

[meta]
app_secrets = ["\${META_APP_SECRET}"]

[[channels]]
id = "shop"
kind = "waba"
phone_number_id = "106540352242922"
partitions = $PARTITIONS

[bot]
mode = "none"

[worker]
metrics_listen = "127.0.0.1:$2"
EOT
}

start_serve() {
    "$BIN" serve --config "$WORK/bench.toml" 2>"$WORK/serve.log" &
    SERVE_PID=$!; PIDS+=("$SERVE_PID")
    for _ in $(seq 200); do curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
}

stream_total() {  # entries left in all partition streams
    local total=0 n
    for p in $(seq 0 $((PARTITIONS - 1))); do
        n=$(redis-cli -p "$REDIS_PORT" xlen "cx:{shop}:in:$p"); total=$((total + n))
    done
    echo $total
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GB RAM; $(date -u +%FT%TZ)"
echo "redis $(redis-server --version | awk '{print $3}'), persistence: $REDIS_PERSIST; $PARTITIONS partitions; bot mode none"

for workers in $WORKER_COUNTS; do
    fresh_redis
    HTTP_PORT=$(free_port); METRICS_PORT=$(free_port)
    write_config "$HTTP_PORT" "$METRICS_PORT"
    start_serve
    "$LOADGEN" --url "http://127.0.0.1:$HTTP_PORT/webhooks/meta" --contacts "$CONTACTS" --status-share 0.3 \
        --batch-share 0.1 --batch-size 4 --warmup 0 --duration "$EVENTS_SECONDS" --connections 128 \
        --json --label fill >"$OUT/worker-fill.json" 2>/dev/null
    kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true
    filled=$(stream_total)
    echo
    echo "== drain with $workers worker process(es): $filled events waiting"
    wpids=()
    for i in $(seq "$workers"); do
        mport=$(free_port)
        sed "s/^metrics_listen = .*/metrics_listen = \"127.0.0.1:$mport\"/" "$WORK/bench.toml" >"$WORK/w$i.toml"
        "$BIN" work --config "$WORK/w$i.toml" 2>"$WORK/work$i.log" &
        wpids+=($!); PIDS+=($!)
    done
    # The rate is measured over the middle of the drain (10 % to 90 % handled), so start-up
    # (connecting, taking leases) and the last straggling partitions do not count.
    lo=$(( filled * 9 / 10 )); hi=$(( filled / 10 ))
    start_ns=""; end_ns=""
    ticks0=""; rticks0=""
    deadline=$(( $(date +%s) + 300 ))
    while :; do
        left=$(stream_total)
        now=$(date +%s%N)
        if [[ -z $start_ns && $left -le $lo ]]; then
            start_ns=$now; start_left=$left
            ticks0=0; for p in "${wpids[@]}"; do ticks0=$((ticks0 + $(cpu_ticks "$p"))); done
            rticks0=$(cpu_ticks "$REDIS_PID")
        fi
        if [[ -n $start_ns && $left -le $hi ]]; then end_ns=$now; end_left=$left; break; fi
        (( $(date +%s) > deadline )) && { echo "did not drain in 300 s ($left left)"; exit 1; }
        sleep 0.02
    done
    ticks1=0; for p in "${wpids[@]}"; do ticks1=$((ticks1 + $(cpu_ticks "$p"))); done
    rticks1=$(cpu_ticks "$REDIS_PID")
    start_left=$((start_left - end_left))
    secs=$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN{printf "%.3f", (b-a)/1e9}')
    hz=$(getconf CLK_TCK)
    awk -v n="$start_left" -v s="$secs" -v w="$((ticks1 - ticks0))" -v r="$((rticks1 - rticks0))" -v hz="$hz" 'BEGIN {
        printf "handled %d events (10%%..90%% of the backlog) in %.2f s: %.0f events/s; CPU: workers %.2f cores, redis %.2f cores\n",
            n, s, n / s, w / hz / s, r / hz / s }'
    for p in "${wpids[@]}"; do
        printf "worker pid %s: VmHWM %s\n" "$p" "$(awk '/VmHWM/{print $2, $3}' /proc/$p/status)"
        kill "$p"
    done
    # Where Redis spent its time during fill and drain: the busiest commands and scripts.
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | awk -F'[:,=]' '/^cmdstat_/ {
        printf "  %-22s calls %9d  usec %10d  usec/call %6.2f\n", substr($1, 9), $3, $5, $7 }' \
        | sort -k5 -n -r | head -8
    for p in "${wpids[@]}"; do wait "$p" 2>/dev/null || true; done
    kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
done

# ---------------------------------------------------------------- latency at a steady rate
fresh_redis
HTTP_PORT=$(free_port); METRICS_PORT=$(free_port)
write_config "$HTTP_PORT" "$METRICS_PORT"
start_serve
"$BIN" work --config "$WORK/bench.toml" 2>"$WORK/work-latency.log" &
WPID=$!; PIDS+=("$WPID")
sleep 1
echo
echo "== webhook → handler latency at a steady $RATE webhooks/s ($LATENCY_SECONDS s, 1 worker)"
"$LOADGEN" --url "http://127.0.0.1:$HTTP_PORT/webhooks/meta" --contacts "$CONTACTS" --status-share 0.3 \
    --batch-share 0.1 --batch-size 4 --warmup 2 --duration "$LATENCY_SECONDS" --connections 32 --rate "$RATE" \
    --json --label latency >"$OUT/worker-latency-load.json" 2>"$WORK/loadgen-latency.log" || { echo "loadgen failed:"; head -5 "$WORK/loadgen-latency.log"; }
sleep 1
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" >"$OUT/worker-metrics.txt"
python3 - "$OUT/worker-metrics.txt" <<'PY'
import re, sys
buckets = []
for line in open(sys.argv[1]):
    m = re.match(r'coexist_webhook_to_handler_seconds_bucket\{.*le="([^"]+)"\} (\d+)', line)
    if m:
        buckets.append((float("inf") if m[1] == "+Inf" else float(m[1]), int(m[2])))
buckets.sort()
total = buckets[-1][1] if buckets else 0
def q(p):
    for le, n in buckets:
        if n >= p * total:
            return le * 1000
print(f"events: {total}; webhook→handler p50 ≤ {q(0.5):g} ms, p90 ≤ {q(0.9):g} ms, p99 ≤ {q(0.99):g} ms, p99.9 ≤ {q(0.999):g} ms (bucket upper bounds; received_at has ms resolution)")
PY
grep -E "^coexist_events_handled_total" "$OUT/worker-metrics.txt" | head -5
