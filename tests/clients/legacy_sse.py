"""The legacy HTTP+SSE transport (2024-11-05: GET /sse, then POSTs to the endpoint it names)
through brownout, with the Python SDK's sse_client.

Usage: legacy_sse.py URL SCENARIO
  calls:  print the tools and an echo as one JSON line
  error:  the echo call fails with the injected error (-32050 "injected")
  drop:   the echo call gets no answer (times out), and the next call works
Prints "ok: ..." lines; exits non-zero with the reason on the first check that fails.
"""
import asyncio
import json
import sys

import anyio
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError

url, scenario = sys.argv[1], sys.argv[2]
# Set once every check of the scenario has passed, before the session's teardown.
passed = False


def check(cond, what):
    if not cond:
        sys.exit("FAILED: " + what)
    print("ok:", what)


async def main():
    global passed
    async with sse_client(url) as (read, write):
        async with ClientSession(read, write, read_timeout_seconds=10) as s:
            await s.initialize()
            if scenario == "calls":
                tools = sorted(t.name for t in (await s.list_tools()).tools)
                echoed = [x.text for x in (await s.call_tool("echo", {"message": "héllo"})).content]
                print(json.dumps({"tools": tools, "echo": echoed}))
            elif scenario == "error":
                try:
                    await s.call_tool("echo", {"message": "x"})
                    check(False, "the call fails with the injected error")
                except MCPError as e:
                    check(e.error.code == -32050 and e.error.message == "injected",
                          "the injected error arrives on the event stream (%s)" % e.error.message)
            elif scenario == "drop":
                try:
                    await s.call_tool("echo", {"message": "lost"}, read_timeout_seconds=1)
                    check(False, "a call whose request was dropped is not answered")
                except MCPError as e:
                    check("Timed out" in e.error.message or "timed out" in e.error.message.lower(),
                          "the dropped call times out (%s)" % e.error.message)
                r = await s.call_tool("echo", {"message": "kept"})
                check([x.text for x in r.content] == ["Echo: kept"], "the next call is answered")
            else:
                sys.exit("unknown scenario " + scenario)
            passed = True


def only_broken_streams(e):
    if isinstance(e, BaseExceptionGroup):
        return all(only_broken_streams(x) for x in e.exceptions)
    return isinstance(e, anyio.BrokenResourceError)


try:
    asyncio.run(main())
except BaseException as e:
    # The SDK's sse_client fails its teardown when an event (a server notification) comes
    # in after the session's read stream closed: after every check, and only that.
    if not (passed and only_broken_streams(e)):
        raise
    print("teardown: an event arrived after the session closed")
print("all checks passed")
