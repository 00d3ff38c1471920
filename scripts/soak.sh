#!/usr/bin/env bash
# Soak test (not run in CI): the release proxy (with --jwt-secret) in front of several mock
# execution clients (scripts/soak_el.py), driven by signed beacon-node traffic
# (scripts/soak_bn.py) for SOAK_SECONDS seconds while execution clients are killed and
# restarted at random, some answers are delayed or dropped, and hostile clients
# (scripts/soak_hostile.py: non-readers, pipeliners, token-less 16 MiB bodies, connection
# floods past --max-connections, slow-loris heads) run alongside. Samples the proxy's RSS and
# open file descriptors every second (a line every SAMPLE_EVERY seconds), then one PASS/FAIL line:
#   FAIL if RSS ever exceeded RSS_BUDGET_KB, or was not flat: the average of the last third
#   of the samples above the first third's by more than RSS_GROWTH_PCT % (and RSS_FLOOR_KB),
#   if any honest beacon-node request got no answer, if a hostile connection was not closed
#   within its bound (write/read/idle timeout plus slack: a lock-out),
#   if descriptors leaked (idle count after traffic vs before it, beyond the EL keep-alive
#   pool), if the proxy died or did not exit 0 on SIGTERM, or if no request succeeded.
#
# Usage: scripts/soak.sh                 (SOAK_SECONDS=600 by default)
#        SOAK_SECONDS=120 scripts/soak.sh
#        SOAK_SECONDS=60 ELS=3 RATE=200 CONNS=4 FAULT_EVERY=8 HOSTILE=0 scripts/soak.sh
# Needs: cargo, python3 (3.9+, standard library only), Linux /proc.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${SOAK_SECONDS:-${DURATION:-600}}  # DURATION is the older name
ELS=${ELS:-3}                   # execution clients; the first is the primary
RATE=${RATE:-100}               # beacon-node requests per second, all connections together
CONNS=${CONNS:-4}               # kept-alive beacon-node connections (plus one that reconnects per request)
FAULT_EVERY=${FAULT_EVERY:-8}   # mean seconds between EL kills
RSS_GROWTH_PCT=${RSS_GROWTH_PCT:-20}
RSS_FLOOR_KB=${RSS_FLOOR_KB:-2048}  # growth below this is never a failure (the RSS is only a few MB)
SAMPLE_EVERY=${SAMPLE_EVERY:-$((DURATION / 10 > 10 ? DURATION / 10 : 10))}  # seconds between RSS/fd lines
RSS_BUDGET_KB=${RSS_BUDGET_KB:-65536}  # the proxy's RSS must stay under this all along
HOSTILE=${HOSTILE:-1}           # 0: honest traffic only
MAX_CONNS=${MAX_CONNS:-64}      # --max-connections (the floods go past it)
WRITE_TIMEOUT_MS=${WRITE_TIMEOUT_MS:-2000}  # short, so hostile clients cycle many times
READ_TIMEOUT_MS=${READ_TIMEOUT_MS:-3000}
IDLE_TIMEOUT_MS=${IDLE_TIMEOUT_MS:-3000}
EL_POOL=8                       # MAX_CONNS per EL in src/upstream.rs: idle keep-alive connections may stay

log() { echo "$(date +%T) $*"; }

log "building the release binary"
cargo build --release --quiet --bin sync-proxy
PROXY_BIN=target/release/sync-proxy

work=$(mktemp -d -t sync-proxy-soak.XXXXXX)
declare -a el_pids el_ports
proxy_pid="" bn_pid="" hostile_pid="" sampler_pid=""

