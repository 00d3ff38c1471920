#!/usr/bin/env bash
# The load benchmark with its nginx comparison, in one command: installs Debian's nginx when it
# is missing, then runs `cargo bench --bench loopback` (which builds the release binary, starts
# its own mock ELs, the proxy and nginx on 127.0.0.1, and prints the tables).
#   benches/load.sh                    every scenario, 3 repetitions
#   LOOPBACK_ONLY=seq-1k benches/load.sh   only the scenarios whose key contains "seq-1k"
#   LOOPBACK_REPS=5 LOOPBACK_OUT=target/loopback.md benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "nginx is missing: installing Debian's package"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  # The install must not start a service on port 80 (the benchmark runs its own nginx): a
  # policy-rc.d that says no is put in place for the install unless one is there already.
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx
  if [ -n "$own_policy" ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
fi
exec cargo bench --bench loopback -- "$@"
