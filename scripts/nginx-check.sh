#!/usr/bin/env bash
# Exercises README.md's nginx configs with Debian's nginx on loopback in front of the real
# binaries and recording mock execution clients (scripts/mock_el.py). The configs are cut out of
# README.md's ```nginx blocks (and the sync-proxy / jwt-tokens-service command lines beside
# them) and only their ports are changed, so the README and this test cannot drift apart.
#
# 1. nginx `mirror` (Deployments, 2): beacon node → nginx → local EL, every request mirrored
#    (HTTP/1.0, Connection: close, 100 ms timeouts) to `sync-proxy --mirror-mode` → 2 more ELs.
# 2. nginx `auth_request` + jwt-tokens-service (Authentication, 3): an EL that requires an HS256
#    token signed with its own secret gets one; with the wrong secret configured it answers 401.
#
# One PASS/FAIL line per check; exits non-zero if any failed. Installs nginx when missing
# (Debian/Ubuntu, as root). Needs: cargo, python3 (standard library only), nginx.
# Usage: scripts/nginx-check.sh        (KEEP=1 keeps the work directory with every log)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# ---------------------------------------------------------------------------- set-up

find_nginx() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }
NGINX=$(find_nginx)
if [ -z "$NGINX" ]; then
  echo "--- installing nginx"
  # Keep the package from starting a system nginx on port 80 (Debian's policy-rc.d mechanism).
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  installed=1
  { apt-get update -qq && { apt-get install -y -qq nginx-light || apt-get install -y -qq nginx; }; } || installed=""
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  [ -n "$installed" ] || { echo "FAIL: apt-get could not install nginx"; exit 1; }
  NGINX=$(find_nginx)
  [ -n "$NGINX" ] || { echo "FAIL: nginx could not be installed"; exit 1; }
fi
"$NGINX" -v 2>&1
if ! "$NGINX" -V 2>&1 | grep -q -- '--with-http_auth_request_module'; then
  echo "FAIL: this nginx has no auth_request module (README set-up 3 needs it)"
  exit 1
fi

echo "--- building the release binaries"
cargo build --release --quiet --bin sync-proxy --bin jwt-tokens-service
target_dir=${CARGO_TARGET_DIR:-$repo/target}
PROXY_BIN=$target_dir/release/sync-proxy
TOKENS_BIN=$target_dir/release/jwt-tokens-service

# shellcheck source=scripts/lib/loopback.sh
. scripts/lib/loopback.sh  # (the working directory is the repository root)
loopback_setup nginx

read -r P_NGINX_MIRROR P_NGINX_AUTH P_LOCAL_EL P_PROXY P_EL_A P_EL_B P_TOKENS P_JWT_EL < <(free_ports 8)

stop() {  # stop NAME: SIGTERM the process start NAME started, and wait for it
  local var="pid_$1"
  kill "${!var}" 2>/dev/null || true
  wait "${!var}" 2>/dev/null || true
}

start_el() {  # start_el NAME PORT [mock_el.py flags...]
  local name=$1 port=$2
  shift 2
  start "$name" "$port" python3 scripts/mock_el.py --port "$port" --name "$name" --record "$work/$name.jsonl" "$@"
}

# ---------------------------------------------------------------------------- README → configs

# readme_block N: the Nth ```nginx block of README.md, its fence's indentation removed.
readme_block() {
  python3 - "$repo/README.md" "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.findall(r"^([ \t]*)```nginx\n(.*?)^\1```$", text, re.S | re.M)
n = int(sys.argv[2])
if len(blocks) < n:
    sys.exit("README.md has %d ```nginx blocks, not %d" % (len(blocks), n))
indent, body = blocks[n - 1]
print("".join(line[len(indent):] if line.startswith(indent) else line
              for line in body.splitlines(True)), end="")
PY
}

# readme_line PREFIX: the first line of README.md that starts (after indentation) with PREFIX,
# without its trailing "# comment".
readme_line() {
  python3 - "$repo/README.md" "$1" <<'PY'
import sys
for line in open(sys.argv[1]):
    if line.strip().startswith(sys.argv[2]):
        print(line.split("#")[0].strip())
        break
else:
    sys.exit("README.md has no line starting with %r" % sys.argv[2])
PY
}

