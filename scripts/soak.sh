#!/usr/bin/env bash
# Soak test (not run in CI): the release proxy in front of several mock execution clients
# (scripts/soak_el.py), driven by beacon-node traffic (scripts/soak_bn.py) for DURATION
# seconds while execution clients are killed and restarted at random and some answers are
# delayed or dropped. Prints the proxy's RSS and open file descriptors at the start, every
# minute (SAMPLE_EVERY) and at the end, then one PASS/FAIL line:
#   FAIL if RSS grew by more than RSS_GROWTH_PCT % (and RSS_FLOOR_KB) from the start (after
#   warm-up) to the end,
#   if descriptors leaked (idle count after traffic vs before it, beyond the EL keep-alive
#   pool), if the proxy died or did not exit 0 on SIGTERM, or if no request succeeded.
#
# Usage: scripts/soak.sh            (DURATION=600 by default)
#        DURATION=60 ELS=3 RATE=200 CONNS=4 FAULT_EVERY=8 scripts/soak.sh
# Needs: cargo, python3 (standard library only), Linux /proc.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-600}
ELS=${ELS:-3}                   # execution clients; the first is the primary
RATE=${RATE:-100}               # beacon-node requests per second, all connections together
CONNS=${CONNS:-4}               # kept-alive beacon-node connections (plus one that reconnects per request)
FAULT_EVERY=${FAULT_EVERY:-8}   # mean seconds between EL kills
RSS_GROWTH_PCT=${RSS_GROWTH_PCT:-20}
RSS_FLOOR_KB=${RSS_FLOOR_KB:-2048}  # growth below this is never a failure (the RSS is only a few MB)
SAMPLE_EVERY=${SAMPLE_EVERY:-60}  # seconds between RSS/fd lines
EL_POOL=8                       # MAX_CONNS per EL in src/upstream.rs: idle keep-alive connections may stay

log() { echo "$(date +%T) $*"; }

log "building the release binary"
cargo build --release --quiet --bin sync-proxy
PROXY_BIN=target/release/sync-proxy

work=$(mktemp -d -t sync-proxy-soak.XXXXXX)
declare -a el_pids el_ports
proxy_pid="" bn_pid=""

