#!/bin/bash
# Runs the proxy under `strace -f -c` for the loopback benchmark: pass this script as
# SYNC_PROXY_BIN and the proxy to count as STRACE_PROXY_BIN; each proxy started writes its
# system call counts to $STRACE_OUT.<ns>.txt (default /tmp/strace-proxy). The benchmark stops
# its proxy with SIGTERM by pid: that is forwarded to the proxy, so strace sees it exit and
# writes the counts. Divide by the scenario's calls (requests + warm-up) for a per-call figure:
#   STRACE_PROXY_BIN=target/release/sync-proxy SYNC_PROXY_BIN=scripts/strace-proxy.sh \
#   LOOPBACK_ONLY=seq-1k-2 LOOPBACK_REPS=1 LOOPBACK_NGINX=0 cargo bench --bench loopback
set -u
out=${STRACE_OUT:-/tmp/strace-proxy}.$(date +%s%N).txt
strace -f -c -o "$out" "$STRACE_PROXY_BIN" "$@" &
tracer=$!
trap 'for p in $(pgrep -P "$tracer"); do kill -TERM "$p"; done' TERM INT
wait "$tracer"
# The first wait returns when the trap ran; the second one waits for strace to finish.
wait "$tracer"