cleanup() {
  for pid in "${el_pids[@]:-}" "$bn_pid" "$hostile_pid" "$sampler_pid" "$proxy_pid"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# free_ports N and wait_port PORT PID
# shellcheck source=scripts/lib/loopback.sh
source scripts/lib/loopback.sh

start_el() {  # start_el INDEX: the primary is healthy; secondaries are slow or drop now and then
  local i=$1 faults=""
  if [ "$i" -gt 0 ]; then faults="--slow 0.02 --delay-ms 100 --drop 0.005"; fi
  # shellcheck disable=SC2086
  python3 scripts/soak_el.py --port "${el_ports[$i]}" $faults 2>>"$work/el$i.log" &
  el_pids[$i]=$!
  wait_port "${el_ports[$i]}" "${el_pids[$i]}"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$proxy_pid/status"; }
fds() { ls "/proc/$proxy_pid/fd" | wc -l; }
sample() { log "$1: RSS $(rss_kb) kB, open fds $(fds)"; }

read -r -a ports <<<"$(free_ports $((ELS + 1)))"
proxy_port=${ports[$ELS]}
builders=""
for ((i = 0; i < ELS; i++)); do
  el_ports[$i]=${ports[$i]}
  start_el "$i"
  builders+="${builders:+,}127.0.0.1:${el_ports[$i]}"
done

secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
echo "$secret" >"$work/jwt.hex"
"$PROXY_BIN" --addr "127.0.0.1:$proxy_port" --builders "$builders" --loglevel info \
  --jwt-secret "$work/jwt.hex" --max-connections "$MAX_CONNS" --write-timeout "$WRITE_TIMEOUT_MS" \
  --read-timeout "$READ_TIMEOUT_MS" --idle-timeout "$IDLE_TIMEOUT_MS" 2>"$work/proxy.log" &
proxy_pid=$!
wait_port "$proxy_port" "$proxy_pid"
log "proxy pid $proxy_pid on 127.0.0.1:$proxy_port; ELs $builders; logs in $work"
sample "idle before traffic"
fds_idle_start=$(fds)

# RSS (kB) and open fds every second, for the budget and flatness checks.
( while kill -0 "$proxy_pid" 2>/dev/null; do
    echo "$SECONDS $(rss_kb) $(fds)" 2>/dev/null || true
    sleep 1
  done ) >"$work/samples" &
sampler_pid=$!

python3 scripts/soak_bn.py --proxy "127.0.0.1:$proxy_port" --duration "$((DURATION + 5))" \
  --rate "$RATE" --conns "$CONNS" --jwt-secret-hex "$secret" >"$work/bn.out" 2>&1 &
bn_pid=$!
if [ "$HOSTILE" != 0 ]; then
  python3 scripts/soak_hostile.py --proxy "127.0.0.1:$proxy_port" --duration "$DURATION" \
    --max-connections "$MAX_CONNS" --write-timeout-ms "$WRITE_TIMEOUT_MS" \
    --read-timeout-ms "$READ_TIMEOUT_MS" \
    --idle-timeout-ms "$IDLE_TIMEOUT_MS" >"$work/hostile.out" 2>&1 &
  hostile_pid=$!
fi

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
if [ -n "$hostile_pid" ]; then
  wait "$hostile_pid" || true
  hostile_pid=""
  cat "$work/hostile.out"
fi
# Every connection left is closed by the proxy's own timeouts (the longest, plus a margin).
settle=$(( (WRITE_TIMEOUT_MS > READ_TIMEOUT_MS ? WRITE_TIMEOUT_MS : READ_TIMEOUT_MS) / 1000 + 3 ))
settle=$(( settle > IDLE_TIMEOUT_MS / 1000 + 3 ? settle : IDLE_TIMEOUT_MS / 1000 + 3 ))
sleep "$settle"
sample "idle after traffic"
fds_idle_end=$(fds)
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""

python3 - "$proxy_port" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("sync_proxy_requests_total", "sync_proxy_el_errors_total", "sync_proxy_el_dropped_total",
                        "sync_proxy_el_backlog_requests", "sync_proxy_connections_closed_total")) and not line.endswith(" 0"):
        print("  " + line)
PY

kill -TERM "$proxy_pid"
set +e
wait "$proxy_pid"
proxy_status=$?
set -e
proxy_pid=""

# RSS over the traffic: its maximum, and the last third's average against the first third's
# (samples from the end of the warm-up to the end of the traffic).
read -r rss_max fds_max first_avg last_avg n_samples < <(awk -v from="$start" -v to="$((end + 1))" '
  $1 >= from && $1 <= to && $2 > 0 { n++; rss[n] = $2; fd[n] = $3 }
  END {
    third = int(n / 3); if (third < 1) third = 1
    for (i = 1; i <= n; i++) { if (rss[i] > m) m = rss[i]; if (fd[i] > f) f = fd[i] }
    for (i = 1; i <= third; i++) a += rss[i]
    for (i = n - third + 1; i <= n; i++) b += rss[i]
    printf "%d %d %d %d %d\n", m, f, a / third, b / third, n
  }' "$work/samples")
rss_all_max=$(awk '$2 > m { m = $2 } END { print m + 0 }' "$work/samples")
fds_all_max=$(awk '$3 > m { m = $3 } END { print m + 0 }' "$work/samples")
log "RSS over ${n_samples} samples under traffic: max ${rss_max} kB (max over the whole run ${rss_all_max} kB, budget ${RSS_BUDGET_KB} kB); first third avg ${first_avg} kB, last third avg ${last_avg} kB; open fds max ${fds_all_max}"
unanswered=$(sed -n 's/.* unanswered=\([0-9]*\).*/\1/p' "$work/bn.out")
stuck=$(sed -n 's/^hostile: .* stuck=\([0-9]*\).*/\1/p' "$work/hostile.out" 2>/dev/null || true)

verdict=PASS
reasons=()
growth=$(( (last_avg - first_avg) * 100 / first_avg ))
if [ "$growth" -gt "$RSS_GROWTH_PCT" ] && [ $((last_avg - first_avg)) -gt "$RSS_FLOOR_KB" ]; then
  verdict=FAIL; reasons+=("RSS not flat: last third ${growth}% above the first")
fi
if [ "$rss_all_max" -gt "$RSS_BUDGET_KB" ]; then verdict=FAIL; reasons+=("RSS ${rss_all_max} kB over the budget"); fi
if [ "${unanswered:-1}" -ne 0 ]; then verdict=FAIL; reasons+=("${unanswered:-?} honest requests unanswered"); fi
if [ "$HOSTILE" != 0 ] && [ "${stuck:-1}" -ne 0 ]; then verdict=FAIL; reasons+=("${stuck:-?} hostile connections never closed"); fi
if [ "$fds_idle_end" -gt $((fds_idle_start + ELS * EL_POOL)) ]; then
  verdict=FAIL; reasons+=("fds leaked: idle ${fds_idle_start} before, ${fds_idle_end} after")
fi
if [ "$proxy_status" -ne 0 ]; then verdict=FAIL; reasons+=("exit status $proxy_status after SIGTERM"); fi
if ! grep -Eq '(^|[ ,])200=[1-9]' "$work/bn.out"; then verdict=FAIL; reasons+=("no request succeeded"); fi
log "soak: $verdict after ${DURATION} s: RSS ${rss_start} -> ${rss_end} kB, thirds ${first_avg} -> ${last_avg} kB (${growth}%), max ${rss_all_max} kB, unanswered ${unanswered:-?}, hostile stuck ${stuck:-n/a}, idle fds ${fds_idle_start} -> ${fds_idle_end}, ${kills} EL kills, exit ${proxy_status}${reasons:+; ${reasons[*]}}"
[ "$verdict" = PASS ]
