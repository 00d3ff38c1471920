#!/usr/bin/env bash
# Interop (issue 7): sync-proxy between a real beacon node and real execution clients.
#
# Builds target/release/sync-proxy, then runs each scenario through the realnet devnet tool
# (../shared/tools/realnet/run.sh: Lodestar 1.5.1 BN + 2 EthereumJS 0.10.5 ELs on 127.0.0.1,
# BN -> sync-proxy on 127.0.0.1:18550 -> every EL):
#   shared    one JWT secret for all; the BN's tokens are passed through to the ELs
#   separate  JWT_MODE=separate: the proxy checks the BN's tokens (--jwt-secret) and mints each
#             EL's own (--builder-jwt-secrets, with --jwt-client-id); no request may be rejected
#   restart   RESTART_EL=2: EL2 is stopped for several slots and restarted; it must catch up from
#             the proxy's backlog, and the proxy must log it going down and coming back up
#   dead-el   a third builder with nothing listening (after the two real ELs): the chain and the
#             live ELs are unaffected, and the proxy logs the dead one down at most twice
# Every scenario asserts run.sh's PASS, that both ELs end on one head (same number and hash, or one
# block apart with run.sh's "hash matches el1" at EL2's height), and that the proxy logged no ERROR
# and no "no execution client answered"; then its own checks above.
#
# Results: target/interop/<scenario>/{run.out,proxy.log,bn.log,el*.log,env,...} and
# target/interop/summary.txt (per scenario: result, EL heights and head hashes, proxy WARN lines).
# Exit: 0 all passed; 1 a scenario failed (or the build failed, or a port is busy);
#       0 with one line "interop: skipped (...)" when the devnet tool or node is missing.
#
# Env (optional): INTEROP_SCENARIOS="shared separate restart dead-el" (which, in which order),
#   INTEROP_RUN_SECONDS=45 (each scenario's RUN_SECONDS), INTEROP_RESTART_RUN_SECONDS=70,
#   INTEROP_DEAD_EL=http://127.0.0.1:18559, REALNET_HOME=/tmp/realnet (run.sh's install cache).
# Only one realnet may run at a time on a machine (fixed ports): a lock in REALNET_HOME and a
# port check guard that.
set -uo pipefail

SELF=$(readlink -f "$0")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
BIN=$ROOT/target/release/sync-proxy

# ------------------------------------------------------------------ proxy launcher (PROXY_CMD)
# run.sh starts PROXY_CMD with bash -c, in its run dir, with REALNET_EL_ENGINE_URLS,
# REALNET_EL_JWTS, REALNET_BN_JWT and REALNET_PROXY_PORT set; PROXY_CMD calls back into this
# script, which builds the command line from them (and the INTEROP_* settings of the scenario).
launch_proxy() {
  local builders=$REALNET_EL_ENGINE_URLS args urls jwts map i sep=""
  [ -n "${INTEROP_EXTRA_BUILDERS:-}" ] && builders+=",$INTEROP_EXTRA_BUILDERS"
  args=(--addr "127.0.0.1:$REALNET_PROXY_PORT" --builders "$builders" --loglevel info)
  if [ "${INTEROP_JWT:-}" = separate ]; then
    # one entry per real EL: its engine URL exactly as in --builders -> the hex in its secret file
    IFS=, read -ra urls <<<"$REALNET_EL_ENGINE_URLS"
    IFS=, read -ra jwts <<<"$REALNET_EL_JWTS"
    [ "${#urls[@]}" = "${#jwts[@]}" ] || { echo "interop: ${#urls[@]} EL URLs but ${#jwts[@]} JWT files" >&2; exit 2; }
    map=$(dirname "$REALNET_BN_JWT")/builder-jwt-secrets.json
    {
      printf '{'
      for i in "${!urls[@]}"; do
        printf '%s\n  "%s": "%s"' "$sep" "${urls[$i]}" "$(tr -d ' \t\r\n' <"${jwts[$i]}")"; sep=,
      done
      printf '\n}\n'
    } >"$map"
    args+=(--jwt-secret "$REALNET_BN_JWT" --builder-jwt-secrets "$map" --jwt-client-id sync-proxy-interop)
  fi
  echo "interop: exec $INTEROP_BIN ${args[*]}"
  exec "$INTEROP_BIN" "${args[@]}"
}
if [ "${1:-}" = __proxy ]; then launch_proxy; fi

