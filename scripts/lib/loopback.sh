# Sourced by the check scripts that run real processes on loopback (nginx-check.sh,
# prometheus-check.sh): free ports, waiting for a listener, and starting a logged background
# process. The sourcing script sets `work` (a temporary folder) and `pids` (an array it kills on
# exit) first.

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