# subst TEXT FROM TO...: replaces each FROM with its TO (sed, literal strings), failing if a FROM
# is not in TEXT: a README that changed its ports or hosts must change this script too.
subst() {
  local text=$1
  shift
  while [ $# -gt 0 ]; do
    grep -qF -- "$1" <<<"$text" || { echo "README drift: expected '$1' in: $text" >&2; return 1; }
    # shellcheck disable=SC2001  # sed, so the substitution reads like the README's text
    text=$(sed "s#$(printf '%s' "$1" | sed 's/[.[\*^$#]/\\&/g')#$2#g" <<<"$text")
    shift 2
  done
  printf '%s\n' "$text"
}

mirror_server=$(subst "$(readme_block 1)" \
  "listen 8552;" "listen 127.0.0.1:$P_NGINX_MIRROR;" \
  "localhost:8551" "localhost:$P_LOCAL_EL" \
  "127.0.0.1:25590" "127.0.0.1:$P_PROXY")
proxy_cmd=$(subst "$(readme_line 'sync-proxy --mirror-mode')" \
  "127.0.0.1:25590" "127.0.0.1:$P_PROXY" \
  "localhost:8553" "localhost:$P_EL_A" \
  "localhost:8554" "localhost:$P_EL_B")
auth_locations=$(subst "$(readme_block 2)" \
  "localhost:1337" "localhost:$P_TOKENS" \
  "localhost:8551" "localhost:$P_JWT_EL")
tokens_cmd=$(subst "$(readme_line 'jwt-tokens-service -addr')" \
  "localhost:1337" "localhost:$P_TOKENS" \
  "config.json" "$work/tokens.json")

# The README's blocks inside a minimal nginx.conf whose every path is in the work directory.
mkdir -p "$work/nginx/logs"
user_line=""
[ "$(id -u)" -eq 0 ] && user_line="user root;"
cat >"$work/nginx/nginx.conf" <<EOF
$user_line
worker_processes 1;
pid $work/nginx/nginx.pid;
events { worker_connections 512; }
http {
    access_log $work/nginx/logs/access.log;
    client_body_temp_path $work/nginx/client_body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;

# ---- README.md, Deployments 2 (ports substituted)
$mirror_server

# ---- README.md, Authentication 3 (ports substituted), in a server of its own
server {
    listen 127.0.0.1:$P_NGINX_AUTH;
$auth_locations
}
}
EOF

echo "--- nginx.conf under test"
cat "$work/nginx/nginx.conf"
echo "--- sync-proxy command under test: $proxy_cmd"
echo "--- jwt-tokens-service command under test: $tokens_cmd"
nginx_cmd=("$NGINX" -e stderr -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off; error_log stderr;')
if ! "${nginx_cmd[@]}" -t >"$work/nginx-t.log" 2>&1; then
  fail "nginx accepts the README's configs"; cat "$work/nginx-t.log"; exit 1
fi
pass "nginx accepts the README's configs (nginx -t)"

# ---------------------------------------------------------------------------- 1. mirror

# The beacon node binds 127.0.0.2 (still loopback) so that its address differs from nginx's.
BN_ADDR=127.0.0.2
python3 -c 'import socket; socket.socket().bind(("127.0.0.2", 0))' 2>/dev/null || BN_ADDR=127.0.0.1

start_el local "$P_LOCAL_EL"
# The proxy-side ELs take 120 ms per answer, longer than the mirror's 100 ms read timeout:
# unless sync-proxy acknowledges at once, nginx waits for every mirror subrequest.
start_el el_a "$P_EL_A" --delay-ms 120
start_el el_b "$P_EL_B" --delay-ms 120
# shellcheck disable=SC2086  # the README's command line, split into words as a shell would
start proxy "$P_PROXY" "$PROXY_BIN" ${proxy_cmd#sync-proxy }
start nginx "$P_NGINX_MIRROR" "${nginx_cmd[@]}"

# bn OUT NAME COUNT: one beacon node connection (HTTP/1.1 keep-alive) through nginx; sends COUNT
# newPayload/forkchoiceUpdated calls one after another and writes what it sent and got to OUT.
bn() {
  python3 - "$P_NGINX_MIRROR" "$BN_ADDR" "$1" "$2" "$3" <<'PY'
import base64, http.client, json, sys, time
port, bn_addr, out, tag, count = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(bn_addr, 0))
results = []
for i in range(1, count + 1):
    ts = hex(0x65f0a000 + 12 * i)
    rid = "%s-%d" % (tag, i)
    if i % 2:
        payload = {"parentHash": "0x" + "11" * 32, "blockHash": "0x%064x" % i, "timestamp": ts,
                   "transactions": []}
        if i == 5:  # one payload over nginx's default 1 MiB client_max_body_size
            payload["transactions"] = ["0x" + "ab" * 4096] * 192
        body = json.dumps({"jsonrpc": "2.0", "id": rid, "method": "engine_newPayloadV3",
                           "params": [payload, [], "0x" + "22" * 32]})
    else:
        # Lighthouse's key order, unusual spacing: must reach every EL byte for byte.
        body = ('{"jsonrpc":"2.0", "method" : "engine_forkchoiceUpdatedV3","params":[{"headBlockHash":"0x%064x",'
                '"safeBlockHash":"0x%064x","finalizedBlockHash":"0x%064x"},null],"id":"%s"}' % (i - 1, 0, 0, rid))
    body = body.encode()
    t0 = time.monotonic()
    conn.request("POST", "/", body, {"Content-Type": "application/json", "Authorization": "Bearer from-the-bn"})
    resp = conn.getresponse()
    answer = resp.read()
    results.append({"id": rid, "body": base64.b64encode(body).decode(), "status": resp.status,
                    "answer": base64.b64encode(answer).decode(),
                    "ms": (time.monotonic() - t0) * 1000, "closed": resp.will_close})
json.dump(results, open(out, "w"))
PY
}

# wait_records NAME N: until EL NAME recorded N POSTs (10 s at most).
wait_records() {
  python3 - "$work/$1.jsonl" "$2" <<'PY'
import json, sys, time
path, want = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 10
while True:
    got = sum(1 for line in open(path) if json.loads(line)["method"] == "POST")
    if got >= want:
        break
    if time.monotonic() > deadline:
        sys.exit("%s: %d POSTs recorded, %d expected" % (path, got, want))
    time.sleep(0.05)
PY
}

# verify_mirror BN_OUT TAG: the assertions of check 1 (prints one PASS/FAIL line each; exits 1
# if any failed).
verify_mirror() {
  python3 - "$work" "$1" "$2" "$BN_ADDR" <<'PY'
import base64, json, statistics, sys
work, bn_out, tag, bn_addr = sys.argv[1:5]
sent = json.load(open(bn_out))
def posts(el):
    out = []
    for line in open("%s/%s.jsonl" % (work, el)):
        r = json.loads(line)
        if r["method"] == "POST" and tag.encode() in base64.b64decode(r["body"]):
            out.append(r)
    return out
ok = True
def report(good, text):
    global ok
    ok = ok and good
    print(("PASS: " if good else "FAIL: ") + text)
bodies = [s["body"] for s in sent]
local = posts("local")
by_body = {r["body"]: r for r in local}
wrong = [s["id"] for s in sent
         if s["status"] != 200 or s["body"] not in by_body or by_body[s["body"]]["answer"] != s["answer"]]
report(not wrong, "mirror: the beacon node got the local EL's answer, byte for byte, to each of %d calls%s"
       % (len(sent), " (wrong: %s)" % wrong if wrong else ""))
report([r["body"] for r in local] == bodies, "mirror: the local EL got every body byte for byte, in order")
largest = max(len(base64.b64decode(b)) for b in bodies)
for el in ("el_a", "el_b"):
    got = posts(el)
    same = [r["body"] for r in got] == bodies
    detail = "%d of %d, largest %d bytes" % (len(got), len(bodies), largest)
    if not same:
        firsts = [json.loads(base64.b64decode(r["body"])).get("id") for r in got]
        detail += "; received ids %s" % firsts
    report(same, "mirror: proxy-side %s got every body byte for byte, in order (%s)" % (el, detail))
    xff = sorted({v for r in got for k, v in r["headers"] if k.lower() == "x-forwarded-for"})
    has = bool(got) and all(any(k.lower() == "x-forwarded-for" and bn_addr in [a.strip() for a in v.split(",")]
                                for k, v in r["headers"]) for r in got)
    report(has, "mirror: X-Forwarded-For at %s names the beacon node %s (seen: %s)" % (el, bn_addr, xff))
ms = [s["ms"] for s in sent]
p50 = statistics.median(ms)
report(p50 < 50, "mirror: %d calls on one keep-alive connection: p50 %.1f ms < 50 ms (max %.1f ms, total %.0f ms)"
       % (len(ms), p50, max(ms), sum(ms)))
report(not any(s["closed"] for s in sent), "mirror: the beacon node's connection stayed open throughout")
sys.exit(0 if ok else 1)
PY
}

echo "--- 1. nginx mirror → sync-proxy --mirror-mode"
if bn "$work/bn1.json" mirror 20 >"$work/bn1.log" 2>&1; then
  wait_records el_a 20 || true
  wait_records el_b 20 || true
  verify_mirror "$work/bn1.json" mirror >"$work/verify1.out" || true
  cat "$work/verify1.out"
  failures=$((failures + $(grep -c '^FAIL' "$work/verify1.out" || true)))
  # What the proxy made of it: the BN it follows is the one behind nginx, not nginx.
  check "mirror: sync-proxy follows the beacon node by its address behind nginx" \
    grep -m1 -o "following beacon node ${BN_ADDR//./\\.}\$" "$work/proxy.log"
else
  fail "mirror: the beacon node's calls through nginx failed: $(tail -1 "$work/bn1.log")"
fi
grep -E ' (WARN|ERROR) ' "$work/proxy.log" | sed 's/^/  proxy: /' || true

# Control: the same through a proxy that waits for its primary (no --mirror-mode). nginx is then
# held up by the mirror's 100 ms timeout on every call, which shows the latency check can fail.
stop proxy
start proxy "$P_PROXY" "$PROXY_BIN" --addr "127.0.0.1:$P_PROXY" --builders "localhost:$P_EL_A,localhost:$P_EL_B"
if bn "$work/bn2.json" control 6 >"$work/bn2.log" 2>&1; then
  check "control: without --mirror-mode nginx waits for the mirror (p50 >= 90 ms)" python3 - "$work/bn2.json" <<'PY'
import json, statistics, sys
ms = [s["ms"] for s in json.load(open(sys.argv[1]))]
p50 = statistics.median(ms)
print("p50 %.1f ms" % p50)
sys.exit(0 if p50 >= 90 else 1)
PY
else
  fail "control: the beacon node's calls through nginx failed: $(tail -1 "$work/bn2.log")"
fi
stop proxy

# ---------------------------------------------------------------------------- 2. auth_request

echo "--- 2. nginx auth_request + jwt-tokens-service"
hex32() { python3 -c 'import os; print(os.urandom(32).hex())'; }
el_secret=$(hex32)
echo "0x$el_secret" >"$work/el.hex"
start_el jwt_el "$P_JWT_EL" --jwt-secret "$work/el.hex"

# one_call OUT: one newPayload through the auth_request server (the BN's own token is bogus).
one_call() {
  python3 - "$P_NGINX_AUTH" "$1" <<'PY'
import http.client, json, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "engine_newPayloadV3",
                   "params": [{"timestamp": "0x65f0a1b2"}, [], "0x" + "22" * 32]}).encode()
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
t0 = time.monotonic()
conn.request("POST", "/", body, {"Content-Type": "application/json", "Authorization": "Bearer from-the-bn"})
resp = conn.getresponse()
answer = resp.read()
json.dump({"status": resp.status, "answer": answer.decode("latin-1"), "ms": (time.monotonic() - t0) * 1000},
          open(out, "w"))
PY
}