# ------------------------------------------------------------------ preconditions
REALNET=$(dirname "$SELF")/../../shared/tools/realnet/run.sh
skip() { echo "interop: skipped ($*)"; exit 0; }
[ -f "$REALNET" ] || skip "no devnet tool at $REALNET"
REALNET=$(readlink -f "$REALNET")
for tool in node python3 curl; do
  command -v "$tool" >/dev/null || skip "$tool not found; the devnet tool needs it"
done

SCENARIOS=${INTEROP_SCENARIOS:-shared separate restart dead-el}
RUN_S=${INTEROP_RUN_SECONDS:-45}
RESTART_RUN_S=${INTEROP_RESTART_RUN_SECONDS:-70}
DEAD_EL=${INTEROP_DEAD_EL:-http://127.0.0.1:18559}
PROXY_PORT=18550
REALNET_HOME=${REALNET_HOME:-/tmp/realnet}
OUT=$ROOT/target/interop
for sc in $SCENARIOS; do
  case $sc in shared|separate|restart|dead-el) ;; *) echo "interop: unknown scenario '$sc'" >&2; exit 2;; esac
done

T0=$SECONDS
echo "interop: cargo build --release"
(cd "$ROOT" && cargo build --release) || { echo "interop: FAIL: cargo build --release failed"; exit 1; }
BUILD_S=$((SECONDS - T0))
[ -x "$BIN" ] || { echo "interop: FAIL: $BIN missing after the build"; exit 1; }

