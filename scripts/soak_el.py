#!/usr/bin/env python3
"""A small mock execution client for scripts/soak.sh (Python standard library only).

Answers JSON-RPC over HTTP/1.1 keep-alive the way a healthy EL would (VALID payload
statuses, the request's id echoed), and misbehaves at random when asked to:
  --slow P      delay a fraction P of answers by up to --delay-ms
  --drop P      close the connection without answering a fraction P of requests
"""

import argparse
import json
import random
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ZERO = "0x" + "00" * 32


def result_for(method, params):
    if method.startswith("engine_newPayload"):
        return {"status": "VALID", "latestValidHash": ZERO, "validationError": None}
    if method.startswith("engine_forkchoiceUpdated"):
        status = {"status": "VALID", "latestValidHash": ZERO, "validationError": None}
        return {"payloadStatus": status, "payloadId": None}
    if method.startswith("engine_getPayload"):
        return {"executionPayload": {"blockHash": ZERO, "transactions": []}, "blockValue": "0x0"}
    if method == "engine_exchangeCapabilities":
        return params[0] if params else []
    if method == "engine_getClientVersionV1":
        return [{"code": "PY", "name": "soak-el", "version": "1", "commit": "0x00000000"}]
    return "0x1"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out in two writes; with Nagle's algorithm the body would wait
    # for the proxy's delayed ACK (40 ms per answer).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.reply(200, b"")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        cfg = self.server.cfg
        roll = random.random()
        if roll < cfg.drop:
            self.close_connection = True
            return
        if roll < cfg.drop + cfg.slow:
            time.sleep(random.uniform(0, cfg.delay_ms / 1000))
        try:
            request = json.loads(body)
        except ValueError:
            error = {"code": -32700, "message": "Parse error"}
            self.reply(200, json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode())
            return
        if not isinstance(request, dict):
            self.reply(200, json.dumps({"jsonrpc": "2.0", "id": None, "result": None}).encode())
            return
        method = request.get("method") if isinstance(request.get("method"), str) else ""
        params = request.get("params") if isinstance(request.get("params"), list) else []
        answer = {"jsonrpc": "2.0", "id": request.get("id"), "result": result_for(method, params)}
        self.reply(200, json.dumps(answer).encode())

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--delay-ms", type=float, default=200.0)
    parser.add_argument("--drop", type=float, default=0.0)
    cfg = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", cfg.port), Handler)
    server.daemon_threads = True
    server.cfg = cfg
    server.serve_forever()


if __name__ == "__main__":
    main()
