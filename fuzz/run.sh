#!/usr/bin/env bash
# Runs the fuzz targets one after another and prints one summary line per target.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS (default 30) is the time given to each target; the targets default to all of them.
# Each runs in one process on its corpus directory, corpus/<target>, which starts with the
# checked-in seeds; libFuzzer adds the inputs it finds there, and git ignores all but seed-*.
# Crashes go to artifacts/<target>/, the full libFuzzer output to artifacts/<target>.log.
# Extra libFuzzer flags can be passed in FUZZ_ARGS. Exits 1 if any target crashed or failed.
set -euo pipefail

cd "$(dirname "$0")"
seconds=${1:-30}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi
shift || true

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

failed=0
for target in "${targets[@]}"; do
    corpus="$PWD/corpus/$target"
    log="$PWD/artifacts/$target.log"
    mkdir -p "$corpus" "$PWD/artifacts"
    flags=(-max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1)
    if [[ -f dict/$target.dict ]]; then
        flags+=(-dict="$PWD/dict/$target.dict")
    fi
    # shellcheck disable=SC2206 # FUZZ_ARGS is split into flags on purpose.
    flags+=(${FUZZ_ARGS:-})
    start=$SECONDS
    status=0
    cargo +nightly fuzz run "$target" "$corpus" -- "${flags[@]}" >"$log" 2>&1 || status=$?
    elapsed=$((SECONDS - start))

    # libFuzzer ends a clean run with "Done N runs in S second(s)"; after a crash only the
    # final stats say how many inputs ran. In fork mode (-fork=N in FUZZ_ARGS) the last
    # "#N: cov: ... oom/timeout/crash: A/B/C time: Ss" line has the totals instead.
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
    fork_line=$(grep -E '^#[0-9]+: cov: .* oom/timeout/crash: [0-9/]+ time: [0-9]+s' "$log" | tail -n 1 || true)
    fork_failures=
    if [[ -z $done_line && -n $fork_line ]]; then
        execs=$(sed 's/^#\([0-9]*\):.*/\1/' <<<"$fork_line")
        secs=$(sed 's/.* time: \([0-9]*\)s.*/\1/' <<<"$fork_line")
        fork_failures=$(sed 's|.*oom/timeout/crash: \([0-9/]*\).*|\1|' <<<"$fork_line")
        if ((status == 0)) && [[ $fork_failures == 0/0/0 ]]; then
            done_line=$fork_line
        fi
    elif [[ -n $done_line ]]; then
        execs=$(awk '{print $2}' <<<"$done_line")
        secs=$(awk '{print $5}' <<<"$done_line")
    else
        # After a crash the wall time includes writing the backtrace, so the time is derived
        # from libFuzzer's final stats where it can be.
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
        execs=${execs:-0}
        if [[ -n $rate ]] && ((rate > 0)); then
            secs=$(((execs + rate / 2) / rate))
        else
            secs=$elapsed
        fi
    fi
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if ((status == 0)) && [[ -n $done_line ]]; then
        result=ok
    elif [[ -n $fork_failures ]]; then
        result="FAILED, oom/timeout/crash $fork_failures in fork mode (log: $log)"
        failed=1
    elif [[ -n $artifact ]]; then
        result="CRASH, input in $artifact (log: $log)"
        failed=1
    else
        result="FAILED with exit status $status (log: $log)"
        failed=1
    fi
    echo "fuzz $target: $execs execs in $secs s, $result"
done
exit "$failed"
