"""Toggle faults on a running `brownout serve` with the toxiproxy-python client (PyPI),
as any Toxiproxy script would: a proxy in front of an MCP server, then a slow network,
a partition, intermittent loss, and back to normal.

    pip install toxiproxy-python
    brownout serve &                      # the API on 127.0.0.1:8474
    python flaky_network.py 127.0.0.1:3000 --listen 127.0.0.1:4000 --hold 5

Point the agent at the listen address; each phase lasts --hold seconds. The script cleans
up after itself (the proxy is deleted) even when interrupted.
"""
import argparse
import time

from toxiproxy import Toxiproxy

parser = argparse.ArgumentParser()
parser.add_argument("upstream", help="the MCP server, host:port")
parser.add_argument("--listen", default="127.0.0.1:0", help="where agents connect")
parser.add_argument("--api", default="127.0.0.1:8474", help="brownout's API")
parser.add_argument("--name", default="mcp")
parser.add_argument("--hold", type=float, default=5.0, help="seconds per phase")
args = parser.parse_args()

host, port = args.api.rsplit(":", 1)
server = Toxiproxy()
server.update_api_consumer(host, int(port))

proxy = server.create(name=args.name, listen=args.listen, upstream=args.upstream)
print("proxy", proxy.name, "listening on", proxy.listen, flush=True)


def phase(what, toxic_type, stream, attributes):
    proxy.add_toxic(name=what, type=toxic_type, stream=stream, attributes=attributes)
    print("on:", what, flush=True)
    time.sleep(args.hold)
    proxy.destroy_toxic(what)
    print("off:", what, flush=True)


try:
    phase("slow", "latency", "downstream", {"latency": 300, "jitter": 100})
    # brownout's own faults go through the same client unchanged.
    phase("cut", "partition", "both", {"mode": "blackhole"})
    phase("flaky", "loss", "upstream", {"probability": 0.3})
finally:
    proxy.destroy()
    print("done", flush=True)
