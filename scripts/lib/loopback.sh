# Sourced by the scripts that run real processes on loopback (nginx-check.sh,
# prometheus-check.sh, soak.sh): a work folder cleaned up on exit with every process started,
# PASS/FAIL counting, free ports, waiting for a listener, and starting a logged background
# process. `start` needs `work` and `pids`, which `loopback_setup` makes (soak.sh makes its own).

loopback_setup() {  # loopback_setup NAME: $work (kept with KEEP=1), $pids killed on exit, $failures
  work=$(mktemp -d -t "sync-proxy-$1.XXXXXX")
  pids=()
  failures=0
  trap loopback_cleanup EXIT
  trap 'exit 130' INT TERM
}

loopback_cleanup() {
  local pid
  for pid in "${pids[@]:-}"; do
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
# check NAME COMMAND...: PASS/FAIL by the command's exit status; its output is shown either way.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$name${out:+ ($out)}"; else fail "$name${out:+: $out}"; fi
}

free_ports() {  # free_ports N: N free ephemeral ports on 127.0.0.1, all held open at once so that they differ
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

wait_port() {  # wait_port PORT PID: until 127.0.0.1:PORT accepts (10 s at most), failing if PID died
  local port=$1 pid=$2
  for _ in $(seq 200); do
    if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()' "$port" 2>/dev/null; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { echo "process $pid died before 127.0.0.1:$port opened"; return 1; }
    sleep 0.05
  done
  echo "127.0.0.1:$port never opened"
  return 1
}

start() {  # start NAME PORT COMMAND...: runs COMMAND in the background, logs to $work/NAME.log, sets pid_NAME
  local name=$1 port=$2
  shift 2
  "$@" >"$work/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  eval "pid_$name=$pid"
  wait_port "$port" "$pid" || { echo "FAIL: $name did not start:"; cat "$work/$name.log"; exit 1; }
}