cleanup() {
  for pid in "${el_pids[@]:-}" "$bn_pid" "$proxy_pid"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {  # waits up to 5 s for 127.0.0.1:$1 to accept connections
  python3 - "$1" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 5
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("port %s never opened" % sys.argv[1])
        time.sleep(0.05)
PY
}

start_el() {  # start_el INDEX: the primary is healthy; secondaries are slow or drop now and then
  local i=$1 faults=""
  if [ "$i" -gt 0 ]; then faults="--slow 0.02 --delay-ms 100 --drop 0.005"; fi
  # shellcheck disable=SC2086
  python3 scripts/soak_el.py --port "${el_ports[$i]}" $faults 2>>"$work/el$i.log" &
  el_pids[$i]=$!
  wait_port "${el_ports[$i]}"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$proxy_pid/status"; }
fds() { ls "/proc/$proxy_pid/fd" | wc -l; }
sample() { log "$1: RSS $(rss_kb) kB, open fds $(fds)"; }

builders=""
for ((i = 0; i < ELS; i++)); do
  el_ports[$i]=$(free_port)
  start_el "$i"
  builders+="${builders:+,}127.0.0.1:${el_ports[$i]}"
done

proxy_port=$(free_port)
"$PROXY_BIN" --addr "127.0.0.1:$proxy_port" --builders "$builders" --loglevel info 2>"$work/proxy.log" &
proxy_pid=$!
wait_port "$proxy_port"
log "proxy pid $proxy_pid on 127.0.0.1:$proxy_port; ELs $builders; logs in $work"
sample "idle before traffic"
fds_idle_start=$(fds)

python3 scripts/soak_bn.py --proxy "127.0.0.1:$proxy_port" --duration "$((DURATION + 5))" \
  --rate "$RATE" --conns "$CONNS" >"$work/bn.out" 2>&1 &
bn_pid=$!

warmup=$((DURATION / 10 < 30 ? DURATION / 10 : 30))
warmup=$((warmup < 5 ? 5 : warmup))
sleep "$warmup"
sample "start (after ${warmup} s of traffic)"
rss_start=$(rss_kb)

start=$SECONDS
end=$((start + DURATION - warmup))
next_sample=$((start + SAMPLE_EVERY))
next_fault=$((start + RANDOM % (2 * FAULT_EVERY) + 1))
kills=0
declare -a down_until
while [ "$SECONDS" -lt "$end" ]; do
  kill -0 "$proxy_pid" 2>/dev/null || { log "FAIL: the proxy died"; tail -20 "$work/proxy.log"; exit 1; }
  now=$SECONDS
  for ((i = 0; i < ELS; i++)); do
    if [ -n "${down_until[$i]:-}" ] && [ "$now" -ge "${down_until[$i]}" ]; then
      start_el "$i"
      down_until[$i]=""
    fi
  done
  if [ "$now" -ge "$next_fault" ]; then
    i=$((RANDOM % ELS))
    if [ -z "${down_until[$i]:-}" ]; then
      kill -9 "${el_pids[$i]}" 2>/dev/null || true
      wait "${el_pids[$i]}" 2>/dev/null || true
      down_until[$i]=$((now + 1 + RANDOM % 5))
      kills=$((kills + 1))
    fi
    next_fault=$((now + RANDOM % (2 * FAULT_EVERY) + 1))
  fi
  if [ "$now" -ge "$next_sample" ]; then
    sample "after $((now - start + warmup)) s ($kills EL kills so far)"
    next_sample=$((next_sample + SAMPLE_EVERY))
  fi
  sleep 1
done
sample "end (under traffic, $kills EL kills)"
rss_end=$(rss_kb)

for ((i = 0; i < ELS; i++)); do
  if [ -n "${down_until[$i]:-}" ]; then start_el "$i"; down_until[$i]=""; fi
done
wait "$bn_pid" || true
bn_pid=""
cat "$work/bn.out"
sleep 3
sample "idle after traffic"
fds_idle_end=$(fds)

python3 - "$proxy_port" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("sync_proxy_requests_total", "sync_proxy_el_errors_total", "sync_proxy_el_dropped_total",
                        "sync_proxy_el_backlog_requests")) and not line.endswith(" 0"):
        print("  " + line)
PY

kill -TERM "$proxy_pid"
set +e
wait "$proxy_pid"
proxy_status=$?
set -e
proxy_pid=""

verdict=PASS
reasons=()
growth=$(( (rss_end - rss_start) * 100 / rss_start ))
if [ "$growth" -gt "$RSS_GROWTH_PCT" ] && [ $((rss_end - rss_start)) -gt "$RSS_FLOOR_KB" ]; then verdict=FAIL; reasons+=("RSS grew ${growth}%"); fi
if [ "$fds_idle_end" -gt $((fds_idle_start + ELS * EL_POOL)) ]; then
  verdict=FAIL; reasons+=("fds leaked: idle ${fds_idle_start} before, ${fds_idle_end} after")
fi
if [ "$proxy_status" -ne 0 ]; then verdict=FAIL; reasons+=("exit status $proxy_status after SIGTERM"); fi
if ! grep -Eq '(^|[ ,])200=[1-9]' "$work/bn.out"; then verdict=FAIL; reasons+=("no request succeeded"); fi
log "soak: $verdict after ${DURATION} s: RSS ${rss_start} -> ${rss_end} kB (${growth}%), idle fds ${fds_idle_start} -> ${fds_idle_end}, ${kills} EL kills, exit ${proxy_status}${reasons:+; ${reasons[*]}}"
[ "$verdict" = PASS ]
