"""Drive brownout with the toxiproxy-python client from PyPI, unchanged.

Usage: toxiproxy_python.py API_HOST API_PORT ECHO_ADDR
Exits non-zero, with the reason, on the first check that fails.
"""
import socket
import sys
import time

from toxiproxy import Toxiproxy
from toxiproxy.exceptions import NotFound, ProxyExists

api_host, api_port, echo = sys.argv[1], int(sys.argv[2]), sys.argv[3]

server = Toxiproxy()
server.update_api_consumer(api_host, api_port)


def check(cond, what):
    if not cond:
        sys.exit("FAILED: " + what)
    print("ok:", what)


def round_trip(listen, payload=b"ping"):
    host, port = listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        start = time.monotonic()
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return got, time.monotonic() - start


check(server.running(), "server is running")
check(server.version() is not None, "version answers")

proxy = server.create(upstream=echo, name="py_echo")
check(proxy.name == "py_echo" and proxy.enabled, "proxy created and enabled")
check(not proxy.listen.endswith(":0"), "listen shows the real port: " + proxy.listen)
check("py_echo" in server.proxies(), "proxy listed")
try:
    server.create(upstream=echo, name="py_echo")
    check(False, "duplicate create raises ProxyExists")
except ProxyExists:
    check(True, "duplicate create raises ProxyExists")

got, rtt = round_trip(proxy.listen)
check(got == b"ping", "data passes without toxics")
check(rtt < 0.2, "no added delay without toxics (%.3f s)" % rtt)

proxy.add_toxic(type="latency", attributes={"latency": 150})
toxics = proxy.toxics()
check(list(toxics) == ["latency_downstream"], "toxic listed under its default name")
check(toxics["latency_downstream"].attributes["latency"] == 150, "toxic attributes read back")
got, rtt = round_trip(proxy.listen)
check(got == b"ping" and rtt >= 0.15, "latency applied (%.3f s)" % rtt)

proxy.add_toxic(type="limit_data", name="cut", attributes={"bytes": 3})
got, _ = round_trip(proxy.listen, b"abcdef")
check(got == b"abc", "limit_data cut the stream after 3 bytes (got %r)" % got)
check(proxy.destroy_toxic("cut"), "toxic removed")

proxy.destroy_toxic("latency_downstream")
got, rtt = round_trip(proxy.listen)
check(got == b"ping" and rtt < 0.15, "latency gone after removal (%.3f s)" % rtt)

with proxy.down():
    try:
        round_trip(proxy.listen)
        check(False, "disabled proxy refuses connections")
    except ConnectionRefusedError:
        check(True, "disabled proxy refuses connections")
got, _ = round_trip(proxy.listen)
check(got == b"ping", "re-enabled proxy passes data")

proxy.add_toxic(type="timeout", attributes={"timeout": 0})
check(server.reset(), "reset")
check(proxy.toxics() == {}, "reset removed toxics")

populated = server.populate([{"name": "py_pop", "upstream": echo, "listen": "127.0.0.1:0"}])
check(len(populated) == 1, "populate created a proxy")
check(server.get_proxy("py_pop") is not None, "populated proxy exists")

server.destroy_all()
check(server.proxies() == {}, "all proxies destroyed")
try:
    proxy.destroy()
    check(False, "deleting a deleted proxy raises NotFound")
except NotFound:
    check(True, "deleting a deleted proxy raises NotFound")
print("all checks passed")
