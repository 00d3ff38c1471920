#!/usr/bin/env python3
"""Beacon-node traffic for scripts/soak.sh (Python standard library only).

Several kept-alive connections send a mix of Engine API calls (newPayload and
forkchoiceUpdated with rising timestamps, getPayload, exchangeCapabilities), eth_chainId,
malformed JSON, and one-request connections that open and close, at about --rate requests
per second in all, for --duration seconds. With --jwt-secret-hex every request carries a
fresh HS256 token, as a beacon node's would. Prints one summary line at the end: every
request sent and how many got an HTTP answer (any status); "unanswered" must be 0.
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import random
import threading
import time
from collections import Counter

ZERO = "0x" + "00" * 32


class Clock:
    """Ids and payload timestamps shared by every connection, always rising."""

    def __init__(self):
        self.lock = threading.Lock()
        self.n = 0

    def next(self):
        with self.lock:
            self.n += 1
            return self.n


def body_for(kind, n):
    ts = hex(1_700_000_000 + n)
    if kind == "newPayload":
        payload = {"parentHash": ZERO, "blockHash": "0x%064x" % n, "timestamp": ts,
                   "blockNumber": hex(n), "transactions": [], "withdrawals": []}
        call = {"jsonrpc": "2.0", "id": n, "method": "engine_newPayloadV3",
                "params": [payload, [], ZERO]}
    elif kind == "fcu":
        state = {"headBlockHash": "0x%064x" % n, "safeBlockHash": ZERO, "finalizedBlockHash": ZERO}
        attributes = {"timestamp": ts, "prevRandao": ZERO,
                      "suggestedFeeRecipient": "0x" + "00" * 20, "withdrawals": [],
                      "parentBeaconBlockRoot": ZERO} if n % 4 == 0 else None
        call = {"jsonrpc": "2.0", "id": n, "method": "engine_forkchoiceUpdatedV3",
                "params": [state, attributes]}
    elif kind == "getPayload":
        call = {"jsonrpc": "2.0", "id": n, "method": "engine_getPayloadV4", "params": ["0x01"]}
    elif kind == "capabilities":
        call = {"jsonrpc": "2.0", "id": n, "method": "engine_exchangeCapabilities",
                "params": [["engine_newPayloadV3", "engine_forkchoiceUpdatedV3"]]}
    elif kind == "bad":
        return b'{"jsonrpc":"2.0","id":%d,"method":' % n
    else:
        call = {"jsonrpc": "2.0", "id": n, "method": "eth_chainId", "params": []}
    return json.dumps(call).encode()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def token(secret):
    """An HS256 JWT with a current iat, the way beacon nodes sign Engine API calls."""
    head = b64url(b'{"alg":"HS256","typ":"JWT"}')
    claims = b64url(b'{"iat":%d}' % int(time.time()))
    signature = hmac.new(secret, head + b"." + claims, hashlib.sha256).digest()
    return (head + b"." + claims + b"." + b64url(signature)).decode()


KINDS = ["newPayload"] * 4 + ["fcu"] * 4 + ["getPayload", "capabilities", "chainId", "chainId", "bad"]


def worker(host, port, deadline, interval, clock, counts, lock, churn, secret):
    conn = None
    while time.monotonic() < deadline:
        started = time.monotonic()
        kind = random.choice(KINDS)
        n = clock.next()
        outcome = "conn_error"
        try:
            if conn is None or churn:
                conn = http.client.HTTPConnection(host, port, timeout=15)
            headers = {"Content-Type": "application/json"}
            if secret:
                headers["Authorization"] = "Bearer " + token(secret)
            conn.request("POST", "/", body=body_for(kind, n), headers=headers)
            response = conn.getresponse()
            data = response.read()
            outcome = str(response.status)
            if response.status == 200 and json.loads(data).get("id") != n:
                outcome = "wrong_id"
            if churn:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException, ValueError):
            if conn is not None:
                conn.close()
            conn = None
        with lock:
            counts[outcome] += 1
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", required=True, help="host:port")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--jwt-secret-hex", default="", help="sign every request with this secret")
    args = parser.parse_args()
    secret = bytes.fromhex(args.jwt_secret_hex.removeprefix("0x")) if args.jwt_secret_hex else None
    host, port = args.proxy.rsplit(":", 1)
    deadline = time.monotonic() + args.duration
    clock, counts, lock = Clock(), Counter(), threading.Lock()
    # One extra worker opens a new connection for every request.
    workers = args.conns + 1
    interval = workers / args.rate
    threads = [threading.Thread(target=worker,
                                args=(host, int(port), deadline, interval, clock, counts, lock, i == 0, secret))
               for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(counts.values())
    # conn_error: no HTTP answer (refused, reset, or nothing within the 15 s client timeout).
    unanswered = counts["conn_error"]
    print("bn: %d requests; %s; sent=%d answered=%d unanswered=%d" % (
        total, ", ".join("%s=%d" % kv for kv in sorted(counts.items())), total, total - unanswered, unanswered))


if __name__ == "__main__":
    main()
