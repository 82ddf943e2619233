#!/usr/bin/env bash
# Soak: a steady RATE webhooks/s for SOAK_SECS against a full deployment with a forward bot and
# a fake Graph API, sampled once a second; then a plot. Two deployments, one after the other:
#
#   split  fresh redis-server (AOF everysec) + `coexist serve` + WORKERS x `coexist work`
#   run    `coexist run` alone (ingress + worker + sender, embedded in-memory queue, no Redis)
#
#   bench/soak.sh                          # build, then 10 min of each mode at 2,000 webhooks/s
#   SOAK_SECS=60 SKIP_BUILD=1 bench/soak.sh          # a one-minute smoke run
#   MODES=run RATE=1000 SKIP_BUILD=1 bench/soak.sh
#
# Every message event goes to the forward bot (bench/soakbot.py bot: checks X-Coexist-Signature,
# answers one text reply "soak <received_at> <event id>"); the reply is sent through the
# outbound lanes to the fake Graph API (bench/soakbot.py graph, the channel's graph_api_url,
# a real access token so the sender is not a dry run), which measures now - received_at:
# ingress accepted the webhook -> its reply reached the Graph API. The channel's send limits
# are off (send_rate_per_second = 0, pair_gap_ms = 0: 5,000 customers at ~1,900 replies/s
# would otherwise wait for Meta's 80/s and 6 s pair gap, and the backlog would measure those
# limits, not the service).
#
# Samples (bench/soakbot.py sample), one CSV row a second, in $OUT/soak-<mode>.csv: VmRSS and CPU
# of every process (serve, work1.., run, redis, bot, graph, loadgen), Redis used_memory, events
# enqueued/handled and lag (from the processes' /metrics), `coexist queues --json` totals
# (split mode), replies at the fake Graph and the latency p50/p99/max of that second.
# Then bench/soak_plot.py draws $OUT/soak-<mode>.png and prints the summary (slopes etc.);
# the summary is also kept as $OUT/soak-<mode>-summary.json. Everything started is killed on
# exit (trap).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/lib.sh

SOAK_SECS=${SOAK_SECS:-600}
RATE=${RATE:-2000}
MODES=${MODES:-"split run"}
WORKERS=${WORKERS:-2}
PARTITIONS=${PARTITIONS:-16}
CONTACTS=${CONTACTS:-5000}
RATE_CONNECTIONS=${RATE_CONNECTIONS:-64}
STATUS_SHARE=${STATUS_SHARE:-0.3}
BATCH_SHARE=${BATCH_SHARE:-0.1}
BATCH_SIZE=${BATCH_SIZE:-4}
DUP_SHARE=${DUP_SHARE:-0.01}
DRAIN_SECS=${DRAIN_SECS:-15}          # sampling goes on this long after the load stops
REDIS_PERSIST=${REDIS_PERSIST:-aof}   # aof (everysec, no RDB) | none
PYTHON=${PYTHON:-python3}             # needs matplotlib for the PNG (else the summary only)
OUT=${OUT:-$ROOT/target/soak}
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
export RUST_LOG=${RUST_LOG:-warn}
export META_APP_SECRET=${META_APP_SECRET:-soak-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}
export META_VERIFY_TOKEN=${META_VERIFY_TOKEN:-soak-verify}
export FORWARD_SECRET=${FORWARD_SECRET:-fwd-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}
export SOAK_WABA_TOKEN=${SOAK_WABA_TOKEN:-tok-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}
mkdir -p "$OUT"

if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release --bin coexist --bin coexist-loadgen
fi
BIN=$BIN_DIR/coexist
LOADGEN=$BIN_DIR/coexist-loadgen
for b in "$BIN" "$LOADGEN"; do [[ -x $b ]] || { echo "missing $b" >&2; exit 1; }; done
HELPER=$ROOT/bench/soakbot.py

WORK=$(mktemp -d /tmp/coexist-soak.XXXXXX)
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

stop_all() {  # stop this mode's processes (SIGTERM, then wait)
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}

