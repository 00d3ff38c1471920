#!/usr/bin/env bash
# Checks the Prometheus files in deploy/ with Debian's prometheus package, on loopback only:
#
# 1. `promtool check rules` on deploy/prometheus/sync-proxy.rules.yml, and `promtool test rules`
#    with deploy/prometheus/sync-proxy.rules.test.yml (a series fixture per alert; an alert of
#    the rules file without a test there fails this check).
# 2. The rules file and docs/operations.md's example rules are the same text.
# 3. deploy/grafana/sync-proxy.json is JSON and every panel query is valid PromQL (each is run
#    against the Prometheus below, with the dashboard's variables filled in).
# 4. A real Prometheus (our own instance: temporary config and data directory, a free loopback
#    port; the package's service is neither needed nor touched) scrapes a running sync-proxy
#    (debug build) in front of a mock execution client for a few seconds: /api/v1/query returns
#    the proxy's series (uptime, the sync view's head block of the payload sent), the target is
#    up, and every rule of the rules file is loaded and evaluates without error.
#
# One PASS/FAIL line per check; exits non-zero if any failed. Every wait is bounded. Installs
# the prometheus package when promtool or prometheus is missing (Debian/Ubuntu, as root).
# Needs: cargo, python3 (standard library only), prometheus.
# Usage: scripts/prometheus-check.sh        (KEEP=1 keeps the work directory with every log)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
t0=$SECONDS
RULES=deploy/prometheus/sync-proxy.rules.yml
RULE_TESTS=deploy/prometheus/sync-proxy.rules.test.yml
DASHBOARD=deploy/grafana/sync-proxy.json

# ---------------------------------------------------------------------------- set-up

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "--- installing prometheus (for promtool and the prometheus binary)"
  # Keep the package from starting its own service (Debian's policy-rc.d mechanism); this
  # check runs its own instance on a free loopback port.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  installed=1
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } || installed=""
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  [ -n "$installed" ] || { echo "FAIL: apt-get could not install prometheus"; exit 1; }
  for tool in promtool prometheus; do
    command -v "$tool" >/dev/null || { echo "FAIL: the prometheus package did not provide $tool"; exit 1; }
  done
fi
promtool --version 2>&1 | head -n 1
t_ready=$SECONDS

# shellcheck source=scripts/lib/loopback.sh
. scripts/lib/loopback.sh  # (the working directory is the repository root)
loopback_setup prometheus

# ---------------------------------------------------------------------------- promtool

check "promtool check rules $RULES" promtool check rules "$RULES"
check "promtool test rules $RULE_TESTS" promtool test rules "$RULE_TESTS"

every_alert_tested() {
  python3 - "$RULES" "$RULE_TESTS" <<'PY'
import re, sys
alerts = re.findall(r"^\s*- alert:\s*(\S+)", open(sys.argv[1]).read(), re.M)
tested = set(re.findall(r"^\s*alertname:\s*(\S+)", open(sys.argv[2]).read(), re.M))
missing = [a for a in alerts if a not in tested]
if not alerts or missing:
    sys.exit("alerts without a test: %s" % (missing or "no alerts found"))
print("%d alerts, each tested" % len(alerts))
PY
}
check "every alert has a promtool test" every_alert_tested

docs_match_rules() {
  python3 - "$RULES" docs/operations.md <<'PY'
import re, sys
rules = open(sys.argv[1]).read()
rules = rules[rules.index("groups:"):]
blocks = [b for b in re.findall(r"^```yaml\n(.*?)^```$", open(sys.argv[2]).read(), re.S | re.M)
          if b.startswith("groups:")]
if len(blocks) != 1:
    sys.exit("docs/operations.md has %d yaml blocks starting with groups:, not 1" % len(blocks))
if blocks[0] != rules:
    import difflib
    sys.exit("".join(difflib.unified_diff(blocks[0].splitlines(True), rules.splitlines(True),
                                          "docs/operations.md", sys.argv[1])))
PY
}
check "docs/operations.md shows the rules file as it is" docs_match_rules

# The dashboard's queries, one per line, with its variables filled in.
dashboard_queries() {
  python3 - "$DASHBOARD" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
if not exprs:
    sys.exit("no queries in the dashboard")
for e in exprs:
    print(e.replace("$__rate_interval", "1m").replace("$instance", ".*"))
PY
}
dashboard_is_json() {
  local n
  n=$(dashboard_queries | wc -l) && echo "$n queries"
}
check "$DASHBOARD is JSON with queries" dashboard_is_json

# ---------------------------------------------------------------------------- a real scrape

echo "--- building the proxy (debug)"
cargo build --quiet --bin sync-proxy
PROXY_BIN=${CARGO_TARGET_DIR:-$repo/target}/debug/sync-proxy

read -r P_EL P_PROXY P_METRICS P_PROM < <(free_ports 4)

start el "$P_EL" python3 scripts/mock_el.py --port "$P_EL" --name el --record "$work/el.jsonl"
start proxy "$P_PROXY" "$PROXY_BIN" --addr "127.0.0.1:$P_PROXY" --builders "127.0.0.1:$P_EL" \
  --metrics-addr "127.0.0.1:$P_METRICS"
