#!/usr/bin/env bash
# Redis Cluster vs one node, same machine, same run: ingest (signed webhooks/s through
# `coexist serve`) and worker drain (events/s handled by `coexist work`, no-op bot), with the
# same channels, partitions and load on both. Everything started is killed on exit.
#
#   bench/cluster.sh                               # build, then: one node, then a 3-master cluster
#   SKIP_BUILD=1 SECONDS_LOAD=8 MASTERS=3 bench/cluster.sh
#
# Load: one `coexist-loadgen` per channel (closed loop, CONNECTIONS split between them), so
# the events spread over CHANNELS channels; with the cluster, the channels are picked so that
# every master holds at least one (a channel is one hash slot: one node).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/lib.sh

MASTERS=${MASTERS:-3}
CHANNELS=${CHANNELS:-3}
PARTITIONS=${PARTITIONS:-8}
CONTACTS=${CONTACTS:-5000}
SECONDS_LOAD=${SECONDS_LOAD:-6}
CONNECTIONS=${CONNECTIONS:-96}
WORKERS=${WORKERS:-2}
export RUST_LOG=${RUST_LOG:-warn}
export META_APP_SECRET=${META_APP_SECRET:-bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}
OUT=${OUT:-$ROOT/target/bench}
mkdir -p "$OUT"

if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release --bin coexist --bin coexist-loadgen
fi
BIN=$ROOT/target/release/coexist
LOADGEN=$ROOT/target/release/coexist-loadgen

