#!/usr/bin/env bash
# What Redis spends per event to enqueue it (issue 10): the same events written four ways, each
# into a fresh redis-server (AOF everysec, rewrites deferred, as in versus-bare.sh), measured as
# Redis's own CPU time (INFO cpu, user + sys) over the events written. No coexist process runs:
# the commands are generated up front (bench/enqueue_calls.py) and sent by `redis-cli --pipe`.
#
#   xadd           one XADD per event: the floor a bare receiver pays
#   set-xadd       SET NX EX + XADD per event, pipelined: the two writes dedupe needs, not atomic
#   script-writes  the same two writes in one script call per group (bench/enqueue-writes.lua)
#   enqueue        src/lua/enqueue.lua, what `coexist serve` runs (aliases, replies, pcall)
#
#   bench/enqueue-cost.sh                         # 3 rounds of 3,000 calls × 16 events
#   ROUNDS=5 CALLS=5000 PER_CALL=16 bench/enqueue-cost.sh
#   ENQUEUE_LUA=/tmp/old/enqueue.lua VARIANTS=enqueue bench/enqueue-cost.sh   # another version of the script
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/lib.sh
ROUNDS=${ROUNDS:-3}
CALLS=${CALLS:-3000}
PER_CALL=${PER_CALL:-16}   # events per script call (~17 in a versus-bare.sh run, by the committer's rounds)
VARIANTS=${VARIANTS:-"xadd set-xadd script-writes enqueue"}
ENQUEUE_LUA=${ENQUEUE_LUA:-src/lua/enqueue.lua}

WORK=$(mktemp -d /tmp/coexist-enqueue-cost.XXXXXX)
PORT=$(free_port)
PIDS=()
cli() { redis-cli -p "$PORT" "$@"; }
cleanup() {
    # Each cell runs in a subshell ($(measure ...)) with its own redis-server: stop whichever runs.
    cli shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cpu_secs() { cli info cpu | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.6f", s }'; }

measure() {  # variant -> prints µs of Redis CPU per event
    local variant=$1 sha=""
    rm -rf "$WORK/data"; mkdir -p "$WORK/data"
    start_redis "$PORT" "$WORK/data" "$WORK/redis.log" aof-norewrite
    case $variant in
    script-writes) sha=$(cli script load "$(cat bench/enqueue-writes.lua)") ;;
    enqueue) sha=$(cli script load "$(cat "$ENQUEUE_LUA")") ;;
    esac
    python3 bench/enqueue_calls.py "$variant" "$CALLS" "$PER_CALL" $sha >"$WORK/commands.resp"
    local before after events stored
    before=$(cpu_secs)
    cli --pipe <"$WORK/commands.resp" >"$WORK/pipe.log"
    after=$(cpu_secs)
    events=$((CALLS * PER_CALL))
    stored=0
    for key in $(cli --scan --pattern 'cx:{shop}:in:*'); do stored=$((stored + $(cli xlen "$key"))); done
    if ! grep -q 'errors: 0' "$WORK/pipe.log" || [[ $stored -ne $events ]]; then
        echo "$variant: $stored of $events events stored" >&2; cat "$WORK/pipe.log" >&2; exit 1
    fi
    kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
    awk -v a="$before" -v b="$after" -v n="$events" 'BEGIN { printf "%.1f", (b - a) / n * 1e6 }'
}

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'); $(date -u +%FT%TZ); $(redis-server --version | cut -d' ' -f3)"
echo "Redis CPU µs per event, $CALLS groups of $PER_CALL events, one fresh redis-server per cell"
printf '%-6s' round; for v in $VARIANTS; do printf ' %14s' "$v"; done; echo
for r in $(seq "$ROUNDS"); do
    printf '%-6s' "$r"
    for v in $VARIANTS; do printf ' %14s' "$(measure "$v")"; done
    echo
done
