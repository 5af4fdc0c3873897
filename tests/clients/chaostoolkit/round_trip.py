"""A Chaos Toolkit probe: one round trip through a proxy to an echo server.

Usage: round_trip.py HOST:PORT (--max S | --min S | --refused)
Exits 0 when the round trip came back within --max seconds, took at least --min seconds,
or (--refused) the connection was refused; 1 otherwise, saying what happened.
"""
import socket
import sys
import time

addr, check, limit = sys.argv[1], sys.argv[2], (sys.argv[3:] or [None])[0]
host, port = addr.rsplit(":", 1)
start = time.monotonic()
try:
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"ping")
        got = b""
        while len(got) < 4:
            chunk = s.recv(16)
            if not chunk:
                break
            got += chunk
except ConnectionRefusedError:
    print("refused")
    sys.exit(0 if check == "--refused" else 1)
took = time.monotonic() - start
print("got %r in %.3f s" % (got, took))
if got != b"ping" or check == "--refused":
    sys.exit(1)
if check == "--max":
    sys.exit(0 if took <= float(limit) else 1)
sys.exit(0 if took >= float(limit) else 1)
