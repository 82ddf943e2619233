# bench/lib.sh: what the bench scripts share, sourced by each (`source bench/lib.sh`), never run.
# Every script starts its own throwaway redis-server on a free port; these are the pieces.

# A free TCP port on the loopback.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits until the redis-server on port $1 answers PING (5 s at most); fails loudly otherwise.
wait_for_redis() {
    local _
    for _ in $(seq 100); do
        redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "redis-server on port $1 did not answer PING" >&2
    return 1
}

# start_redis PORT DIR LOG PERSIST [extra redis-server args...]
# Starts redis-server in the background (data in DIR, log in LOG), sets REDIS_PID, adds it to
# the caller's PIDS array (killed by the caller's cleanup) and waits for PING. PERSIST:
#   aof            AOF fsynced every second, no RDB snapshots (no fork at a snapshot)
#   aof-norewrite  the same, with the background AOF rewrite deferred past the run (a run grows
#                  the data set by ~1 GB, and each rewrite is a fork taking a full core)
#   none           no persistence at all
#   default        Redis's own defaults (RDB snapshots)
start_redis() {
    local port=$1 dir=$2 log=$3 persist=$4
    shift 4
    local args
    case $persist in
    aof) args=(--appendonly yes --appendfsync everysec --save "") ;;
    aof-norewrite) args=(--appendonly yes --appendfsync everysec --save "" --auto-aof-rewrite-min-size 64gb) ;;
    none) args=(--appendonly no --save "") ;;
    default) args=() ;;
    *) echo "persistence must be aof, aof-norewrite, none or default (got '$persist')" >&2; exit 2 ;;
    esac
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" "${args[@]}" --daemonize no \
        --logfile "$log" "$@" &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_for_redis "$port"
}
