#!/usr/bin/env python3
"""A recording mock execution client for scripts/nginx-check.sh (Python standard library only).

Answers JSON-RPC over HTTP/1.1 (and 1.0) the way a healthy EL would: VALID payload statuses
whose latestValidHash names this EL (sha256 of --name), the request's id echoed. Every request
is appended to --record as one JSON line:
  {"el", "method", "path", "version", "headers": [[name, value], ...],
   "body": base64, "status", "answer": base64}
so a test can compare bodies byte for byte and see the headers and the exact answer sent.

  --delay-ms D       wait D ms before every answer (a slow EL)
  --jwt-secret FILE  require `Authorization: Bearer <HS256 JWT>` signed with the 32-byte hex
                     secret in FILE and an iat within 60 s of now; otherwise answer 401
"""

import argparse
import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def read_secret(path):
    text = open(path).read().strip()
    if text.startswith(("0x", "0X")):
        text = text[2:]
    secret = bytes.fromhex(text)
    if len(secret) != 32:
        raise SystemExit("%s: a JWT secret is 32 bytes" % path)
    return secret


def check_jwt(secret, authorization):
    """None if the header carries a valid token, else why not."""
    if not authorization or not authorization.startswith("Bearer "):
        return "missing bearer token"
    parts = authorization[len("Bearer "):].strip().split(".")
    if len(parts) != 3:
        return "not a JWS compact token"
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except ValueError:
        return "bad base64url or JSON"
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        return "alg is not HS256"
    expected = hmac.new(secret, (parts[0] + "." + parts[1]).encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        return "bad signature"
    iat = claims.get("iat") if isinstance(claims, dict) else None
    if not isinstance(iat, int) or abs(time.time() - iat) > 60:
        return "iat missing or not within 60 s"
    return None


def result_for(method, params, own_hash):
    status = {"status": "VALID", "latestValidHash": own_hash, "validationError": None}
    if method.startswith("engine_newPayload"):
        return status
    if method.startswith("engine_forkchoiceUpdated"):
        return {"payloadStatus": status, "payloadId": None}
    if method == "engine_exchangeCapabilities":
        return params[0] if params else []
    return "0x1"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.answer(200, b"", "text/plain", b"")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        cfg = self.server.cfg
        if cfg.delay_ms:
            time.sleep(cfg.delay_ms / 1000)
        if self.server.secret is not None:
            why = check_jwt(self.server.secret, self.headers.get("Authorization"))
            if why is not None:
                error = {"code": -32000, "message": "unauthorized: " + why}
                out = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
                self.answer(401, body, "application/json", out)
                return
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            error = {"code": -32700, "message": "Parse error"}
            out = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
            self.answer(200, body, "application/json", out)
            return
        method = request.get("method") if isinstance(request.get("method"), str) else ""
        params = request.get("params") if isinstance(request.get("params"), list) else []
        result = result_for(method, params, self.server.own_hash)
        out = json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": result}).encode()
        self.answer(200, body, "application/json", out)

    def answer(self, status, body, content_type, out):
        """Records the request and answers it in one write (no Nagle/delayed-ACK stall)."""
        entry = {
            "el": self.server.cfg.name,
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": base64.b64encode(body).decode(),
            "status": status,
            "answer": base64.b64encode(out).decode(),
        }
        with self.server.lock:
            with open(self.server.cfg.record, "a") as f:
                f.write(json.dumps(entry) + "\n")
        reason = self.responses.get(status, ("",))[0]
        head = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            status, reason, content_type, len(out))
        if self.close_connection:
            head += "Connection: close\r\n"
        self.wfile.write(head.encode() + b"\r\n" + out)
        self.wfile.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jwt-secret")
    cfg = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", cfg.port), Handler)
    server.daemon_threads = True
    server.cfg = cfg
    server.lock = threading.Lock()
    server.secret = read_secret(cfg.jwt_secret) if cfg.jwt_secret else None
    server.own_hash = "0x" + hashlib.sha256(cfg.name.encode()).hexdigest()
    open(cfg.record, "a").close()
    server.serve_forever()


if __name__ == "__main__":
    main()
