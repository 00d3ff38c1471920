#!/usr/bin/env python3
"""Hostile clients for scripts/soak.sh (Python standard library only, Linux).

Runs, for --duration seconds, alongside the honest beacon-node traffic of soak_bn.py:
  non-readers   send a few requests and never read an answer (small receive buffer), so the
                proxy must close them after --write-timeout;
  pipeliners    write 64 KiB of pipelined `GET /metrics` and read nothing;
  token-less    POST a 16 MiB body without a token (the proxy has --jwt-secret): the 401 must
                come at the head, then a lingering close while the body keeps coming;
  floods        now and then open connections up to and past --max-connections and send
                nothing (closed at --idle-timeout; those past the cap wait to be accepted);
  slow-loris    send a request head one byte every 300 ms (closed at --read-timeout).
A client notices that the proxy closed a connection it never reads from through the socket's
TCP state (TCP_INFO), so it still reads nothing. Prints one line per kind at the end, with
what was observed, then a line `hostile: ... stuck=N`: connections the proxy had not closed
within their bound plus a generous slack (a lock-out).
"""

import argparse
import socket
import struct
import threading
import time
from collections import Counter

TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8
GET_METRICS = b"GET /metrics HTTP/1.1\r\nHost: soak\r\n\r\n"


def tcp_state(sock):
    try:
        return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[:1])[0]
    except OSError:
        return TCP_CLOSE


def closed_by_peer(sock):
    """The peer sent FIN or RST (read from the kernel's TCP state, without reading data)."""
    return tcp_state(sock) in (TCP_CLOSE, TCP_CLOSE_WAIT)


def reset_by_peer(sock):
    """The peer is gone for good (RST), not merely done writing (FIN)."""
    return tcp_state(sock) == TCP_CLOSE


def drained_to_eof(sock, within):
    """Reads everything for up to `within` seconds: whether the stream ended (FIN or RST)."""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(1 << 16):
                return True
    except socket.timeout:
        return False
    except OSError:
        return True
    return False


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = Counter()
        self.close_after = {}  # kind -> list of seconds from the last write to the close

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def took(self, kind, seconds):
        with self.lock:
            self.close_after.setdefault(kind, []).append(seconds)