wait_port "$P_METRICS" "${pids[-1]}"

# One newPayload (block 7) through the proxy, so the sync view has a head to report.
post_payload() {
  python3 - "$P_PROXY" <<'PY'
import json, sys, urllib.request
payload = {"blockNumber": "0x7", "blockHash": "0x" + "ab" * 32, "timestamp": "0x6553f100",
           "parentHash": "0x" + "00" * 32, "transactions": []}
body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "engine_newPayloadV3",
                   "params": [payload, [], "0x" + "00" * 32]}).encode()
request = urllib.request.Request("http://127.0.0.1:%s/" % sys.argv[1], body,
                                 {"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(request, timeout=10))
if answer.get("result", {}).get("status") != "VALID":
    sys.exit("unexpected answer: %s" % answer)
PY
}
check "a newPayload through the proxy is answered VALID" post_payload

cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $repo/$RULES
scrape_configs:
  - job_name: sync-proxy
    static_configs:
      - targets: ["127.0.0.1:$P_METRICS"]
EOF
start prometheus "$P_PROM" prometheus --config.file="$work/prometheus.yml" \
  --storage.tsdb.path="$work/data" --web.listen-address="127.0.0.1:$P_PROM"

# api PATH: GET http://127.0.0.1:$P_PROM/api/v1/PATH (query string already encoded), JSON out.
# query EXPR: the instant query's result list (empty when the expression matches nothing);
# fails when Prometheus answers an error (a query that does not parse).
query() {
  python3 - "$P_PROM" "$1" <<'PY'
import json, sys, urllib.parse, urllib.request
url = "http://127.0.0.1:%s/api/v1/query?%s" % (sys.argv[1], urllib.parse.urlencode({"query": sys.argv[2]}))
try:
    answer = json.load(urllib.request.urlopen(url, timeout=5))
except urllib.error.HTTPError as e:
    answer = json.load(e)
if answer.get("status") != "success":
    sys.exit("%s: %s" % (sys.argv[2], answer.get("error", answer)))
print(json.dumps(answer["data"]["result"]))
PY
}

# wait_query NAME EXPR PYTHON-CONDITION: polls EXPR (up to 30 s) until the condition on its
# result list `r` holds; PASS with the last result, else FAIL with it.
wait_query() {
  local name=$1 expr=$2 cond=$3 result=""
  for _ in $(seq 150); do
    if result=$(query "$expr" 2>&1) &&
      python3 -c "import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if ($cond) else 1)" "$result"; then
      pass "$name ($result)"
      return 0
    fi
    sleep 0.2
  done
  fail "$name: last answer to $expr: $result"
}

wait_query "Prometheus has the proxy's sync_proxy_uptime_seconds" \
  'sync_proxy_uptime_seconds{job="sync-proxy"}' 'len(r) == 1 and float(r[0]["value"][1]) >= 0'
wait_query "the scrape target is up" 'up{job="sync-proxy"}' 'len(r) == 1 and r[0]["value"][1] == "1"'
wait_query "the sync view's head block is the payload sent" \
  "sync_proxy_el_head_block{el=\"127.0.0.1:$P_EL\"}" 'len(r) == 1 and r[0]["value"][1] == "7"'
wait_query "requests_total counted the newPayload" \
  'sync_proxy_requests_total{method="newPayload",outcome="forwarded"}' 'len(r) == 1 and r[0]["value"][1] == "1"'

rules_loaded() {
  python3 - "$P_PROM" "$RULES" <<'PY'
import json, re, sys, time, urllib.request
wanted = re.findall(r"^\s*- alert:\s*(\S+)", open(sys.argv[2]).read(), re.M)
deadline = time.time() + 30
while True:
    answer = json.load(urllib.request.urlopen("http://127.0.0.1:%s/api/v1/rules" % sys.argv[1], timeout=5))
    rules = [r for g in answer["data"]["groups"] for r in g["rules"]]
    health = {r["name"]: r.get("health") for r in rules}
    bad = {n: h for n, h in health.items() if h != "ok"}
    if sorted(health) == sorted(wanted) and not bad:
        print("%d rules loaded, every one evaluated ok" % len(rules))
        break
    if time.time() > deadline:
        errors = {r["name"]: r.get("lastError") for r in rules if r.get("health") != "ok"}
        sys.exit("rules %s, not ok: %s" % (sorted(health), errors or bad))
    time.sleep(0.2)
PY
}
check "Prometheus loaded and evaluates every rule" rules_loaded

dashboard_runs() {
  local expr n=0
  while IFS= read -r expr; do
    query "$expr" >/dev/null || return 1
    n=$((n + 1))
  done < <(dashboard_queries)
  echo "$n queries"
}
check "every dashboard query runs on Prometheus" dashboard_runs

echo "--- $((SECONDS - t_ready)) s after install ($((SECONDS - t0)) s in all)"
if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed; logs in $work (KEEP=1 keeps them)"
  for log in "$work"/*.log; do echo "--- $log"; tail -n 20 "$log"; done
  exit 1
fi
echo "all Prometheus checks passed"
