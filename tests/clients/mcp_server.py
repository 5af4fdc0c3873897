"""A real MCP server (the Python SDK's MCPServer), for brownout's tests.

Over stdio by default; `--http PORT` serves Streamable HTTP on 127.0.0.1:PORT at /mcp, with
responses as SSE streams, or as JSON bodies with `--json`. `--resumable` keeps every event
in memory so a client that lost a stream can resume it with Last-Event-ID (and asks clients
to retry after 100 ms). Writes its PID to the file named by BROWNOUT_TEST_PIDFILE, if set,
so a test can check that it was stopped.
"""
import itertools
import os
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventMessage, EventStore

if os.environ.get("BROWNOUT_TEST_PIDFILE"):
    with open(os.environ["BROWNOUT_TEST_PIDFILE"], "w") as f:
        f.write(str(os.getpid()))

server = MCPServer("brownout-test-server")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@server.tool()
async def note(text: str, ctx: Context) -> str:
    """Log the text to the client (on the call's own stream), then return it."""
    await ctx.info(text)
    return text


class MemoryEventStore(EventStore):
    """Every event of every stream, in order, for replay after a resume."""

    def __init__(self):
        self.events = []  # (event id, stream id, message)
        self.ids = itertools.count(1)

    async def store_event(self, stream_id, message):
        event_id = str(next(self.ids))
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id, send_callback):
        found = [i for i, e in enumerate(self.events) if e[0] == last_event_id]
        if not found:
            return None
        stream = self.events[found[0]][1]
        for event_id, stream_id, message in self.events[found[0] + 1 :]:
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


if __name__ == "__main__":
    if "--http" in sys.argv:
        port = int(sys.argv[sys.argv.index("--http") + 1])
        resumable = {}
        if "--resumable" in sys.argv:
            resumable = {"event_store": MemoryEventStore(), "retry_interval": 100}
        server.run(
            "streamable-http",
            host="127.0.0.1",
            port=port,
            json_response="--json" in sys.argv,
            **resumable,
        )
    else:
        server.run()