def connect(addr, rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        # Set before connecting, so the window the proxy sees is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(addr)
    return sock


def wait_closed(sock, bound, stop):
    """Seconds until the proxy closed `sock` (polled every 50 ms), or None past `bound`."""
    started = time.monotonic()
    while time.monotonic() - started < bound and not stop.is_set():
        if closed_by_peer(sock):
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def non_reader(addr, args, stats, stop, pipelined):
    kind = "pipeliner" if pipelined else "non-reader"
    bound = args.write_timeout + args.slack
    while not stop.is_set():
        try:
            sock = connect(addr, rcvbuf=4096)
        except OSError:
            stats.add(kind + " connect_failed")
            time.sleep(0.5)
            continue
        try:
            if pipelined:
                data = GET_METRICS * (64 * 1024 // len(GET_METRICS))
            else:
                # More answers than the socket buffers hold, so the proxy's writes stall.
                data = b"GET /status HTTP/1.1\r\nHost: soak\r\n\r\n" * 400
            sock.settimeout(2)
            try:
                sock.sendall(data)
            except socket.timeout:
                stats.add(kind + " write_blocked")  # the proxy stopped reading: backpressure
            stats.add(kind + " opened")
            after = wait_closed(sock, bound, stop)
            if after is not None:
                stats.add(kind + " closed_by_proxy")  # an RST (it had unread requests)
                stats.took(kind, after)
            elif not stop.is_set():
                # A FIN queues behind the answers this client never took (its window is
                # zero), so only reading shows it. The proxy answers a connection it kept at
                # once once read, and --idle-timeout is longer than this drain.
                if drained_to_eof(sock, 1.0):
                    stats.add(kind + " closed_by_proxy_found_on_drain")
                else:
                    stats.add(kind + " stuck")
        except OSError:
            stats.add(kind + " reset")
        finally:
            sock.close()


def tokenless(addr, args, stats, stop):
    kind = "token-less"
    head = (b"POST / HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (16 << 20))
    chunk = b" " * 65536
    while not stop.is_set():
        try:
            sock = connect(addr)
        except OSError:
            stats.add(kind + " connect_failed")
            time.sleep(0.5)
            continue
        try:
            sock.sendall(head + chunk)
            sock.settimeout(args.slack)
            answer = sock.recv(4096)
            status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "none"
            stats.add("%s status_%s" % (kind, status))
            stats.add(kind + " opened")
            if closed_by_peer(sock):
                stats.add(kind + " fin_with_answer")
            # Keep sending the body: the proxy discards some, then closes for good (a
            # lingering close ends in an RST, or an error on the next write).
            started = time.monotonic()
            sock.setblocking(False)
            sent, gone = 0, False
            while time.monotonic() - started < args.slack + 5 and not stop.is_set():
                if reset_by_peer(sock):
                    gone = True
                    break
                try:
                    sent += sock.send(chunk)
                except BlockingIOError:
                    pass
                except OSError:
                    gone = True
                    break
                time.sleep(0.01)
            if gone:
                stats.add(kind + " closed_by_proxy")
                stats.took(kind, time.monotonic() - started)
            elif not stop.is_set():
                stats.add(kind + " stuck")
            stats.add(kind + " body_bytes_after_answer", sent)
        except socket.timeout:
            stats.add(kind + " no_answer")
        except OSError:
            stats.add(kind + " closed_by_proxy")
            stats.took(kind, 0.0)
        finally:
            sock.close()
        time.sleep(0.2)


def slow_loris(addr, args, stats, stop):
    kind = "slow-loris"
    head = b"POST / HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    bound = args.read_timeout + args.slack
    while not stop.is_set():
        try:
            sock = connect(addr, rcvbuf=4096)
        except OSError:
            stats.add(kind + " connect_failed")
            time.sleep(0.5)
            continue
        stats.add(kind + " opened")
        started = time.monotonic()
        closed = False
        try:
            for i in range(10**6):
                if stop.is_set() or time.monotonic() - started > bound:
                    break
                if closed_by_peer(sock):
                    closed = True
                    break
                sock.send(head[i % len(head):i % len(head) + 1])
                time.sleep(0.3)
        except OSError:
            closed = True
        if closed:
            stats.add(kind + " closed_by_proxy")
            stats.took(kind, time.monotonic() - started)
        elif not stop.is_set():
            stats.add(kind + " stuck")
        sock.close()


def flood(addr, args, stats, stop):
    kind = "flood"
    n = args.max_connections + args.flood_extra
    bound = args.idle_timeout + args.slack
    while not stop.wait(args.flood_every):
        socks = []
        for _ in range(n):
            try:
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(addr)  # the kernel completes it; the proxy may not accept yet
                socks.append(sock)
            except OSError:
                stats.add(kind + " connect_failed")
        stats.add(kind + " rounds")
        stats.add(kind + " opened", len(socks))
        # Each connection is closed at --idle-timeout once accepted; those past the cap are
        # accepted as others close, so every one is closed within a few idle timeouts.
        started = time.monotonic()
        open_socks = list(socks)
        while open_socks and time.monotonic() - started < 3 * bound and not stop.is_set():
            still = []
            for sock in open_socks:
                if closed_by_peer(sock):
                    stats.add(kind + " closed_by_proxy")
                    stats.took(kind, time.monotonic() - started)
                    sock.close()
                else:
                    still.append(sock)
            open_socks = still
            time.sleep(0.1)
        if not stop.is_set():
            stats.add(kind + " stuck", len(open_socks))
        for sock in open_socks:
            sock.close()


def summary(values):
    if not values:
        return "-"
    values = sorted(values)
    return "median %.1f s, max %.1f s" % (values[len(values) // 2], values[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", required=True, help="host:port")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--max-connections", type=int, required=True)
    parser.add_argument("--write-timeout-ms", type=float, required=True)
    parser.add_argument("--read-timeout-ms", type=float, required=True)
    parser.add_argument("--idle-timeout-ms", type=float, required=True)
    parser.add_argument("--flood-every", type=float, default=20.0, help="seconds between floods")
    parser.add_argument("--flood-extra", type=int, default=16, help="connections past the cap")
    parser.add_argument("--slack", type=float, default=5.0, help="seconds allowed past a bound")
    parser.add_argument("--each", type=int, default=2, help="clients of each continuous kind")
    args = parser.parse_args()
    args.write_timeout = args.write_timeout_ms / 1000
    args.read_timeout = args.read_timeout_ms / 1000
    args.idle_timeout = args.idle_timeout_ms / 1000
    host, port = args.proxy.rsplit(":", 1)
    addr = (host, int(port))
    stats, stop = Stats(), threading.Event()
    threads = []
    for _ in range(args.each):
        threads += [threading.Thread(target=non_reader, args=(addr, args, stats, stop, False)),
                    threading.Thread(target=non_reader, args=(addr, args, stats, stop, True)),
                    threading.Thread(target=tokenless, args=(addr, args, stats, stop)),
                    threading.Thread(target=slow_loris, args=(addr, args, stats, stop))]
    threads.append(threading.Thread(target=flood, args=(addr, args, stats, stop)))
    for t in threads:
        t.daemon = True
        t.start()
    time.sleep(args.duration)
    stop.set()
    for t in threads:
        t.join(timeout=args.slack + 10)
    counts = stats.counts
    stuck = 0
    for kind in ("non-reader", "pipeliner", "token-less", "slow-loris", "flood"):
        items = {k.split(" ", 1)[1]: v for k, v in counts.items() if k.startswith(kind + " ")}
        stuck += items.get("stuck", 0)
        shown = ", ".join("%s=%d" % kv for kv in sorted(items.items()))
        print("hostile %s: %s; closed %s" % (kind, shown or "nothing", summary(stats.close_after.get(kind))))
    print("hostile: %d connections opened, stuck=%d" % (
        sum(v for k, v in counts.items() if k.endswith(" opened")), stuck))


if __name__ == "__main__":
    main()