# el_verdict N BN_OUT STATUS: the Nth POST the JWT-checking EL recorded, and the beacon node's
# answer (BN_OUT), both with HTTP STATUS; the EL never saw the beacon node's own token.
el_verdict() {
  python3 - "$work/jwt_el.jsonl" "$1" "$2" "$3" <<'PY'
import base64, json, sys
path, n, bn_out, want = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
posts = [json.loads(l) for l in open(path) if json.loads(l)["method"] == "POST"]
bn = json.load(open(bn_out))
if len(posts) < n:
    sys.exit("the EL got %d requests, expected %d; the beacon node got HTTP %s in %.0f ms: %s"
             % (len(posts), n, bn["status"], bn["ms"], bn["answer"][:200]))
r = posts[n - 1]
auth = [v for k, v in r["headers"] if k.lower() == "authorization"]
answer = base64.b64decode(r["answer"]).decode()
print("EL answered %d%s; beacon node got %d in %.0f ms"
      % (r["status"], (": " + json.loads(answer)["error"]["message"]) if r["status"] != 200 else "",
         bn["status"], bn["ms"]))
ok = r["status"] == want and bn["status"] == want and auth and auth[0] != "Bearer from-the-bn"
if want == 200:
    ok = ok and bn["answer"] == answer
sys.exit(0 if ok else 1)
PY
}

