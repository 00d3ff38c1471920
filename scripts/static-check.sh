#!/usr/bin/env bash
# Builds sync-proxy as a static executable and checks that it starts and links nothing at run
# time: glibc with `-C target-feature=+crt-static` (always), and musl when that Rust target is
# installed (`rustup target add x86_64-unknown-linux-musl`). Each target is built twice: the
# default build (with the cargo feature `tls`, which must reach an https:// builder's start-up,
# reading the system's root certificates) and the minimal one (`--no-default-features`, which
# must refuse https:// at start-up). Builds go to target/static so the ordinary release build is
# left alone. Last, the ordinary release build (stripped, LTO, with `tls`) must stay within
# 2 MiB (issue 5's bound). CI runs this from .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
arch=${host%%-*}

check() { # check TARGET VARIANT: build, start, and prove it static
  local target=$1 variant=$2 bin builders features=()
  case $variant in
    tls) builders=https://127.0.0.1:9 ;;
    minimal) builders=127.0.0.1:9 features=(--no-default-features) ;;
  esac
  echo "--- static $variant build for $target"
  # --target keeps RUSTFLAGS away from build scripts, which must stay host (dynamic) programs.
  RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --bin sync-proxy --target "$target" --target-dir target/static "${features[@]}"
  bin=target/static/$target/release/sync-proxy
  "$bin" --version
  file "$bin"
  file "$bin" | grep -Eq 'statically linked|static-pie linked' || { echo "FAIL: $bin is not static"; exit 1; }
  if ldd "$bin" >/dev/null 2>&1 && ! ldd "$bin" 2>&1 | grep -q 'statically linked'; then
    echo "FAIL: ldd lists shared libraries for $bin"; ldd "$bin"; exit 1
  fi
  # It must also serve, not just print its version: start it on an ephemeral port and stop it.
  local log
  log=$(mktemp)
  "$bin" --addr 127.0.0.1:0 --builders "$builders" 2>"$log" &
  local pid=$!
  for _ in $(seq 50); do grep -q 'listening on' "$log" && break; sleep 0.1; done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  grep 'listening on' "$log" || { echo "FAIL: $bin did not start listening"; cat "$log"; rm -f "$log"; exit 1; }
  if [ "$variant" = tls ]; then
    grep 'TLS' "$log" || { echo "FAIL: $bin did not set up TLS"; cat "$log"; rm -f "$log"; exit 1; }
  else
    local status=0
    "$bin" --builders https://127.0.0.1:9 2>"$log" || status=$?
    [ "$status" = 2 ] && grep -q 'https is not supported' "$log" ||
      { echo "FAIL: the minimal $bin did not refuse https:// (exit $status)"; cat "$log"; rm -f "$log"; exit 1; }
  fi
  rm -f "$log"
  echo "ok: $bin ($variant, $(stat -c %s "$bin") bytes) is static and starts"
}

check "$host" tls
check "$host" minimal
musl="$arch-unknown-linux-musl"
if rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
  check "$musl" minimal
  # ring (the tls build's crypto) compiles C and assembly, which for musl needs musl's compiler
  # wrapper: Debian's musl-tools has musl-gcc, which cc-rs does not look for by itself.
  musl_cc=$(command -v "$arch-linux-musl-gcc" || command -v musl-gcc || true)
  if [ -n "$musl_cc" ]; then
    export "CC_${musl//-/_}=$musl_cc"
    check "$musl" tls
  else
    echo "skip: the tls build for $musl needs a musl C compiler (apt-get install musl-tools)"
  fi
else
  echo "skip: the $musl target is not installed (rustup target add $musl)"
fi

# The size bound, on the ordinary (dynamically linked) release build with the default features.
cargo build --release --bin sync-proxy
size=$(stat -c %s target/release/sync-proxy)
limit=$((2 * 1024 * 1024))
[ "$size" -le "$limit" ] || { echo "FAIL: target/release/sync-proxy is $size bytes, over $limit"; exit 1; }
echo "ok: target/release/sync-proxy is $size bytes (at most $limit)"