mkdir -p "$REALNET_HOME" "$OUT" || exit 1
exec 9>"$REALNET_HOME/.interop.lock"
flock -n 9 || { echo "interop: FAIL: another interop run holds $REALNET_HOME/.interop.lock"; exit 1; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
busy=""
for p in $PROXY_PORT 18551 18552 18645 18646 30310 30311 19596 19000 "${DEAD_EL##*:}"; do port_busy "$p" && busy+=" $p"; done
[ -z "$busy" ] || { echo "interop: FAIL: 127.0.0.1 ports in use:$busy (is another realnet running?)"; exit 1; }

trap 'echo "interop: interrupted"; exit 130' INT TERM

# ------------------------------------------------------------------ one scenario
declare -A RESULT SUMMARY_BLOCKS SUMMARY_HEADS NOTES WARN_COUNT FAILS TOOK
SC=""
fail() { FAILS[$SC]+="  - $*"$'\n'; echo "interop[$SC]: FAIL: $*"; }
# el_head K FILE -> "N NUMBER HASH" from run.sh's "elK eth_blockNumber=N head=#NUMBER HASH ..." line
el_head() {
  local line
  line=$(grep -E "^el$1 eth_blockNumber=" "$2" | tail -1)
  if [[ $line =~ ^el$1\ eth_blockNumber=(-?[0-9]+)\ head=#([0-9]+)\ (0x[0-9a-fA-F]{64}) ]]; then
    echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]} ${BASH_REMATCH[3]}"
  fi
}

run_scenario() { # NAME RUN_SECONDS [VAR=VALUE ...]: run.sh with these settings, then the common checks
  SC=$1; local secs=$2; shift 2
  local dir=$OUT/$SC t=$SECONDS rc logs
  rm -rf "$dir" "$REALNET_HOME/run" && mkdir -p "$dir"  # no logs of an earlier run get copied
  echo "interop[$SC]: run.sh RUN_SECONDS=$secs $*"
  # Every run.sh setting is given here, so nothing leaks in from the caller's environment.
  env -u EL_ENGINE_PORT_BASE -u EL_RPC_PORT_BASE -u EL_P2P_PORT_BASE -u BN_REST_PORT -u BN_P2P_PORT \
    REALNET_HOME="$REALNET_HOME" RUN_SECONDS="$secs" NUM_ELS=2 MIN_BLOCKS=3 SEND_TXS=3 FANOUT=0 \
    FANOUT_PORT=$PROXY_PORT ENGINE_URL="http://127.0.0.1:$PROXY_PORT" REQUIRE=all JWT_MODE=shared RESTART_EL=0 \
    PROXY_CMD="exec $(printf '%q' "$SELF") __proxy" INTEROP_BIN="$BIN" INTEROP_JWT=shared INTEROP_EXTRA_BUILDERS= \
    "$@" bash "$REALNET" 9>&- 2>&1 | tee "$dir/run.out" | sed -u "s/^/  [$SC] /"
  rc=${PIPESTATUS[0]}
  TOOK[$SC]=$((SECONDS - t))
  logs=$REALNET_HOME/run/logs
  cp "$logs"/*.log "$dir/" 2>/dev/null
  cp "$REALNET_HOME/run/env" "$dir/env" 2>/dev/null
  cp "$REALNET_HOME/run/jwt/builder-jwt-secrets.json" "$dir/" 2>/dev/null

  [ "$rc" = 0 ] && grep -q 'PASS$' "$dir/run.out" || fail "run.sh exited $rc without PASS (see $dir/run.out)"
  # eth_blockNumber (b) and the head (number n, hash x) are read one after the other, so a block
  # can land in between; run.sh compares el2's block b2 with el1's at that height.
  local h1 h2 b1 b2 n1 n2 x1 x2
  h1=$(el_head 1 "$dir/run.out"); h2=$(el_head 2 "$dir/run.out")
  read -r b1 n1 x1 <<<"$h1"; read -r b2 n2 x2 <<<"$h2"
  SUMMARY_BLOCKS[$SC]="el1=${b1:-?} el2=${b2:-?} (eth_blockNumber)"
  SUMMARY_HEADS[$SC]="el1 #${n1:-?} ${x1:-?} | el2 #${n2:-?} ${x2:-?}"
  if [ -z "$h1" ] || [ -z "$h2" ]; then
    fail "no head line for el1 or el2 in run.sh's output"
  elif [ "$n1" = "$n2" ]; then
    [ "$x1" = "$x2" ] || fail "el1 and el2 both at #$n1 with different hashes: $x1 vs $x2"
  elif [ $((n1 - n2)) -ge -1 ] && [ $((n1 - n2)) -le 1 ]; then
    # one block apart (a slot boundary between the reads): the same hash at the common height
    grep -qx "el2 block $b2 hash matches el1" "$dir/run.out" ||
      fail "el1 #$n1 and el2 #$n2: run.sh did not print 'el2 block $b2 hash matches el1'"
  else
    fail "el1 #$n1 and el2 #$n2 are more than one block apart"
  fi

  local plog=$dir/proxy.log
  if [ ! -s "$plog" ]; then fail "no proxy log"; return 1; fi
  grep -q 'listening on 127.0.0.1:' "$plog" || fail "the proxy never logged 'listening on'"
  grep -q 'following beacon node' "$plog" || fail "the proxy never followed the beacon node"
  grep -qE '^[^ ]+ ERROR ' "$plog" && fail "proxy ERROR lines: $(grep -cE '^[^ ]+ ERROR ' "$plog")"
  grep -q 'no execution client answered' "$plog" &&
    fail "proxy logged 'no execution client answered' $(grep -c 'no execution client answered' "$plog") times"
  WARN_COUNT[$SC]=$(grep -cE '^[^ ]+ WARN ' "$plog")
  return 0
}

# builder name of real EL k (as in --builders), from the run's env file
el_url() { sed -n 's/^REALNET_EL_ENGINE_URLS=//p' "$OUT/$SC/env" | cut -d, -f"$1"; }

check_separate() {
  local plog=$OUT/$SC/proxy.log n
  grep -q 'inbound JWT checked; own tokens minted for 2 execution client(s)' "$plog" ||
    fail "the proxy's start-up line does not say 'inbound JWT checked; own tokens minted for 2 execution client(s)'"
  n=$(grep -c 'rejected a request' "$plog")
  [ "$n" = 0 ] || fail "the proxy rejected $n beacon node requests (JWT)"
  NOTES[$SC]="'rejected a request' lines: $n"
}

check_restart() {
  local plog=$OUT/$SC/proxy.log el2 down up
  grep -q '^restart el2 CAUGHT UP' "$OUT/$SC/run.out" || fail "run.sh did not report 'restart el2 CAUGHT UP'"
  el2=$(el_url 2)
  [ -n "$el2" ] || { fail "no EL2 URL in $OUT/$SC/env"; return; }
  down=$(grep -nF -- "$el2 is down" "$plog" | head -1 | cut -d: -f1)
  if [ -z "$down" ]; then fail "the proxy never logged '$el2 is down'"; return; fi
  up=$(tail -n +"$down" "$plog" | grep -cF -- "$el2 is up")
  [ "$up" -ge 1 ] || fail "the proxy logged '$el2 is down' (line $down) but no '$el2 is up' after it"
  NOTES[$SC]="$(grep -E '^restart el2: heights' "$OUT/$SC/run.out")"
}

check_dead_el() {
  local plog=$OUT/$SC/proxy.log n
  grep -qF -- "$DEAD_EL" "$plog" || fail "the proxy's log never names the dead builder $DEAD_EL"
  n=$(grep -cF -- "$DEAD_EL is down" "$plog")
  NOTES[$SC]="'$DEAD_EL is down' lines: $n"
  if [ "$n" = 0 ]; then fail "the proxy never logged '$DEAD_EL is down'"
  elif [ "$n" -gt 2 ]; then fail "the proxy logged '$DEAD_EL is down' $n times (at most 2 expected)"; fi
}

for sc in $SCENARIOS; do
  case $sc in
    shared) run_scenario shared "$RUN_S" ;;
    separate) run_scenario separate "$RUN_S" JWT_MODE=separate INTEROP_JWT=separate && check_separate ;;
    restart) run_scenario restart "$RESTART_RUN_S" RESTART_EL=2 && check_restart ;;
    dead-el) run_scenario dead-el "$RUN_S" INTEROP_EXTRA_BUILDERS="$DEAD_EL" && check_dead_el ;;
  esac
  [ -z "${FAILS[$sc]:-}" ] && RESULT[$sc]=PASS || RESULT[$sc]=FAIL
  echo "interop[$sc]: ${RESULT[$sc]} (${TOOK[$sc]}s)"
done

# ------------------------------------------------------------------ summary
{
  echo "interop summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), total $((SECONDS - T0))s of which build ${BUILD_S}s; logs in $OUT/<scenario>/)"
  for sc in $SCENARIOS; do
    plog=$OUT/$sc/proxy.log
    echo "== $sc: ${RESULT[$sc]} (${TOOK[$sc]}s)"
    echo "   blocks: ${SUMMARY_BLOCKS[$sc]:-?}"
    echo "   heads: ${SUMMARY_HEADS[$sc]:-?}"
    [ -n "${NOTES[$sc]:-}" ] && echo "   ${NOTES[$sc]}"
    echo "   proxy WARN lines: ${WARN_COUNT[$sc]:-?}"
    if [ -s "$plog" ] && [ "${WARN_COUNT[$sc]:-0}" -gt 0 ]; then
      grep -E '^[^ ]+ WARN ' "$plog" | head -10 | sed 's/^/     /'
      [ "${WARN_COUNT[$sc]}" -gt 10 ] && echo "     ... and $((WARN_COUNT[$sc] - 10)) more"
    fi
    [ -n "${FAILS[$sc]:-}" ] && printf '   failures:\n%s' "${FAILS[$sc]}"
  done
} | tee "$OUT/summary.txt"

for sc in $SCENARIOS; do [ "${RESULT[$sc]}" = PASS ] || exit 1; done
echo "interop: all passed"
exit 0