printf '{"el1": "%s", "el2": "%s"}\n' "$el_secret" "$(hex32)" >"$work/tokens.json"
# shellcheck disable=SC2086
start tokens "$P_TOKENS" "$TOKENS_BIN" ${tokens_cmd#jwt-tokens-service }
if one_call "$work/auth1.json" >"$work/auth1.log" 2>&1; then
  check "auth_request: the EL got a valid token minted with its own secret and answered the beacon node" \
    el_verdict 1 "$work/auth1.json" 200
else
  fail "auth_request: the call through nginx failed: $(tail -1 "$work/auth1.log")"
fi
stop tokens

printf '{"el1": "%s", "el2": "%s"}\n' "$(hex32)" "$el_secret" >"$work/tokens.json"
# shellcheck disable=SC2086
start tokens "$P_TOKENS" "$TOKENS_BIN" ${tokens_cmd#jwt-tokens-service }
if one_call "$work/auth2.json" >"$work/auth2.log" 2>&1; then
  check "auth_request: with the wrong secret for el1 the EL answers 401 (and the beacon node gets it)" \
    el_verdict 2 "$work/auth2.json" 401
else
  fail "auth_request: the call through nginx failed: $(tail -1 "$work/auth2.log")"
fi

if [ "$failures" -ne 0 ]; then
  echo "--- nginx log"; tail -30 "$work/nginx.log"
  echo "--- sync-proxy log"; tail -30 "$work/proxy.log"
  echo "nginx-check: FAIL ($failures failed)"
  exit 1
fi
echo "nginx-check: PASS"