wait_http() {  # url pid
    for _ in $(seq 200); do
        curl -fsS "$1" >/dev/null 2>&1 && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

write_config() {  # mode file
    {
        cat <<EOT
# Written by bench/soak.sh ($1 mode). Ports and secrets come from the environment.
[server]
listen = "127.0.0.1:\${SOAK_HTTP_PORT}"
max_body_bytes = 4194304
EOT
        if [[ $1 == split ]]; then
            cat <<EOT

[redis]
url = "redis://127.0.0.1:\${SOAK_REDIS_PORT}"
prefix = "cx"
EOT
        fi
        cat <<EOT

[meta]
verify_token = "\${META_VERIFY_TOKEN}"
app_secrets = ["\${META_APP_SECRET}"]
graph_api_url = "http://127.0.0.1:\${SOAK_GRAPH_PORT}/v23.0"

[[channels]]
id = "shop"
kind = "waba"
phone_number_id = "106540352242922"
access_token = "\${SOAK_WABA_TOKEN}"
partitions = $PARTITIONS
send_rate_per_second = 0
pair_gap_ms = 0

[bot]
mode = "forward"
url = "http://127.0.0.1:\${SOAK_BOT_PORT}/events"
secret = "\${FORWARD_SECRET}"

[worker]
metrics_listen = "127.0.0.1:\${SOAK_METRICS_PORT}"
EOT
    } >"$2"
}

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GB RAM; $(date -u +%FT%TZ)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) (other processes share these cores)"
echo "soak: $RATE webhooks/s for $SOAK_SECS s per mode ($MODES); $PARTITIONS partitions, $CONTACTS customers, forward bot + fake Graph"

