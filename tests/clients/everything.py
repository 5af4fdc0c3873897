"""Drive @modelcontextprotocol/server-everything (npm) through brownout with the Python SDK.

Usage: everything.py stdio BROWNOUT NODE_ENTRY SCENARIO
       everything.py http PROXY_URL DIRECT_URL SCENARIO
In stdio mode the server is started as `node --require loopback.cjs NODE_ENTRY stdio`,
directly or behind `brownout stdio`. Prints "ok: ..." lines, exits non-zero with the reason on
the first check that fails.
"""
import asyncio
import json
import os
import sys

from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

mode = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))


def check(cond, what):
    if not cond:
        sys.exit("FAILED: " + what)
    print("ok:", what)


if mode == "stdio":
    brownout, entry, scenario = sys.argv[2], sys.argv[3], sys.argv[4]
    node = ["node", "--require", os.path.join(here, "loopback.cjs"), entry, "stdio"]

    def direct():
        return StdioServerParameters(command=node[0], args=node[1:])

    def proxied(*toxics):
        args = ["stdio", "--seed", "1"]
        for t in toxics:
            args += ["--toxic", json.dumps(t)]
        return StdioServerParameters(command=brownout, args=args + ["--"] + node)
else:
    proxy_url, direct_url, scenario = sys.argv[2], sys.argv[3], sys.argv[4]

    def direct():
        return direct_url

    def proxied(*toxics):
        return proxy_url  # the test set the proxy's toxics


async def calls(server):
    async with Client(server, read_timeout_seconds=20) as c:
        tools = sorted(t.name for t in (await c.list_tools()).tools)
        echoed = [x.text for x in (await c.call_tool("echo", {"message": "héllo"})).content]
        summed = [x.text for x in (await c.call_tool("get-sum", {"a": 2, "b": 40})).content]
        return tools, echoed, summed


async def transparent():
    d = await calls(direct())
    p = await calls(proxied())
    check("echo" in d[0] and "get-sum" in d[0], "the server offers echo and get-sum")
    check(d == p, "same tools and results through brownout as directly: %r" % (p[1:],))


ERROR = {"type": "mcp", "stream": "upstream",
         "attributes": {"tool": "get-sum", "action": "error", "code": -32050, "message": "injected by test"}}


async def error_reply():
    async with Client(proxied(ERROR), read_timeout_seconds=20) as c:
        try:
            await c.call_tool("get-sum", {"a": 1, "b": 1})
            check(False, "the injected error reaches the client")
        except MCPError as e:
            check(e.error.code == -32050, "the injected error arrives as that error (%s)" % e.error.message)
        r = await c.call_tool("echo", {"message": "still fine"})
        check([x.text for x in r.content] == ["Echo: still fine"], "other tools are untouched")


asyncio.run({"transparent": transparent, "error_reply": error_reply}[scenario]())
print("all checks passed")
