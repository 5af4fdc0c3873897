"""Drive a real MCP server through `brownout stdio` with the Python SDK's client.

Usage: mcp_stdio.py BROWNOUT SCENARIO
Each scenario starts `brownout stdio [toxics] -- python mcp_server.py` as the client's
server command, checks what the client sees, prints "ok: ..." lines, and exits non-zero with
the reason on the first check that fails.
"""
import asyncio
import json
import os
import sys
import time

from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

brownout, scenario = sys.argv[1], sys.argv[2]
here = os.path.dirname(os.path.abspath(__file__))
server = [sys.executable, os.path.join(here, "mcp_server.py")]


def check(cond, what):
    if not cond:
        sys.exit("FAILED: " + what)
    print("ok:", what)


def through_brownout(*toxics):
    args = ["stdio", "--seed", "1"]
    if os.environ.get("BROWNOUT_TEST_EVENTS"):
        args += ["--events", os.environ["BROWNOUT_TEST_EVENTS"]]
    for t in toxics:
        args += ["--toxic", json.dumps(t)]
    return StdioServerParameters(command=brownout, args=args + ["--"] + server)


def mcp(stream, action, **attributes):
    attributes["action"] = action
    return {"type": "mcp", "stream": stream, "attributes": attributes}


async def calls(params, timeout=5):
    async with Client(params, read_timeout_seconds=timeout) as c:
        tools = sorted(t.name for t in (await c.list_tools()).tools)
        added = (await c.call_tool("add", {"a": 2, "b": 3})).structured_content
        echoed = (await c.call_tool("echo", {"text": "héllo"})).structured_content
        return tools, added, echoed


async def transparent():
    direct = await calls(StdioServerParameters(command=server[0], args=server[1:]))
    proxied = await calls(through_brownout())
    check(direct == proxied, "same results through brownout as directly: %r" % (proxied,))


async def error_reply():
    params = through_brownout(mcp("upstream", "error", method="tools/call", tool="add", code=-32050, message="injected by test"))
    async with Client(params, read_timeout_seconds=5) as c:
        try:
            await c.call_tool("add", {"a": 1, "b": 1})
            check(False, "the injected error reaches the client")
        except MCPError as e:
            check(e.error.code == -32050 and e.error.message == "injected by test",
                  "the injected error arrives as that error: %s %s" % (e.error.code, e.error.message))
        r = await c.call_tool("echo", {"text": "still fine"})
        check(r.structured_content == {"result": "still fine"}, "other tools are untouched")


async def dropped_response():
    params = through_brownout(mcp("downstream", "drop", method="tools/call", tool="echo", nth=1))
    async with Client(params, read_timeout_seconds=1) as c:
        start = time.monotonic()
        try:
            await c.call_tool("echo", {"text": "lost"})
            check(False, "a dropped response times out")
        except MCPError as e:
            took = time.monotonic() - start
            check(took >= 0.9, "a dropped response times out on the client (%.2f s, %s)" % (took, e.error.message))
        r = await c.call_tool("echo", {"text": "second"})
        check(r.structured_content == {"result": "second"}, "only the first response was dropped")


async def delayed_response():
    params = through_brownout(mcp("downstream", "delay", method="tools/call", tool="add", delay=600))
    async with Client(params, read_timeout_seconds=5) as c:
        start = time.monotonic()
        r = await c.call_tool("add", {"a": 20, "b": 22})
        took = time.monotonic() - start
        check(r.structured_content == {"result": 42}, "a delayed response is intact")
        check(0.6 <= took < 3, "it arrives after the delay (%.2f s)" % took)


async def duplicated_response():
    params = through_brownout(mcp("downstream", "duplicate", method="tools/call"))
    async with Client(params, read_timeout_seconds=5) as c:
        for i in range(3):
            r = await c.call_tool("add", {"a": i, "b": 1})
            check(r.structured_content == {"result": i + 1}, "call %d answered once and right despite duplicates" % i)


async def killed_server():
    params = through_brownout(mcp("upstream", "kill", method="tools/call", tool="add"))
    async with Client(params, read_timeout_seconds=5) as c:
        start = time.monotonic()
        try:
            await c.call_tool("add", {"a": 1, "b": 2})
            check(False, "a call that kills the server fails")
        except Exception as e:  # the SDK reports a closed connection in its own way
            took = time.monotonic() - start
            check(took < 4.5, "the client sees the server die instead of hanging (%.2f s: %s)" % (took, type(e).__name__))


async def malformed_response():
    params = through_brownout(mcp("downstream", "malformed", method="tools/call", tool="add"))
    async with Client(params, read_timeout_seconds=2) as c:
        try:
            await c.call_tool("add", {"a": 1, "b": 2})
            check(False, "a malformed response does not pass as a result")
        except Exception as e:
            check(True, "a malformed response fails the call (%s)" % type(e).__name__)


scenarios = {
    "transparent": transparent,
    "error_reply": error_reply,
    "dropped_response": dropped_response,
    "delayed_response": delayed_response,
    "duplicated_response": duplicated_response,
    "killed_server": killed_server,
    "malformed_response": malformed_response,
}
asyncio.run(scenarios[scenario]())
print("all checks passed")
