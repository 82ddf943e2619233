#!/usr/bin/env bash
# Send API benchmark: how many POST /v1/channels/{c}/messages a `coexist serve` accepts per
# second (202 = durably queued in Redis), with 1 and 64 connections, and a broadcast of
# 100,000 recipients: time to accept it, the sender's memory while it runs, and its rate.
#
#   bench/api.sh                      # build, then both parts
#   SKIP_BUILD=1 DURATION=10 bench/api.sh
#
# Fresh redis-server (AOF everysec, as bench/ingress.sh); wrk drives the API with a Lua
# script that gives every request its own recipient (one lane each). The sender runs in dry
# run (no access token): lanes, limits, records and statuses are real, the HTTP call is not.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/lib.sh

DURATION=${DURATION:-10}
BROADCAST=${BROADCAST:-100000}
RATE=${RATE:-1000}                 # send_rate_per_second of the channel during the broadcast
WATCH=${WATCH:-20}                 # seconds the broadcast's rate is watched
export RUST_LOG=${RUST_LOG:-warn}
export COEXIST_API_KEY=${COEXIST_API_KEY:-bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}
export META_APP_SECRET=${META_APP_SECRET:-bench-secret}
OUT=${OUT:-$ROOT/target/bench}
mkdir -p "$OUT"
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)"; exit 1; }

if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release --bin coexist
fi
BIN=$ROOT/target/release/coexist

WORK=$(mktemp -d /tmp/coexist-apibench.XXXXXX)
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

REDIS_PORT=$(free_port)
start_redis "$REDIS_PORT" "$WORK" "$WORK/redis.log" aof-norewrite
HTTP_PORT=$(free_port)
cat >"$WORK/api.toml" <<EOT
[server]
listen = "127.0.0.1:$HTTP_PORT"
max_body_bytes = 4194304

[redis]
url = "redis://127.0.0.1:$REDIS_PORT"

[api]
keys = ["\${COEXIST_API_KEY}"]

[meta]
app_secrets = ["\${META_APP_SECRET}"]

[[channels]]
id = "shop"
kind = "waba"
phone_number_id = "106540352242922"
partitions = 4
send_rate_per_second = $RATE

[bot]
mode = "none"
EOT
"$BIN" serve --config "$WORK/api.toml" 2>"$WORK/serve.log" &
SERVE_PID=$!; PIDS+=("$SERVE_PID")
for _ in $(seq 200); do curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.05; done

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GB RAM; $(date -u +%FT%TZ)"
echo "redis $(redis-server --version | awk '{print $3}'), AOF everysec; wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}')"

cat >"$WORK/send.lua" <<'LUA'
-- Every request a new recipient (its own lane), a template (allowed outside any window).
local n = 0
local key = os.getenv("COEXIST_API_KEY")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
request = function()
  n = n + 1
  local to = string.format("1%010d", (n * 7919 + math.random(0, 999999)) % 10000000000)
  return wrk.format(nil, nil, nil,
    '{"to":"' .. to .. '","type":"template","name":"promo","language":"en_US"}')
end
LUA

queued() { redis-cli -p "$REDIS_PORT" zcard "cx:{shop}:out:queued"; }
for conns in 1 64; do
    before=$(queued)
    threads=$(( conns > 1 ? 2 : 1 ))
    echo
    echo "== POST /v1/channels/shop/messages, $conns connection(s), ${DURATION} s"
    wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency -s "$WORK/send.lua" \
        "http://127.0.0.1:$HTTP_PORT/v1/channels/shop/messages" | tee "$OUT/api-wrk-c$conns.txt" \
        | grep -E "Requests/sec|Non-2xx|Latency|50%|99%|requests in"
    after=$(queued)
    echo "messages durably queued during the run (Redis out:queued): $((after - before))"
done
echo "serve VmHWM: $(awk '/VmHWM/{print $2, $3}' /proc/$SERVE_PID/status)"

# ---------------------------------------------------------------- a broadcast of 100,000
redis-cli -p "$REDIS_PORT" flushall >/dev/null
python3 - "$BROADCAST" >"$WORK/list.ndjson" <<'PY'
import json, sys
n = int(sys.argv[1])
print(json.dumps({"name": "bench", "message": {"type": "template", "name": "promo", "language": "en_US"}}))
for i in range(n):
    print(json.dumps({"to": f"2{i:010d}", "params": [f"customer {i}"]}))
PY
echo
echo "== broadcast of $BROADCAST recipients ($(du -h "$WORK/list.ndjson" | cut -f1) NDJSON)"
t0=$(date +%s%N)
answer=$(curl -fsS -X POST "http://127.0.0.1:$HTTP_PORT/v1/channels/shop/broadcasts" \
    -H "Authorization: Bearer $COEXIST_API_KEY" -H "Content-Type: application/x-ndjson" \
    --data-binary @"$WORK/list.ndjson")
t1=$(date +%s%N)
echo "accepted in $(( (t1 - t0) / 1000000 )) ms: $answer"
BC=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$answer")
status() { curl -fsS "http://127.0.0.1:$HTTP_PORT/v1/channels/shop/broadcasts/$BC" -H "Authorization: Bearer $COEXIST_API_KEY"; }
sent() { status | python3 -c 'import json,sys; c=json.load(sys.stdin)["counts"]; print(c["sent"]+c["delivered"]+c["read"])'; }

"$BIN" work --config "$WORK/api.toml" 2>"$WORK/work.log" &
WPID=$!; PIDS+=("$WPID")
sleep 3                     # start-up and the first burst (the channel bucket starts full)
s0=$(sent); t0=$(date +%s%N); peak=0
for _ in $(seq "$WATCH"); do
    sleep 1
    rss=$(awk '/VmRSS/{print $2}' /proc/$WPID/status); (( rss > peak )) && peak=$rss
done
s1=$(sent); t1=$(date +%s%N)
awk -v a="$s0" -v b="$s1" -v t="$(( t1 - t0 ))" -v r="$RATE" 'BEGIN {
    rate = (b - a) / (t / 1e9)
    printf "sent %d in %.1f s: %.1f messages/s against a configured %d/s (%+.2f %%)\n", b - a, t / 1e9, rate, r, (rate - r) * 100 / r }'
echo "worker VmRSS peak while sending: ${peak} kB; VmHWM: $(awk '/VmHWM/{print $2, $3}' /proc/$WPID/status)"
echo "redis used_memory: $(redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory_human/{print $2}' | tr -d '\r')"
status; echo
