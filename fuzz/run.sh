#!/usr/bin/env bash
# Builds the AFL++ fuzz targets and runs each for FUZZ_SECS seconds (default 10), one after
# the other; prints executions, execs/s, crashes and hangs per target (from fuzzer_stats) and
# exits non-zero when a target crashed (or afl-fuzz itself failed).
#
#   bash fuzz/run.sh                  # every target, 10 s each
#   FUZZ_SECS=600 bash fuzz/run.sh meta waha
#   FUZZ_RESUME=1 FUZZ_SECS=600 bash fuzz/run.sh meta   # continue the queue in fuzz/out/meta
#
# FUZZ_OUT (default fuzz/out) holds each target's AFL output directory; FUZZ_FAIL_ON_HANGS=1
# also fails on hangs (off by default: on a loaded 2-core machine a 1 s timeout can trip).
# Installs cargo-afl (which builds AFL++ from its sources) when it is missing.
set -euo pipefail
cd "$(dirname "$0")"

ALL=(meta waha forward api_message api_broadcast signature config)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${ALL[@]}")
secs=${FUZZ_SECS:-10}
out=${FUZZ_OUT:-out}

if ! cargo afl --version >/dev/null 2>&1; then
    echo "== installing cargo-afl (builds AFL++)"
    cargo install cargo-afl --locked
fi
# The AFL++ runtime is built per rustc version; install does it, a toolchain update needs it again.
cargo afl config --build >/dev/null 2>&1 || true

mkdir -p "$out"
failed=0

echo "== building fuzz targets"
cargo afl build --release --bins

dict_of() {
    case "$1" in
        meta) echo dict/meta.dict ;;
        waha) echo dict/waha.dict ;;
        forward | api_message | api_broadcast) echo dict/api.dict ;;
        config) echo dict/config.dict ;;
        *) ;;
    esac
}

# Every input under regressions/<target>/ (minimised crashes) must now run clean: outside
# afl-fuzz a target binary reads one input from stdin and aborts on a panic.
for t in "${targets[@]}"; do
    for f in regressions/"$t"/*; do
        [ -f "$f" ] || continue
        if ! "target/release/$t" <"$f" >/dev/null 2>"$out/regression.log"; then
            echo "regression: $f still crashes target $t:"
            tail -n 5 "$out/regression.log"
            failed=1
        fi
    done
done

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
printf '%-14s %12s %9s %8s %8s %6s\n' target execs execs/s seconds crashes hangs
for t in "${targets[@]}"; do
    input=(-i "seeds/$t")
    if [ "${FUZZ_RESUME:-0}" = 1 ] && [ -d "$out/$t/default" ]; then
        input=(-i -)
    else
        rm -rf "${out:?}/$t"
    fi
    dict=$(dict_of "$t")
    args=("${input[@]}" -o "$out/$t" -V "$secs" -t 1000+)
    [ -n "$dict" ] && args+=(-x "$dict")
    if ! cargo afl fuzz "${args[@]}" "target/release/$t" >"$out/$t.log" 2>&1; then
        echo "$t: afl-fuzz failed (tail of $out/$t.log):"
        tail -n 20 "$out/$t.log"
        failed=1
        continue
    fi
    stats="$out/$t/default/fuzzer_stats"
    get() { awk -F' *: *' -v k="$1" '$1 == k {print $2}' "$stats"; }
    crashes=$(get saved_crashes)
    hangs=$(get saved_hangs)
    printf '%-14s %12s %9s %8s %8s %6s\n' "$t" "$(get execs_done)" "$(get execs_per_sec)" \
        "$(get run_time)" "$crashes" "$hangs"
    if [ "${crashes:-0}" != 0 ]; then
        echo "  crash inputs: $out/$t/default/crashes/ (minimise: cargo afl tmin -i FILE -o fuzz/regressions/$t/NAME target/release/$t)"
        failed=1
    fi
    if [ "${hangs:-0}" != 0 ]; then
        echo "  hang inputs: $out/$t/default/hangs/"
        [ "${FUZZ_FAIL_ON_HANGS:-0}" = 1 ] && failed=1
    fi
done
exit $failed
