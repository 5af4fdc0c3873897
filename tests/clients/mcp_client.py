"""Drive a real MCP server through brownout with the Python SDK's client.

Usage: mcp_client.py stdio BROWNOUT SCENARIO
       mcp_client.py http PROXY_URL DIRECT_URL SCENARIO

stdio: the client starts `brownout stdio [toxics] -- python mcp_server.py` as its server;
the toxics are the JSON list in BROWNOUT_TEST_TOXICS, and BROWNOUT_TEST_EVENTS, if set,
names an --events file. http: the test has put the toxics on the proxy already. Prints
"ok: ..." lines; exits non-zero with the reason on the first check that fails.
"""
import asyncio
import json
import os
import sys
import time

import httpx2
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, PARSE_ERROR, REQUEST_TIMEOUT

mode = sys.argv[1]
scenario = sys.argv[-1]
here = os.path.dirname(os.path.abspath(__file__))
server = [sys.executable, os.path.join(here, "mcp_server.py")]


def check(cond, what):
    if not cond:
        sys.exit("FAILED: " + what)
    print("ok:", what)


if mode == "stdio":
    brownout = sys.argv[2]

    def proxied():
        args = ["stdio", "--seed", "1"]
        if os.environ.get("BROWNOUT_TEST_EVENTS"):
            args += ["--events", os.environ["BROWNOUT_TEST_EVENTS"]]
        for t in json.loads(os.environ.get("BROWNOUT_TEST_TOXICS", "[]")):
            args += ["--toxic", json.dumps(t)]
        return StdioServerParameters(command=brownout, args=args + ["--"] + server)

    def direct():
        return StdioServerParameters(command=server[0], args=server[1:])
else:
    proxy_url, direct_url = sys.argv[2], sys.argv[3]

    def proxied():
        return proxy_url

    def direct():
        return direct_url


async def calls(target):
    async with Client(target, read_timeout_seconds=5) as c:
        tools = sorted(t.name for t in (await c.list_tools()).tools)
        added = (await c.call_tool("add", {"a": 2, "b": 3})).structured_content
        echoed = (await c.call_tool("echo", {"text": "héllo"})).structured_content
        return tools, added, echoed


async def transparent():
    d = await calls(direct())
    p = await calls(proxied())
    check(d == p, "same results through brownout as directly: %r" % (p,))


async def error_reply():
    async with Client(proxied(), read_timeout_seconds=5) as c:
        try:
            await c.call_tool("add", {"a": 1, "b": 1})
            check(False, "the injected error reaches the client")
        except MCPError as e:
            check(e.error.code == -32050 and e.error.message == "injected by test",
                  "the injected error arrives as that error: %s %s" % (e.error.code, e.error.message))
        r = await c.call_tool("echo", {"text": "still fine"})
        check(r.structured_content == {"result": "still fine"}, "other tools are untouched")


async def dropped_response():
    async with Client(proxied(), read_timeout_seconds=1) as c:
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
    async with Client(proxied(), read_timeout_seconds=5) as c:
        start = time.monotonic()
        r = await c.call_tool("add", {"a": 20, "b": 22})
        took = time.monotonic() - start
        check(r.structured_content == {"result": 42}, "a delayed response is intact")
        check(0.6 <= took < 3, "it arrives after the delay (%.2f s)" % took)


async def duplicated_response():
    async with Client(proxied(), read_timeout_seconds=5) as c:
        for i in range(3):
            r = await c.call_tool("add", {"a": i, "b": 1})
            check(r.structured_content == {"result": i + 1}, "call %d answered right despite duplicates" % i)


def found_in(e, wanted):
    """The first exception inside `e` (the SDK may wrap it in exception groups from its task
    groups) for which `wanted` holds, or None."""
    if wanted(e):
        return e
    for inner in getattr(e, "exceptions", ()):
        found = found_in(inner, wanted)
        if found is not None:
            return found
    return None


async def malformed_response():
    # Over stdio the SDK cannot tie an unparsable line to its call, so it drops it and the
    # call times out. Over HTTP the body belongs to its request: the call fails at once
    # with a parse error. Either way the session stays usable.
    async with Client(proxied(), read_timeout_seconds=2) as c:
        start = time.monotonic()
        failed = None
        try:
            await c.call_tool("add", {"a": 1, "b": 2})
        except MCPError as e:
            failed = e
        took = time.monotonic() - start
        check(failed is not None, "a malformed response does not pass as a result")
        seen = "%.2f s: %s %s" % (took, failed.error.code, failed.error.message[:60])
        if mode == "stdio":
            check(failed.error.code == REQUEST_TIMEOUT and took >= 1.9,
                  "the call times out waiting for an answer it can parse (%s)" % seen)
        else:
            check(failed.error.code == PARSE_ERROR and took < 1.5,
                  "the call fails at once with a parse error (%s)" % seen)
        r = await c.call_tool("echo", {"text": "after"})
        check(r.structured_content == {"result": "after"}, "the session still works")


def caused_by(e, kind):
    """Whether `e`, or what it was raised from, is a `kind`."""
    while e is not None:
        if isinstance(e, kind):
            return True
        e = e.__cause__ or e.__context__
    return False


def connection_ended(e):
    """Whether `e` says the connection ended: the SDK's own error over stdio (the server is
    gone); over HTTP the client's, for a connection closed before the answer was complete
    (`close`) or reset (`kill`, as on TCP)."""
    if mode == "stdio":
        return isinstance(e, MCPError) and e.error.code == CONNECTION_CLOSED
    return isinstance(e, httpx2.RemoteProtocolError) or (
        isinstance(e, httpx2.ReadError) and caused_by(e, ConnectionResetError))


async def ended_connection():
    # The SDK may report a dead server or a cut connection from call_tool or from its
    # transport's task group when the client closes; either way it must fail promptly, as
    # an ended connection rather than a timeout.
    start = time.monotonic()
    failed = None
    try:
        async with Client(proxied(), read_timeout_seconds=5) as c:
            await c.call_tool("add", {"a": 1, "b": 2})
    except Exception as e:  # an ExceptionGroup from the SDK's task group, or MCPError
        failed = e
    took = time.monotonic() - start
    check(failed is not None, "a call whose server or connection goes away fails")
    check(found_in(failed, connection_ended) is not None,
          "it fails as an ended connection: %r" % (failed,))
    check(took < 4.5, "the client sees the end instead of hanging (%.2f s)" % took)


async def session_expired():
    # The 2025-11-25 session protocol: a 404 means the session is gone.
    async with Client(proxied(), read_timeout_seconds=5, mode="legacy") as c:
        start = time.monotonic()
        try:
            await c.call_tool("add", {"a": 1, "b": 1})
            check(False, "a call answered 404 fails")
        except MCPError as e:
            took = time.monotonic() - start
            check(took < 4.5, "a 404 fails the call at once (%.2f s: %s)" % (took, e.error.message))
        r = await c.call_tool("add", {"a": 2, "b": 2})
        check(r.structured_content == {"result": 4}, "the client carries on after the expired session")


scenarios = {f.__name__: f for f in [
    transparent, error_reply, dropped_response, delayed_response, duplicated_response,
    malformed_response, ended_connection, session_expired,
]}
asyncio.run(scenarios[scenario]())
print("all checks passed")