status=0
for mode in $MODES; do
    export SOAK_HTTP_PORT=$(free_port) SOAK_BOT_PORT=$(free_port) SOAK_GRAPH_PORT=$(free_port)
    cfg=$WORK/soak-$mode.toml
    write_config "$mode" "$cfg"
    cp "$cfg" "$OUT/"
    echo
    echo "== $mode: $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"

    "$PYTHON" "$HELPER" bot --port "$SOAK_BOT_PORT" 2>"$WORK/bot-$mode.log" &
    BOT_PID=$!; PIDS+=("$BOT_PID")
    "$PYTHON" "$HELPER" graph --port "$SOAK_GRAPH_PORT" --overall --lat-out "$OUT/soak-$mode-latency.csv" \
        2>"$WORK/graph-$mode.log" &
    GRAPH_PID=$!; PIDS+=("$GRAPH_PID")
    wait_http "http://127.0.0.1:$SOAK_BOT_PORT/_stats" "$BOT_PID" || { echo "bot did not start" >&2; exit 1; }
    wait_http "http://127.0.0.1:$SOAK_GRAPH_PORT/_stats" "$GRAPH_PID" || { echo "graph did not start" >&2; exit 1; }

    procs=(--proc "bot=$BOT_PID" --proc "graph=$GRAPH_PID")
    sample_args=(--graph "http://127.0.0.1:$SOAK_GRAPH_PORT" --bot "http://127.0.0.1:$SOAK_BOT_PORT")
    check=()
    if [[ $mode == split ]]; then
        export SOAK_REDIS_PORT=$(free_port)
        persist=none
        [[ $REDIS_PERSIST == aof ]] && persist=aof
        mkdir -p "$WORK/redis"
        start_redis "$SOAK_REDIS_PORT" "$WORK/redis" "$WORK/redis.log" "$persist"
        SOAK_METRICS_PORT=$(free_port) "$BIN" serve --config "$cfg" 2>"$WORK/serve.log" &
        INGRESS_PID=$!; PIDS+=("$INGRESS_PID")
        wait_http "http://127.0.0.1:$SOAK_HTTP_PORT/readyz" "$INGRESS_PID" || { cat "$WORK/serve.log" >&2; exit 1; }
        procs+=(--proc "serve=$INGRESS_PID")
        sample_args+=(--metrics "http://127.0.0.1:$SOAK_HTTP_PORT/metrics")
        for i in $(seq "$WORKERS"); do
            mport=$(free_port)
            SOAK_METRICS_PORT=$mport "$BIN" work --config "$cfg" 2>"$WORK/work$i.log" &
            wpid=$!; PIDS+=("$wpid")
            wait_http "http://127.0.0.1:$mport/metrics" "$wpid" || { cat "$WORK/work$i.log" >&2; exit 1; }
            procs+=(--proc "work$i=$wpid")
            sample_args+=(--metrics "http://127.0.0.1:$mport/metrics")
        done
        procs+=(--proc "redis=$REDIS_PID")
        sample_args+=(--redis-port "$SOAK_REDIS_PORT"
            --queues-cmd "SOAK_METRICS_PORT=0 $BIN queues --json --config $cfg 2>/dev/null")
        check=(--redis-pid "$REDIS_PID")   # no --check-redis: the workers ack and delete entries as they come
    else
        SOAK_METRICS_PORT=$(free_port) "$BIN" run --config "$cfg" 2>"$WORK/run.log" &
        INGRESS_PID=$!; PIDS+=("$INGRESS_PID")
        wait_http "http://127.0.0.1:$SOAK_HTTP_PORT/readyz" "$INGRESS_PID" || { cat "$WORK/run.log" >&2; exit 1; }
        procs+=(--proc "run=$INGRESS_PID")
        sample_args+=(--metrics "http://127.0.0.1:$SOAK_HTTP_PORT/metrics")
    fi

    # The generator builds and signs RATE x SOAK_SECS requests first (a few seconds of all
    # cores); its own pid is sampled too.
    "$LOADGEN" --url "http://127.0.0.1:$SOAK_HTTP_PORT/webhooks/meta" --contacts "$CONTACTS" \
        --status-share "$STATUS_SHARE" --batch-share "$BATCH_SHARE" --batch-size "$BATCH_SIZE" \
        --dup-share "$DUP_SHARE" --rate "$RATE" --connections "$RATE_CONNECTIONS" --warmup 0 \
        --duration "$SOAK_SECS" --server-pid "$INGRESS_PID" "${check[@]}" --json --label "soak-$mode" \
        >"$OUT/soak-$mode-loadgen.json" 2>"$WORK/loadgen-$mode.log" &
    LOADGEN_PID=$!; PIDS+=("$LOADGEN_PID")
    procs+=(--proc "loadgen=$LOADGEN_PID")
    "$PYTHON" "$HELPER" sample --out "$OUT/soak-$mode.csv" "${procs[@]}" "${sample_args[@]}" &
    SAMPLER_PID=$!; PIDS+=("$SAMPLER_PID")

    rc=0
    wait "$LOADGEN_PID" || rc=$?
    (( rc == 0 )) || { echo "loadgen exit $rc:"; tail -5 "$WORK/loadgen-$mode.log"; status=$rc; }
    sed -n '/^soak\|requests\|answered\|latency\|rate\|RSS\|redis/Ip' "$WORK/loadgen-$mode.log" | head -25
    sleep "$DRAIN_SECS"   # the tail: does the lag go back to 0?
    kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true

    curl -fsS "http://127.0.0.1:$SOAK_BOT_PORT/_stats" >"$OUT/soak-$mode-bot.json" || true
    curl -fsS "http://127.0.0.1:$SOAK_GRAPH_PORT/_stats" >"$OUT/soak-$mode-graph.json" || true
    echo "bot:   $(cat "$OUT/soak-$mode-bot.json")"
    echo "graph: $(cat "$OUT/soak-$mode-graph.json")"
    for p in $(printf '%s\n' "${procs[@]}" | grep -v -- --proc); do
        n=${p%%=*}; pid=${p#*=}
        [[ -r /proc/$pid/status ]] && echo "$n: $(awk '/VmHWM|VmRSS/{printf "%s %s %s  ", $1, $2, $3}' /proc/$pid/status)"
    done
    if [[ $mode == split ]]; then
        echo "redis: $(redis-cli -p "$SOAK_REDIS_PORT" info memory | tr -d '\r' | grep -E '^used_memory_human|^used_memory_peak_human' | tr '\n' ' ')"
        echo "redis keys by kind:"
        "$PYTHON" "$HELPER" redis-keys --port "$SOAK_REDIS_PORT" | tee "$OUT/soak-$mode-redis-keys.txt" || true
        "$BIN" queues --config "$cfg" 2>/dev/null | tail -n +1 | head -20 || true
    fi
    for f in "$WORK"/serve.log "$WORK"/work*.log "$WORK"/run.log; do
        [[ -f $f ]] || continue
        n=$(grep -c -E "WARN|ERROR" "$f" || true)
        echo "$(basename "$f"): $n WARN/ERROR lines"; grep -E "WARN|ERROR" "$f" | sed -E 's/^[^ ]+ +//' | cut -c1-160 | sort | uniq -c | sort -rn | head -3
    done
    stop_all
    cp "$WORK"/*.log "$OUT"/ 2>/dev/null || true
    rm -f "$WORK"/*.log
    "$PYTHON" "$ROOT/bench/soak_plot.py" "$OUT/soak-$mode.csv" --png "$OUT/soak-$mode.png" \
        --loadgen "$OUT/soak-$mode-loadgen.json" --graph "$OUT/soak-$mode-graph.json" \
        --json "$OUT/soak-$mode-summary.json" || echo "(plot failed)"
done
exit $status
