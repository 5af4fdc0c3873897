"""Drive a real MCP server through a brownout HTTP-mode proxy with the Python SDK's client.

Usage: mcp_http.py PROXY_URL DIRECT_URL SCENARIO
The test sets up the proxy's toxics for the scenario first. Prints "ok: ..." lines and
exits non-zero with the reason on the first check that fails.
"""
import asyncio
import sys
import time

from mcp import Client
from mcp.shared.exceptions import MCPError

proxy, direct, scenario = sys.argv[1], sys.argv[2], sys.argv[3]


def check(cond, what):
    if not cond:
        sys.exit("FAILED: " + what)
    print("ok:", what)


async def calls(url):
    async with Client(url, read_timeout_seconds=5) as c:
        tools = sorted(t.name for t in (await c.list_tools()).tools)
        added = (await c.call_tool("add", {"a": 2, "b": 3})).structured_content
        echoed = (await c.call_tool("echo", {"text": "héllo"})).structured_content
        return tools, added, echoed


async def transparent():
    d = await calls(direct)
    p = await calls(proxy)
    check(d == p, "same results through brownout as directly: %r" % (p,))


async def error_reply():
    async with Client(proxy, read_timeout_seconds=5) as c:
        try:
            await c.call_tool("add", {"a": 1, "b": 1})
            check(False, "the injected error reaches the client")
        except MCPError as e:
            check(e.error.code == -32050 and e.error.message == "injected by test",
                  "the injected error arrives as that error: %s %s" % (e.error.code, e.error.message))
        r = await c.call_tool("echo", {"text": "still fine"})
        check(r.structured_content == {"result": "still fine"}, "other tools are untouched")


async def dropped_response():
    async with Client(proxy, read_timeout_seconds=1) as c:
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
    async with Client(proxy, read_timeout_seconds=5) as c:
        start = time.monotonic()
        r = await c.call_tool("add", {"a": 20, "b": 22})
        took = time.monotonic() - start
        check(r.structured_content == {"result": 42}, "a delayed response is intact")
        check(0.6 <= took < 3, "it arrives after the delay (%.2f s)" % took)


async def duplicated_response():
    async with Client(proxy, read_timeout_seconds=5) as c:
        for i in range(3):
            r = await c.call_tool("add", {"a": i, "b": 1})
            check(r.structured_content == {"result": i + 1}, "call %d answered right despite duplicates" % i)


async def malformed_response():
    async with Client(proxy, read_timeout_seconds=2) as c:
        try:
            await c.call_tool("add", {"a": 1, "b": 2})
            check(False, "a malformed response does not pass as a result")
        except Exception as e:
            check(True, "a malformed response fails the call (%s)" % type(e).__name__)


async def ended_connection():
    # The SDK may report a cut connection from call_tool or from its transport's task group
    # when the client closes; either way the client must fail promptly, not hang.
    start = time.monotonic()
    try:
        async with Client(proxy, read_timeout_seconds=5) as c:
            await c.call_tool("add", {"a": 1, "b": 2})
        check(False, "a call whose connection is cut fails")
    except BaseException as e:  # an ExceptionGroup from the SDK's task group
        took = time.monotonic() - start
        check(took < 4.5, "the client sees the connection end instead of hanging (%.2f s: %s)" % (took, type(e).__name__))


async def session_expired():
    # The 2025-11-25 session protocol: a 404 means the session is gone.
    async with Client(proxy, read_timeout_seconds=5, mode="legacy") as c:
        start = time.monotonic()
        try:
            await c.call_tool("add", {"a": 1, "b": 1})
            check(False, "a call answered 404 fails")
        except MCPError as e:
            took = time.monotonic() - start
            check(took < 4.5, "a 404 fails the call at once (%.2f s: %s)" % (took, e.error.message))
        r = await c.call_tool("add", {"a": 2, "b": 2})
        check(r.structured_content == {"result": 4}, "the client carries on after the expired session")


scenarios = {
    "transparent": transparent,
    "error_reply": error_reply,
    "dropped_response": dropped_response,
    "delayed_response": delayed_response,
    "duplicated_response": duplicated_response,
    "malformed_response": malformed_response,
    "ended_connection": ended_connection,
    "session_expired": session_expired,
}
asyncio.run(scenarios[scenario]())
print("all checks passed")