# A free port P with P + 10000 free too (the cluster bus; redis-server refuses P > 55535).
free_cluster_port() { python3 -c '
import random, socket
def free(p):
    s = socket.socket()
    try: s.bind(("127.0.0.1", p)); return True
    except OSError: return False
    finally: s.close()
while True:
    p = random.randrange(20000, 45000)
    if free(p) and free(p + 10000): print(p); break'; }
WORK=$(mktemp -d /tmp/coexist-cbench.XXXXXX)
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

# One redis-server (AOF everysec, like bench/worker.sh); extra args are appended.
start_node() {  # port [extra args...]
    local port=$1; shift
    local dir; dir=$(mktemp -d "$WORK/redis-$port.XXXX")
    start_redis "$port" "$dir" "$WORK/redis-$port.log" aof-norewrite "$@"
}

REDIS_PORTS=()
start_single() {
    REDIS_PORTS=("$(free_port)")
    start_node "${REDIS_PORTS[0]}"
    REDIS_TOML="url = \"redis://127.0.0.1:${REDIS_PORTS[0]}\""
}

start_cluster() {
    REDIS_PORTS=()
    local addrs=() seeds=()
    for _ in $(seq "$MASTERS"); do
        local p; p=$(free_cluster_port); REDIS_PORTS+=("$p")
        start_node "$p" --cluster-enabled yes --cluster-config-file "nodes-$p.conf" --cluster-node-timeout 5000
        addrs+=("127.0.0.1:$p"); seeds+=("\"redis://127.0.0.1:$p\"")
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$WORK/cluster-create.log"
    for p in "${REDIS_PORTS[@]}"; do
        for _ in $(seq 200); do redis-cli -p "$p" cluster info | grep -q cluster_state:ok && break; sleep 0.05; done
    done
    REDIS_TOML="cluster = [$(IFS=,; echo "${seeds[*]}")]"
}

# Channel ids: on a cluster, the first ones (ch0, ch1, …) whose `{chN}` slots cover every
# master, CHANNELS in all; on one node simply ch0..ch(CHANNELS-1) — the same names either way.
pick_channels() {
    CHANNEL_IDS=()
    local i=0 owners=""
    while (( ${#CHANNEL_IDS[@]} < CHANNELS )); do
        CHANNEL_IDS+=("ch$i"); i=$((i + 1))
    done
    if (( ${#REDIS_PORTS[@]} > 1 )); then
        # replace until every master owns one
        CHANNEL_IDS=(); local seen=()
        i=0
        while (( ${#CHANNEL_IDS[@]} < CHANNELS )); do
            local slot owner
            slot=$(redis-cli -p "${REDIS_PORTS[0]}" cluster keyslot "{ch$i}")
            owner=$(redis-cli -p "${REDIS_PORTS[0]}" cluster nodes | awk -v s="$slot" '$3 ~ /master/ {
                for (f = 9; f <= NF; f++) { split($f, r, "-"); if (r[2] == "") r[2] = r[1]; if (s >= r[1] && s <= r[2]) print $2 } }')
            if ! [[ " ${seen[*]} " == *" $owner "* ]] || (( ${#seen[@]} >= MASTERS )); then
                CHANNEL_IDS+=("ch$i"); seen+=("$owner")
            fi
            i=$((i + 1))
        done
    fi
}

write_config() {  # http_port
    {
        cat <<EOT
[server]
listen = "127.0.0.1:$1"

[redis]
$REDIS_TOML
prefix = "cx"

[meta]
app_secrets = ["\${META_APP_SECRET}"]

[bot]
mode = "none"
EOT
        local n=0
        for ch in "${CHANNEL_IDS[@]}"; do
            printf '\n[[channels]]\nid = "%s"\nkind = "waba"\nphone_number_id = "90000000%02d"\npartitions = %d\n' "$ch" "$n" "$PARTITIONS"
            n=$((n + 1))
        done
    } >"$WORK/bench.toml"
}

backlog() {  # events waiting in every partition of every channel (through `coexist queues`)
    "$BIN" queues --json --config "$WORK/bench.toml" | python3 -c 'import json,sys; print(sum(r["length"] for r in json.load(sys.stdin)))'
}

run_mode() {  # single | cluster
    local mode=$1
    if [[ $mode == single ]]; then start_single; else start_cluster; fi
    pick_channels
    local http_port; http_port=$(free_port)
    write_config "$http_port"
    "$BIN" serve --config "$WORK/bench.toml" 2>"$WORK/serve-$mode.log" &
    local serve_pid=$!; PIDS+=("$serve_pid")
    for _ in $(seq 200); do curl -fsS "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break; sleep 0.05; done

    echo
    echo "== $mode: ${#REDIS_PORTS[@]} redis node(s); channels ${CHANNEL_IDS[*]} ($PARTITIONS partitions each)"
    local per=$(( CONNECTIONS / CHANNELS )) n=0 lpids=()
    for ch in "${CHANNEL_IDS[@]}"; do
        "$LOADGEN" --url "http://127.0.0.1:$http_port/webhooks/meta" --phone-number-id "$(printf '90000000%02d' $n)" \
            --contacts "$CONTACTS" --status-share 0.3 --batch-share 0.1 --batch-size 4 --warmup 1 \
            --duration "$SECONDS_LOAD" --connections "$per" --json --label "$mode-$ch" \
            >"$WORK/load-$mode-$ch.json" 2>"$WORK/loadgen-$mode-$ch.log" &
        lpids+=($!); n=$((n + 1))
    done
    for p in "${lpids[@]}"; do wait "$p"; done
    python3 - "$WORK"/load-"$mode"-*.json <<'PY'
import json, sys
runs = [json.load(open(f)) for f in sys.argv[1:]]
ok = sum(r["ok_per_sec"] for r in runs)
p99 = max(r["latency_ms"]["p99"] for r in runs)
bad = sum(v for r in runs for k, v in r["status"].items() if k != "200")
print(f"ingest: {ok:,.0f} webhooks/s answered 200 (sum of {len(runs)} loadgens), worst p99 {p99:.1f} ms, non-200: {bad}")
PY
    kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true

    local filled; filled=$(backlog)
    local wpids=()
    for i in $(seq "$WORKERS"); do
        "$BIN" work --config "$WORK/bench.toml" 2>"$WORK/work-$mode-$i.log" &
        wpids+=($!); PIDS+=($!)
    done
    # Rate over the middle of the drain (90 % → 10 % left), as bench/worker.sh does.
    local lo=$(( filled * 9 / 10 )) hi=$(( filled / 10 )) start_ns="" start_left=0 left now
    local deadline=$(( $(date +%s) + 300 ))
    while :; do
        left=$(backlog); now=$(date +%s%N)
        if [[ -z $start_ns && $left -le $lo ]]; then start_ns=$now; start_left=$left; fi
        if [[ -n $start_ns && $left -le $hi ]]; then break; fi
        (( $(date +%s) > deadline )) && { echo "did not drain in 300 s ($left left)"; exit 1; }
        sleep 0.1
    done
    awk -v n="$((start_left - left))" -v a="$start_ns" -v b="$now" -v f="$filled" -v w="$WORKERS" 'BEGIN {
        s = (b - a) / 1e9; printf "worker: %d of %d events drained in %.2f s by %d work processes: %.0f events/s\n", n, f, s, w, n / s }'
    for p in "${wpids[@]}"; do kill "$p"; done
    for p in "${wpids[@]}"; do wait "$p" 2>/dev/null || true; done
    # Stop this mode's Redis nodes before the next mode starts.
    for p in "${REDIS_PORTS[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
    sleep 0.5
}

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GB RAM; $(date -u +%FT%TZ)"
echo "redis $(redis-server --version | awk '{print $3}'); AOF everysec; bot mode none; $CHANNELS channels × $PARTITIONS partitions; $CONNECTIONS connections; $WORKERS workers"
run_mode single
run_mode cluster
